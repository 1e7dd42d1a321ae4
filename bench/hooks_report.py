"""What the stability hooks do on a tiny task: TIP kept fraction vs final divergence, and flawed-prefix rejection
counts.

    OMP_NUM_THREADS=1 python bench/hooks_report.py [--seeds 0 1 2] [--steps 40]

Task: character-level addition ("3+4=" -> "7"). A 2-layer teacher is trained for 150 steps; a smaller student is
distilled with GKD (λ = 0.5, JSD β = 0.5) for the same number of steps at each TIP kept fraction (top-fraction mode,
teacher-confidence scores, weights normalised to mean 1). The divergence is the eval loss: JSD to the teacher on the
student's own samples over 32 prompts. Rejection: a student whose head always emits "7" (so its rollouts loop), with
the default FlawedPrefixFilter; and the same filter on the normal student as a false-positive check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from transformers.trainer_callback import PrinterCallback, ProgressCallback  # noqa: E402


torch.set_num_threads(1)

from trl_opd import DistillationConfig, GKDTrainer  # noqa: E402
from trl_opd.hooks import FlawedPrefixFilter, TokenImportance  # noqa: E402
from trl_opd.tiny import addition_dataset, char_tokenizer, tiny_llama, train_causal_lm  # noqa: E402


def config(out, steps, seed):
    return DistillationConfig(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        max_completion_length=6,
        learning_rate=3e-3,
        lmbda=0.5,
        divergence="jsd",
        beta=0.5,
        seed=seed,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )


def teacher_for(tok, dataset):
    teacher = tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=64)
    train_causal_lm(teacher, tok, [r["prompt"] + r["completion"] for r in dataset], steps=150)
    return teacher


def quiet(trainer):
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


def tip_run(tok, dataset, teacher, keep_fraction, steps, seed):
    hook = None if keep_fraction >= 1.0 else TokenImportance(mode="top_fraction", keep_fraction=keep_fraction)
    with tempfile.TemporaryDirectory() as out:
        trainer = GKDTrainer(
            model=tiny_llama(len(tok), tokenizer=tok, seed=100 + seed),
            teacher_model=teacher,
            args=config(out, steps, seed),
            train_dataset=dataset,
            eval_dataset=dataset.select(range(32)),
            processing_class=tok,
            token_importance=hook,
        )
        quiet(trainer).train()
        return trainer.evaluate()["eval_loss"]


def rejection_run(tok, dataset, student, steps):
    with tempfile.TemporaryDirectory() as out:
        args = config(out, steps, 0)
        args.lmbda, args.max_completion_length = 1.0, 12
        trainer = GKDTrainer(
            model=student,
            teacher_model=tiny_llama(len(tok), tokenizer=tok, seed=2),
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            prefix_filter=FlawedPrefixFilter(),
        )
        quiet(trainer).train()
        logs = [log for log in trainer.state.log_history if "prefix_filter/rejected" in log]
        return {
            key: sum(log[f"prefix_filter/{key}"] for log in logs)
            for key in ("rejected", "rejected_loop", "rejected_perplexity")
        }, 8 * steps


def looping_student(tok):
    model = tiny_llama(len(tok), tokenizer=tok, seed=1)
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[tok.convert_tokens_to_ids("7")] = 10.0
    model.lm_head = head
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.4, 0.2])
    args = parser.parse_args()
    print("command: OMP_NUM_THREADS=1 python", " ".join(sys.argv))
    tok, dataset = char_tokenizer(), addition_dataset()
    teacher = teacher_for(tok, dataset)

    print(f"\nTIP: final JSD on the student's own samples after {args.steps} steps (seeds {args.seeds})")
    print("| kept fraction | mean | std | per seed |\n|---|---|---|---|")
    for fraction in args.fractions:
        values = [tip_run(tok, dataset, teacher, fraction, args.steps, seed) for seed in args.seeds]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"| {fraction:.1f} | {statistics.mean(values):.4f} | {spread:.4f} | "
            f"{', '.join(f'{v:.4f}' for v in values)} |"
        )

    print("\nFlawed-prefix rejection (λ = 1, 8 rollouts per step, 12 tokens, default filter)")
    print("| student | rollouts | rejected | loop | perplexity |\n|---|---|---|---|---|")
    for name, student in (
        ("always emits '7' (loops)", looping_student(tok)),
        ("random init", tiny_llama(len(tok), tokenizer=tok, seed=1)),
    ):
        counts, total = rejection_run(tok, dataset, student, 5)
        print(
            f"| {name} | {total} | {counts['rejected']:.0f} | {counts['rejected_loop']:.0f} | "
            f"{counts['rejected_perplexity']:.0f} |"
        )


if __name__ == "__main__":
    main()
