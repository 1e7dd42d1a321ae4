"""Experiment 4: SPIN rounds from an SFT start on the chain task, the task error measured after each round."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import tempfile
import time

from ..plots import pyplot, save, verdict_lines
from ..stats import clearly_above_paired, fmt, mean
from .base import Experiment


NAME = "spin"


def run(lab, earlier=None, seeds=None, rounds=None) -> dict:
    from trl_opd import SPINConfig, SPINTrainer
    from trl_opd.tiny import train_causal_lm

    from ..context import training_args
    from ..tasks import make_student

    size = lab.size
    T = size.ablation_T
    n_rounds = rounds or size.spin_rounds
    runs = []
    texts = [p + lab.chain.completion(p, T) for p in lab.chain.prompts()]
    for seed in size.all_seeds if seeds is None else seeds:
        start = time.perf_counter()
        student = make_student(lab.tok, seed, **size.student)
        # SPIN starts from a supervised model: plain next-token training on the dataset, stopped early
        train_causal_lm(
            student, lab.tok, texts, steps=size.spin_sft_steps, lr=size.spin_sft_lr, batch_size=16, seed=seed
        )
        sft_start = copy.deepcopy(student)
        with tempfile.TemporaryDirectory() as out:
            args = SPINConfig(
                **training_args(
                    out,
                    seed,
                    max_steps=size.spin_steps,
                    per_device_train_batch_size=16,
                    learning_rate=size.spin_lr,
                    max_rounds=n_rounds,
                    max_completion_length=T,
                    num_saturation_samples=16,
                    beta=size.spin_beta,
                )
            )
            trainer = SPINTrainer(
                model=student, args=args, train_dataset=lab.chain.dataset(T, repeat=4), processing_class=lab.tok
            )
            history_rounds = [{"round": 0, **lab.chain_eval(trainer.model, T, seed)}]
            # one round at a time so the task error is measured after each
            for k in range(1, n_rounds + 1):
                trainer.args.max_rounds = k
                with contextlib.redirect_stdout(io.StringIO()):  # the round's DPOTrainer prints its logs
                    history = trainer.train(resume=k > 1)
                last = history[-1]
                history_rounds.append(
                    {
                        "round": k,
                        "reward_margin": last.get("reward_margin"),
                        "kl": last.get("kl"),
                        "loss_end": last.get("loss_end"),
                        "saturated": last.get("saturated"),
                        **lab.chain_eval(trainer.model, T, seed),
                    }
                )
                lab.tick(f"spin round {k} seed={seed}")
                if last.get("saturated"):
                    break
        spin_seconds = time.perf_counter() - start
        control = sft_control(lab, sft_start, seed, texts, (len(history_rounds) - 1) * size.spin_steps, T)
        runs.append({"seed": seed, "rounds": history_rounds, "seconds": spin_seconds, "sft_control": control})
    return {"T": T, "runs": runs, "sft_steps": size.spin_sft_steps, "steps_per_round": size.spin_steps}


def sft_control(lab, student, seed, texts, steps, T) -> dict:
    """The control at equal steps: the SFT start (``student``, a copy taken before SPIN's first round) trained on by
    plain SFT for as many steps as SPIN's rounds took, at SPIN's learning rate and batch. Only the objective differs
    between the two arms, so their paired difference measures it. (A fresh SFT run for start + rounds steps at the
    start's learning rate was the control before: its token error swung by up to 0.08 from one 40-step checkpoint to
    the next, which a change of float path or seed turned into a different verdict.)"""
    from trl_opd.tiny import train_causal_lm

    start = time.perf_counter()
    train_causal_lm(student, lab.tok, texts, steps=steps, lr=lab.size.spin_lr, batch_size=16, seed=seed + 1)
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, **lab.chain_eval(student, T, seed)}


def count_runs(size, experiments) -> int:
    return len(size.all_seeds) * size.spin_rounds


def verdict(tok_means, final=None, control=None) -> str:
    """From the mean token error by round (round 0 = the SFT start); with the per-seed ``final`` errors and the
    SFT ``control`` at equal steps, the verdict adds whether SPIN beats more SFT (2 standard errors, 0.01)."""
    gains = [a - b for a, b in itertools.pairwise(tok_means)]
    if not gains:
        return "inconclusive (no round ran)"
    text = _rounds_verdict(tok_means, gains)
    if final and control and len(final) == len(control):
        if clearly_above_paired(final, control, k=2, floor=0.01):
            text += f"; plain SFT for the same steps does better ({mean(control):.3f} vs {mean(final):.3f})"
        elif clearly_above_paired(control, final, k=2, floor=0.01):
            text += f"; and SPIN beats plain SFT for the same steps ({mean(final):.3f} vs {mean(control):.3f})"
        else:
            text += f"; no clear difference from plain SFT for the same steps ({mean(control):.3f})"
    return text


def _rounds_verdict(tok_means, gains) -> str:
    best = tok_means[0] - min(tok_means[1:])
    text = "gains per round " + ", ".join(f"{g:+.3f}" for g in gains)
    if best < 0.02:
        return (
            f"disagrees: no round improves the SFT start by 0.02 (token error {tok_means[0]:.3f} before, best "
            f"{min(tok_means[1:]):.3f} after; {text})"
        )
    if gains[0] >= 0.5 * best and all(abs(g) < 0.5 * gains[0] for g in gains[1:]):
        return f"agrees: the first round gains most, later rounds are flat ({text})"
    return f"partly agrees: SPIN improves the SFT start by {best:.3f}, but not first-round-first then flat ({text})"


def section(res, out, results=None):
    runs, T = res["runs"], res["T"]
    n = max(len(r["rounds"]) for r in runs)
    lines = [
        "## 4. SPIN: improvement per round",
        "",
        (
            f"Chain task, T = {T}. The student (1 layer, hidden 32) is first trained by supervised next-token learning "
            f"on the dataset for {res['sft_steps']} steps (stopped early, as SPIN starts from an SFT model); then each "
            f"round ({res['steps_per_round']} DPO steps) plays it against its previous iterate: the dataset's "
            "completions are 'chosen', its own samples 'rejected'. Round 0 = the SFT start."
        ),
        "",
        "| round | sequence error | token error | reward margin | KL(θ_k‖θ_k-1) | saturated |",
        "|---|---|---|---|---|---|",
    ]
    tok_means = []
    for k in range(n):
        rs = [r["rounds"][k] for r in runs if len(r["rounds"]) > k]
        tok_means.append(mean([r["token_error"] for r in rs]))
        sat = "n/a" if k == 0 else f"{sum(bool(r.get('saturated')) for r in rs)}/{len(rs)}"
        lines.append(
            f"| {k} | {fmt([r['sequence_error'] for r in rs])} | {fmt([r['token_error'] for r in rs])} | "
            f"{fmt([r.get('reward_margin') for r in rs])} | {fmt([r.get('kl') for r in rs])} | {sat} |"
        )
    controls = [r["sft_control"] for r in runs if "sft_control" in r]
    if controls:
        lines += [
            "",
            (
                f"**Control at equal steps**: the SFT start trained on by plain SFT for as many steps as the SPIN "
                f"rounds took ({controls[0]['steps']} steps, SPIN's learning rate and batch; only the objective "
                f"differs): token error "
                f"{fmt([c['token_error'] for c in controls])}, sequence error "
                f"{fmt([c['sequence_error'] for c in controls])}; cost {fmt([c['seconds'] for c in controls], 1)} s "
                f"against {fmt([r.get('seconds') for r in runs], 1)} s for the SFT start and SPIN's rounds. "
                f"n = {len(runs)} student seeds."
            ),
        ]
    saturated = sum(bool(x.get("saturated")) for r in runs for x in r["rounds"][1:])
    lines += [
        "",
        (
            "Saturation (SPINTrainer's own check on the reward margin): "
            + (f"reached in {saturated} round(s)." if saturated else "no saturation observed in any round or seed.")
        ),
    ]
    text = verdict(tok_means, [r["rounds"][-1]["token_error"] for r in runs], [c["token_error"] for c in controls])
    lines += ["", "Seed's prediction: fast improvement, then flat (saturation).", "", *verdict_lines(text, "spin")]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in runs:
        ax.plot([x["round"] for x in r["rounds"]], [x["token_error"] for x in r["rounds"]], color="0.7", lw=0.8)
    ax.plot(range(n), tok_means, marker="o", color="C0", label="mean")
    ax.set_xlabel("round (0 = SFT start)"), ax.set_ylabel("token error"), ax.set_title("SPIN"), ax.legend()
    save(fig, out, "spin")
    return lines, {"verdict": text, "token_error_by_round": tok_means}


EXPERIMENT = Experiment(NAME, run, section, count_runs)
