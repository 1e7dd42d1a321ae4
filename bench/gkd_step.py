"""One optimizer step of GKD on the SmolLM2 pair: trl_opd against TRL, same inputs, one process per configuration.

    OMP_NUM_THREADS=1 python bench/gkd_step.py                 # 4 steps (1 warm-up), batch 4, 64 completion tokens
    OMP_NUM_THREADS=1 python bench/gkd_step.py --steps 6 --completion-length 32

Pairs compared (both sides: λ, β = 0.5 JSD, temperature 1, lr 1e-5, fp32, no gradient checkpointing):

* λ = 0.5: ``trl_opd.GKDTrainer`` vs TRL's experimental ``trl.experimental.gkd.GKDTrainer``;
* λ = 1:   ``trl_opd.GKDTrainer`` vs ``trl.DistillationTrainer`` (always on-policy).

Reported per configuration: median seconds per optimizer step after the warm-up step, completion tokens trained per
second (trl_opd logs the count; TRL does not, so "n/a"), and the peak resident memory of the process (MiB).
Teacher: SmolLM2-135M-Instruct; student: its 20-layer pruned copy (trl_opd.assets).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from transformers import TrainerCallback


CONFIGS = ("trl_opd λ=0.5", "TRL GKD λ=0.5", "trl_opd λ=1", "TRL Distillation λ=1")


class PhaseMeter:
    """Peak RSS (MiB) within each phase of a training step, sampled every millisecond by a background thread.

    Phases: ``generate`` (rollouts and teacher scoring, ``_generate_and_score_completions``), ``loss`` (the forward
    passes and the divergence, ``compute_loss``), ``backward`` and ``optimizer`` (``optimizer.step``).
    """

    def __init__(self):
        import threading

        self.phase, self.peaks, self.running = "step", {}, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE") / 2**20
        while self.running:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            time.sleep(0.001)

    def _wrap(self, owner, name, phase):
        inner = getattr(owner, name, None)
        if inner is None:  # TRL's experimental GKD generates inside training_step: counted under "step"
            return

        def wrapped(*args, **kwargs):
            previous, self.phase = self.phase, phase
            try:
                return inner(*args, **kwargs)
            finally:
                self.phase = previous

        setattr(owner, name, wrapped)

    def attach(self, trainer):
        self._wrap(trainer, "_generate_and_score_completions", "generate")
        self._wrap(trainer, "compute_loss", "loss")
        self._wrap(trainer.accelerator, "backward", "backward")
        meter = self

        class OptimizerPhase(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                meter.phase = "optimizer"

            def on_optimizer_step(self, args, state, control, **kwargs):
                meter.phase = "step"

        trainer.add_callback(OptimizerPhase())

    def stop(self) -> dict:
        self.running = False
        self.thread.join()
        return {phase: round(peak) for phase, peak in self.peaks.items()}


def run(config: str, steps: int, batch: int, completion_length: int, phases: bool = False) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from trl_opd.assets import pruned_student_dir, reasoning_gym_dataset, smollm2_teacher_dir

    teacher_dir = smollm2_teacher_dir()
    student_dir = pruned_student_dir(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir, padding_side="left")
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    data = reasoning_gym_dataset("gsm_symbolic", size=64, seed=0)
    lmbda = 0.5 if "0.5" in config else 1.0
    common = dict(
        output_dir="/tmp/bench-gkd-step",
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=1e-5,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
        temperature=1.0,
        beta=0.5,
    )

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    meter = PhaseMeter() if phases else None
    if config.startswith("trl_opd"):
        from trl_opd import GKDConfig, GKDTrainer

        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            processing_class=tokenizer,
            train_dataset=data,
            args=GKDConfig(**common, lmbda=lmbda, max_completion_length=completion_length),
            callbacks=[timer],
        )
    elif config.startswith("TRL GKD"):
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        messages = data.map(lambda r: {"messages": r["prompt"] + r["completion"]}, remove_columns=data.column_names)
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            processing_class=tokenizer,
            train_dataset=messages,
            args=GKDConfig(**common, lmbda=lmbda, max_new_tokens=completion_length, max_length=1024),
            callbacks=[timer],
        )
    else:
        from trl import DistillationConfig, DistillationTrainer

        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            processing_class=tokenizer,
            train_dataset=data.remove_columns("completion"),
            args=DistillationConfig(**common, max_completion_length=completion_length),
            callbacks=[timer],
        )
    if meter is not None:
        meter.attach(trainer)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    tokens = [log.get("num_tokens_trained") for log in logs]
    measured = timer.times[1:]
    result = {
        "config": config,
        "seconds": statistics.median(measured),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": logs[-1]["loss"],
    }
    if meter is not None:
        result["phase_peaks_mib"] = meter.stop()
    if all(t is not None for t in tokens[1:]) and tokens[1:]:
        result["tokens_per_second"] = statistics.median(t / s for t, s in zip(tokens[1:], measured, strict=False))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--phases", action="store_true", help="also print the peak RSS of each phase of a step")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(run(args._child, args.steps, args.batch, args.completion_length, args.phases)))
        return
    print("command: OMP_NUM_THREADS=%s python" % os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv))
    print("| configuration | median s/step | tokens/s (trained) | peak RSS MiB | ratio s/step | ratio RSS |")
    print("|---|---|---|---|---|---|")
    results = {}
    for config in args.configs:
        cmd = [
            sys.executable,
            __file__,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--completion-length",
            str(args.completion_length),
            "--_child",
            config,
        ] + ["--phases"] * args.phases
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {config} | failed: {done.stderr.strip().splitlines()[-1][:80]} |")
            continue
        results[config] = json.loads(done.stdout.strip().splitlines()[-1])
    for ours, theirs in (("trl_opd λ=0.5", "TRL GKD λ=0.5"), ("trl_opd λ=1", "TRL Distillation λ=1")):
        for config in (ours, theirs):
            if config not in results:
                continue
            r, base = results[config], results.get(theirs)
            ratio_t = r["seconds"] / base["seconds"] if base else float("nan")
            ratio_m = r["peak_mib"] / base["peak_mib"] if base else float("nan")
            tps = f"{r['tokens_per_second']:.1f}" if "tokens_per_second" in r else "n/a"
            print(f"| {config} | {r['seconds']:.2f} | {tps} | {r['peak_mib']:.0f} | {ratio_t:.2f} | {ratio_m:.2f} |")
    if args.phases:
        names = ("step", "generate", "loss", "backward", "optimizer")
        print('\npeak RSS MiB by phase ("step": model loading and everything outside the named phases)\n')
        print("| configuration | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for config, r in results.items():
            peaks = r.get("phase_peaks_mib", {})
            print(f"| {config} | " + " | ".join(str(peaks.get(n, "n/a")) for n in names) + " |")


if __name__ == "__main__":
    main()
