"""The offline teacher cache on the SmolLM2 pair: its size and build time, and a GKD step served from it against the
live teacher, one process per configuration.

    OMP_NUM_THREADS=1 python bench/teacher_cache.py                  # k = 64, 64 rows, 4 steps (1 warm-up), 2 rounds

Reported: the cache's bytes per completion token (the data, 8k + 4, and on disk), its build time; then per
configuration the median seconds per optimizer step after the warm-up step and the peak resident memory of the
process (VmHWM), with the ratio to the live teacher at the same λ:

* ``live λ=0``: ``GKDTrainer(teacher_model=teacher, teacher_top_k=k, lmbda=0.0)``;
* ``cache λ=0``: ``GKDTrainer(teacher_model=None, teacher_cache=DIR, lmbda=0.0)`` (no teacher loaded);
* ``live λ=0.5`` and ``cache+live λ=0.5``: the same at λ = 0.5 (the live teacher scores the on-policy rows only).

Configurations run in alternation, ``--rounds`` times each, and the table reports the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


CONFIGS = ("live λ=0", "cache λ=0", "live λ=0.5", "cache+live λ=0.5")


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def data(rows: int):
    from trl_opd.assets import reasoning_gym_dataset

    return reasoning_gym_dataset("basic_arithmetic", size=rows, seed=0)


def build(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_opd import build_teacher_cache
    from trl_opd.assets import pruned_student_dir, smollm2_teacher_dir

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    teacher_dir = smollm2_teacher_dir()
    tokenizer = AutoTokenizer.from_pretrained(pruned_student_dir(teacher_dir), padding_side="left")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    start = time.perf_counter()
    cache = build_teacher_cache(
        teacher,
        tokenizer,
        data(args.rows),
        args.top_k,
        args.cache,
        max_completion_length=args.completion_length,
        batch_size=8,
        overwrite=True,  # the bench's own folder: each run rebuilds it
    )
    seconds = time.perf_counter() - start
    return {
        "rows": cache.meta.rows,
        "tokens": cache.meta.tokens,
        "bytes_per_token": cache.meta.bytes_per_token,
        "disk_bytes_per_token": cache.size_bytes / cache.meta.tokens,
        "seconds": seconds,
    }


def step(args, config: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from trl_opd import DistillationConfig, GKDTrainer
    from trl_opd.assets import pruned_student_dir, smollm2_teacher_dir

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    teacher_dir = smollm2_teacher_dir()
    student_dir = pruned_student_dir(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir, padding_side="left")
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    cached, lmbda = config.startswith("cache"), 0.5 if "0.5" in config else 0.0
    teacher = None if config == "cache λ=0" else AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    config_args = DistillationConfig(
        output_dir="/tmp/bench-teacher-cache",
        max_steps=args.steps,
        per_device_train_batch_size=4,
        max_completion_length=args.completion_length,
        learning_rate=1e-5,
        lmbda=lmbda,
        beta=0.5,
        teacher_top_k=args.top_k,
        teacher_cache=args.cache if cached else None,
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
        model=student,
        teacher_model=teacher,
        processing_class=tokenizer,
        args=config_args,
        train_dataset=data(args.rows),
        callbacks=[timer],
    )
    trainer.train()
    return {"seconds": statistics.median(timer.times[1:]), "peak_mib": peak_rss_mib()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache", default="/tmp/bench-teacher-cache-store")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(build(args) if args._child == "build" else step(args, args._child)))
        return
    print("command: OMP_NUM_THREADS=%s python" % os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv))

    def child(what):
        command = [
            sys.executable,
            __file__,
            "--_child",
            what,
            "--top-k",
            str(args.top_k),
            "--rows",
            str(args.rows),
            "--steps",
            str(args.steps),
            "--completion-length",
            str(args.completion_length),
            "--cache",
            args.cache,
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    built = child("build")
    print(
        f"cache: {built['rows']} rows, {built['tokens']} completion tokens, top-{args.top_k}: "
        f"{built['bytes_per_token']} bytes/token of data, {built['disk_bytes_per_token']:.0f} on disk; "
        f"built in {built['seconds']:.1f} s ({built['tokens'] / built['seconds']:.0f} tokens/s)"
    )
    runs = {config: [] for config in args.configs}
    for _ in range(args.rounds):
        for config in args.configs:
            runs[config].append(child(config))
    print()
    print("| configuration | median s/step | peak RSS MiB | ratio s/step | ratio RSS |")
    print("|---|---|---|---|---|")
    medians = {c: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mib")} for c, rs in runs.items()}
    for config, m in medians.items():
        base = medians.get("live λ=0.5" if "0.5" in config else "live λ=0")
        ratio = (
            f"{m['seconds'] / base['seconds']:.2f} | {m['peak_mib'] / base['peak_mib']:.2f}" if base else "n/a | n/a"
        )
        print(f"| {config} | {m['seconds']:.2f} | {m['peak_mib']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
