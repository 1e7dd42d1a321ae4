"""Two teachers routed per row on tiny models: the per-teacher metrics show that each row went to its own teacher.

    OMP_NUM_THREADS=1 python bench/multi_teacher.py

The addition dataset's rows alternate `teacher_id` between "twin" (an exact copy of the student: the divergence to it
is 0 before training) and "other" (another tiny model). One GKD step at learning rate 0 (the student does not move)
logs `teacher/<id>/divergence` and `teacher/<id>/tokens`: the twin's rows must show 0, the other's a positive
divergence, and the tokens must add up to the batch's.
"""

import os


os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from trl_opd import DistillationConfig, GKDTrainer  # noqa: E402
from trl_opd.tiny import addition_dataset, char_tokenizer, tiny_llama  # noqa: E402


def main():
    torch.set_num_threads(1)
    tok = char_tokenizer()
    data = addition_dataset().map(lambda _, i: {"teacher_id": "twin" if i % 2 else "other"}, with_indices=True)
    args = DistillationConfig(
        beta=0.5,
        output_dir="/tmp/bench-multi-teacher",
        max_steps=3,
        per_device_train_batch_size=8,
        max_completion_length=6,
        learning_rate=0.0,
        lmbda=0.5,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    trainer = GKDTrainer(
        model=tiny_llama(len(tok), tokenizer=tok, seed=1),
        processing_class=tok,
        args=args,
        train_dataset=data,
        teacher_model={
            "twin": tiny_llama(len(tok), tokenizer=tok, seed=1),
            "other": tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=48),
        },
    )
    trainer.train()
    print("| step | on-policy | twin: tokens | twin: divergence | other: tokens | other: divergence | trained |")
    print("|---|---|---|---|---|---|---|")
    for log in (x for x in trainer.state.log_history if "loss" in x):
        print(
            f"| {log['step']} | {log['on_policy_fraction']:.2f} | {log['teacher/twin/tokens']:.0f} | "
            f"{log['teacher/twin/divergence']:.1e} | {log['teacher/other/tokens']:.0f} | "
            f"{log['teacher/other/divergence']:.4f} | {log['num_tokens_trained']:.0f} |"
        )


if __name__ == "__main__":
    main()
