"""Top-k + tail against the full vocabulary on the SmolLM2 pair, on real student samples.

    OMP_NUM_THREADS=1 python bench/teacher_topk.py                      # bias table: 8 prompts x 48 sampled tokens
    OMP_NUM_THREADS=1 python bench/teacher_topk.py --train-steps 12     # + a short GKD run, k = 64 against full

The student (SmolLM2-135M-Instruct with 20 of its 30 layers, `trl_opd.assets`) samples completions of reasoning-gym
`basic_arithmetic` prompts; on those tokens the teacher (the full 135M model) and the student give their next-token
distributions. For each divergence and k, the table compares the top-k + tail divergence with the full one:

* **rel. error of the mean**: |mean D_k − mean D| / mean D over every sampled token;
* **median per-token rel. error**: the median over tokens of |D_k − D| / D;
* **gradient cosine**: cosine between the gradients of Σ D_k and of Σ D with respect to the student's hidden states
  (the direction the student is pushed in).

With `--train-steps`, two GKD runs (λ = 1, JSD, the same seed and steps) train the student with k = 64 and with the
full vocabulary; the held-out guards (`trl_opd.evaluation.guards`) of both are printed side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--train-k", type=int, default=64)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from trl_opd.assets import pruned_student_dir, reasoning_gym_dataset, smollm2_teacher_dir
    from trl_opd.data import prompt_token_ids
    from trl_opd.divergences import DIVERGENCES, LMHead, chunked_per_token_divergence
    from trl_opd.scoring import completion_hidden_states, pack, sample

    print("command: OMP_NUM_THREADS=%s python" % os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv))
    teacher_dir = smollm2_teacher_dir()
    student_dir = pruned_student_dir(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir, padding_side="left")
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    data = reasoning_gym_dataset("basic_arithmetic", size=args.prompts, seed=3)
    prompts = [prompt_token_ids(tokenizer, p) for p in data["prompt"]]
    torch.manual_seed(0)
    completions = sample(
        student,
        prompts,
        tokenizer.pad_token_id,
        [tokenizer.eos_token_id],
        max_new_tokens=args.tokens,
        do_sample=True,
        temperature=1.0,
        top_k=0,
    )
    batch = pack(prompts, completions, tokenizer.pad_token_id)
    with torch.no_grad():
        h_s = completion_hidden_states(student, batch)
        h_t = completion_hidden_states(teacher, batch)
    print(f"{h_s.shape[0]} sampled tokens, vocabulary {len(tokenizer)}")
    print()
    print(
        "| divergence | k | mean D (full) | mean D_k | rel. error of the mean | median per-token rel. error | "
        "gradient cosine |"
    )
    print("|---|---|---|---|---|---|---|")
    student_head, teacher_head = LMHead.of(student).detached(), LMHead.of(teacher).detached()

    def run(divergence, k):
        h = h_s.clone().requires_grad_()
        values = chunked_per_token_divergence(h, h_t, student_head, teacher_head, divergence, 0.5, teacher_top_k=k)
        (grad,) = torch.autograd.grad(values.sum(), h)
        return values.detach(), grad.flatten()

    for divergence in DIVERGENCES:
        full, grad_full = run(divergence, None)
        for k in args.ks:
            values, grad = run(divergence, k)
            rel_mean = abs(values.mean() - full.mean()) / full.mean()
            per_token = ((values - full).abs() / full.clamp(min=1e-12)).median()
            cosine = torch.nn.functional.cosine_similarity(grad, grad_full, dim=0)
            print(
                f"| {divergence} | {k} | {full.mean():.4f} | {values.mean():.4f} | {rel_mean:.3f} | "
                f"{per_token:.3f} | {cosine:.4f} |"
            )
    if args.train_steps:
        train(args, tokenizer, student_dir, teacher)


def train(args, tokenizer, student_dir, teacher):
    import statistics

    import torch
    from transformers import AutoModelForCausalLM

    from trl_opd import DistillationConfig, GKDTrainer
    from trl_opd.assets import reasoning_gym_dataset

    train_data = reasoning_gym_dataset("basic_arithmetic", size=64, seed=0)
    held_out = reasoning_gym_dataset("basic_arithmetic", size=16, seed=1)
    print()
    print(
        f"GKD λ = 1, JSD(0.5), {args.train_steps} steps, batch 4, 32 completion tokens, lr 2e-5, seed 0; guards on "
        "16 held-out prompts (one sample each, seeded alike)"
    )
    print(
        "| teacher | s/step | "
        + " | ".join(("fkl_on_teacher_samples", "rkl_on_student_samples", "student_eos_rate", "student_distinct_2"))
        + " |"
    )
    print("|---|---|---|---|---|---|")
    for k in (None, args.train_k):
        student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
        config = DistillationConfig(
            output_dir="/tmp/bench-topk",
            max_steps=args.train_steps,
            per_device_train_batch_size=4,
            max_completion_length=32,
            learning_rate=2e-5,
            lmbda=1.0,
            beta=0.5,
            teacher_top_k=k,
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
            model=student, teacher_model=teacher, processing_class=tokenizer, args=config, train_dataset=train_data
        )
        times = []
        start = time.perf_counter()
        trainer.train()
        times.append((time.perf_counter() - start) / args.train_steps)
        torch.manual_seed(7)
        guards = trainer.sample_guards(held_out, max_new_tokens=32)
        label = "full vocabulary" if k is None else f"top-{k} + tail"
        print(f"| {label} | {statistics.median(times):.1f} | " + " | ".join(f"{v:.3f}" for v in guards.values()) + " |")


if __name__ == "__main__":
    main()
