"""Experiment 6: λ schedules. GKD on the chain with constant λ ∈ {0, 0.25, 0.5, 0.75, 1} and the package's ``linear``
and ``three_phase`` schedules (:mod:`trl_opd.schedules`), with learning curves, compared at equal steps and at equal
wall-clock; and the diagnosis of why mixing off-policy rows in can hurt on the chain task: the same settings on the
control chain (period 24, no "copy the digit 4 back" shortcut), and how often each student copies the digit 4 back
where that breaks the rule."""

from __future__ import annotations

from ..plots import pyplot, save, verdict_lines
from ..stats import clearly_above_paired, fmt, mean, num, paired_gap, unit
from .base import Experiment


NAME = "schedules"
CONSTANTS = (0.0, 0.25, 0.5, 0.75, 1.0)
SCHEDULES = ("linear", "three_phase")
CONTROL = {"a": 1, "b": 3}  # x_t = x_t-1 + 3 x_t-2 mod 5: period 24 on every prompt
CONTROL_SETTINGS = ("λ=0.5", "three_phase", "λ=1")  # the settings rerun on the control chain
MIXED = ("λ=0.5", "three_phase")  # the mixed settings whose loss against λ = 1 is diagnosed


def settings() -> list[tuple[str, float, dict]]:
    """``(label, lmbda, GKDConfig schedule fields)`` of every setting."""
    out = [(f"λ={lam:g}", lam, {}) for lam in CONSTANTS]
    return out + [(kind, 0.5, {"lmbda_schedule": kind}) for kind in SCHEDULES]


def _train(lab, task, teacher, label, lmbda, schedule, seed, tag) -> dict:
    size = lab.size
    T = size.schedule_T
    record, student = lab.gkd_chain(
        T,
        lmbda,
        size.schedule_divergence,
        seed,
        steps=size.schedule_steps,
        lr=size.schedule_lr,
        batch=size.schedule_batch,
        schedule=schedule,
        curve_every=max(1, size.schedule_steps // size.schedule_curve_points),
        task=task,
        teacher=teacher,
    )
    prompts, texts = lab.rollouts(student, T, seed) if task is lab.chain else _rollouts(lab, task, student, T, seed)
    record.update(
        setting=label,
        task=tag,
        **task.score(prompts, texts, T),
        **task.error_stats(prompts, texts, T),
        shortcut=task.shortcut_use(prompts, texts, T),
    )
    return record


def _rollouts(lab, task, student, T, seed):
    from ..context import EVAL_SEED_OFFSET
    from ..tasks import sample_texts

    return sample_texts(student, lab.tok, task.prompts(), T, lab.size.samples_per_prompt, EVAL_SEED_OFFSET + seed)


def control_teacher(lab):
    """The chain teacher's recipe on the control chain (same seed, steps and length)."""
    import time

    from ..tasks import ChainTask, make_chain_teacher

    task = ChainTask(**CONTROL)
    start = time.perf_counter()
    T = lab.size.teacher_T or max(max(lab.size.horizons), lab.size.ablation_T)
    teacher, losses = make_chain_teacher(lab.tok, task, T, lab.size.teacher_steps, seed=lab.seed)
    lab.teachers["control_chain"] = {
        "rule": task.name,
        "steps": lab.size.teacher_steps,
        "T": T,
        "final_loss": losses[-1],
        "seconds": time.perf_counter() - start,
        f"T={lab.size.schedule_T}": _teacher_eval(lab, task, teacher),
    }
    return task, teacher


def _teacher_eval(lab, task, teacher):
    T = lab.size.schedule_T
    return task.score(*_rollouts(lab, task, teacher, T, lab.seed), T)


def run(lab, earlier=None, seeds=None, chosen=None, control=True) -> dict:
    """Every setting (or the labels in ``chosen``) per seed on the chain; with ``control``, CONTROL_SETTINGS on the
    control chain too."""
    runs = []
    for seed in seeds or lab.size.seeds:
        for label, lmbda, schedule in settings():
            if chosen is None or label in chosen:
                runs.append(_train(lab, lab.chain, lab.chain_teacher(), label, lmbda, schedule, seed, "chain"))
                lab.tick(f"schedules {label} seed={seed}")
    if control:
        task, teacher = control_teacher(lab)
        for seed in seeds or lab.size.seeds:
            for label, lmbda, schedule in settings():
                if label in CONTROL_SETTINGS and (chosen is None or label in chosen):
                    runs.append(_train(lab, task, teacher, label, lmbda, schedule, seed, "control"))
                    lab.tick(f"schedules control {label} seed={seed}")
    size = lab.size
    return {
        "T": size.schedule_T,
        "steps": size.schedule_steps,
        "lr": size.schedule_lr,
        "batch": size.schedule_batch,
        "divergence": size.schedule_divergence,
        "runs": runs,
    }


def count_runs(size, experiments) -> int:
    return len(size.seeds) * (len(settings()) + len(CONTROL_SETTINGS))


def runs_of(res, label, task="chain") -> list[dict]:
    return sorted((r for r in res["runs"] if r["setting"] == label and r["task"] == task), key=unit)


def labels(res, task="chain") -> list[str]:
    return [label for label, _, _ in settings() if runs_of(res, label, task)]


def at_seconds(run: dict, budget: float) -> float | None:
    """Token error of ``run``'s learning curve at the last point within ``budget`` seconds of training (None if the
    first point came later)."""
    points = [p for p in run.get("curve", []) if p["seconds"] <= budget + 1e-9]
    return points[-1]["token_error"] if points else None


def equal_time_budget(res, task="chain") -> float:
    """The equal wall-clock budget: the mean training time of the cheapest setting (every setting gets it)."""
    return min(mean([r["train_seconds"] for r in runs_of(res, label, task)]) for label in labels(res, task))


def verdict(res) -> str:
    """Which setting has the lowest mean token error at equal steps; whether it is clearly (2 standard errors of the
    per-seed differences, and 0.02) better than the runner-up; and why λ = 0.5 / three_phase lose against λ = 1
    when they do: the period-4 shortcut (they copy the digit 4 back where that breaks the rule more often than
    λ = 1 does, and the gap closes on the control chain) or not."""
    names = labels(res)
    if not names:
        return "inconclusive (no run)"
    tok = {n: [r["token_error"] for r in runs_of(res, n)] for n in names}
    order = sorted(names, key=lambda n: mean(tok[n]))
    best, second = order[0], order[1] if len(order) > 1 else None
    facts = ", ".join(f"{n} {mean(tok[n]):.3f}" for n in order)
    if second and clearly_above_paired(tok[second], tok[best], k=2.0, floor=0.02):
        head = f"{best} is best at equal steps ({facts})"
    else:
        head = f"no setting is clearly best at equal steps; lowest: {best} ({facts})"
    whys = [f"why {label} loses: {d}" for label in MIXED if (d := diagnosis(res, label)) and "not clearly" not in d]
    return head + "".join("; " + w for w in whys)


def at_step(run: dict, step: float) -> float | None:
    """Token error of ``run``'s learning curve at the last point at or before ``step``."""
    points = [p for p in run.get("curve", []) if p["step"] <= step + 1e-9]
    return points[-1]["token_error"] if points else None


def equal_on_policy(res, label, task="chain") -> list[float | None]:
    """Per run of ``label``: λ = 1's token error (same seeds, its learning curve) after as many on-policy rows as
    ``label`` trained on in all (on-policy share × steps)."""
    full = {unit(r): r for r in runs_of(res, "λ=1", task)}
    out = []
    for r in runs_of(res, label, task):
        ref = full.get(unit(r))
        share = r.get("on_policy_fraction")
        out.append(at_step(ref, share * res["steps"]) if ref is not None and share is not None else None)
    return out


def diagnosis(res, label="λ=0.5") -> str:
    """Why ``label`` (a mixed setting) loses against λ = 1, tested on the numbers (empty when either is missing):

    * *dilution*: it is no worse than λ = 1 after as many on-policy rows (its learning curve), so the off-policy
      rows add nothing and mixing only removes on-policy updates; *interference*: it is clearly worse than that, so
      the off-policy rows actively hurt;
    * *the period-4 shortcut*: it copies the digit 4 back off the track clearly more often than λ = 1, and its gap
      to λ = 1 shrinks by half or more on the control chain (no shortcut)."""
    if not runs_of(res, label) or not runs_of(res, "λ=1"):
        return ""
    tok = [r["token_error"] for r in runs_of(res, label)]
    one = [r["token_error"] for r in runs_of(res, "λ=1")]
    if len(tok) != len(one):
        return ""
    worse = clearly_above_paired(tok, one, k=2.0, floor=0.02)
    text = f"{label} {mean(tok):.3f} vs λ=1 {mean(one):.3f}"
    if not worse:
        return f"{label} is not clearly worse than λ=1 here ({text})"
    facts, causes = [text], []
    same_rows = equal_on_policy(res, label)
    if all(v is not None for v in same_rows):
        facts.append(f"λ=1 after as many on-policy rows {mean(same_rows):.3f}")
        if clearly_above_paired(tok, same_rows, k=2.0, floor=0.02):
            causes.append("the off-policy rows actively hurt (worse than λ=1 after as many on-policy rows)")
        else:
            causes.append(
                "mixing dilutes: it matches λ=1 after as many on-policy rows, the off-policy rows add nothing"
            )
    copy = [r["shortcut"]["copy"] for r in runs_of(res, label)]
    copy_one = [r["shortcut"]["copy"] for r in runs_of(res, "λ=1")]
    facts.append(f"copies 4 back off the track {num(mean(copy), 2)} vs {num(mean(copy_one), 2)} (chance 0.2)")
    gap = paired_gap(tok, one)[0]
    control = [r["token_error"] for r in runs_of(res, label, "control")]
    control_one = [r["token_error"] for r in runs_of(res, "λ=1", "control")]
    if control and len(control) == len(control_one):
        c_gap = paired_gap(control, control_one)[0]
        facts.append(f"on the control chain (no shortcut) {mean(control):.3f} vs {mean(control_one):.3f}")
        if clearly_above_paired(copy, copy_one, k=2.0, floor=0.05) and c_gap < 0.5 * gap:
            causes.append("the off-policy rows teach the period-4 shortcut (more copying; the gap shrinks without it)")
        elif c_gap >= 0.5 * gap:
            causes.append("not the period-4 shortcut (the gap stays on the control chain)")
    return ("; ".join(causes) or "no cause identified") + " (" + "; ".join(facts) + ")"


def _cost(res, label, task="chain") -> str:
    return fmt([r["train_seconds"] for r in runs_of(res, label, task)], 1)


def section(res, out, results=None):
    T, n = res["T"], len({unit(r) for r in res["runs"] if r["task"] == "chain"})
    names = labels(res)
    budget = equal_time_budget(res) if names else 0.0
    lines = [
        "## 6. λ schedules: which one to use",
        "",
        (
            f"Chain task, T = {T}, GKD with {res['divergence'].upper()}, {res['steps']} steps of {res['batch']} rows, "
            f"lr {res['lr']}, for each setting; n = {n} student seeds (mean [90 % bootstrap interval]). Constant λ, "
            "`linear` (λ from 0 to 1) and `three_phase` (λ = 0 for the first 20 % of the steps, a ramp 0.3 → 0.7 "
            "over the next 40 %, then 1) from `trl_opd/schedules.py`. **Equal steps**: after all steps. **Equal "
            f"wall-clock**: on each learning curve, the error at {budget:.1f} s of training (the cheapest setting's "
            "whole run; the curve's measurements are not counted). **Copies 4 back**: where the student's own "
            "prefix makes the rule and the digit 4 back disagree, the share of its digits that copy the digit 4 "
            "back (chance 0.2; the teacher's sequences never tell the two apart)."
        ),
        "",
        "| setting | token error (equal steps) | sequence error | after first error | copies 4 back | token error at "
        f"{budget:.1f} s | train seconds | on-policy share | λ=1 after as many on-policy rows |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in names:
        rs = runs_of(res, label)
        lines.append(
            f"| {label} | {fmt([r['token_error'] for r in rs])} | {fmt([r['sequence_error'] for r in rs])} | "
            f"{fmt([r['after_first'] for r in rs], 2)} | {fmt([r['shortcut']['copy'] for r in rs], 2)} | "
            f"{fmt([at_seconds(r, budget) for r in rs])} | {_cost(res, label)} | "
            f"{fmt([r['on_policy_fraction'] for r in rs], 2)} | {fmt(equal_on_policy(res, label))} |"
        )
    control = labels(res, "control")
    if control:
        teacher = ((results or {}).get("teachers") or {}).get("control_chain", {})
        lines += [
            "",
            (
                f"Control chain ({teacher.get('rule', 'x_t = x_t-1 + 3 x_t-2 mod 5')}, period 24: no copy-back "
                f"shortcut within {T} digits), its own teacher trained by the same recipe"
                + (f" (own token error {teacher[f'T={T}']['token_error']:.3f})" if f"T={T}" in teacher else "")
                + ":"
            ),
            "",
            "| setting | token error | after first error | train seconds |",
            "|---|---|---|---|",
        ]
        for label in control:
            rs = runs_of(res, label, "control")
            lines.append(
                f"| {label} | {fmt([r['token_error'] for r in rs])} | {fmt([r['after_first'] for r in rs], 2)} | "
                f"{_cost(res, label, 'control')} |"
            )
    text = verdict(res)
    lines += [
        "",
        "Tutorial's recipe (chapter 7): start off-policy, ramp λ up, finish on-policy (`three_phase`).",
        "",
        *verdict_lines(text, "schedules"),
    ]
    _plot(res, names, out)
    return lines, {"verdict": text, "short": text.split(" (")[0].split(";")[0]}


def _plot(res, names, out):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, label in enumerate(names):
        color = f"C{i}"
        for r in runs_of(res, label):
            curve = r.get("curve", [])
            for ax, x in zip(axes, ("step", "seconds"), strict=True):
                ax.plot(
                    [p[x] for p in curve],
                    [p["token_error"] for p in curve],
                    color=color,
                    lw=0.9,
                    alpha=0.8,
                    label=label if r is runs_of(res, label)[0] else None,
                )
    for ax, xlabel in zip(axes, ("training step", "training seconds"), strict=True):
        ax.set_xlabel(xlabel), ax.set_ylabel("token error (own rollouts)"), ax.set_yscale("log")
    axes[0].set_title("learning curves, one line per seed"), axes[0].legend(fontsize=7, ncol=2)
    axes[1].set_title("the same against wall-clock")
    save(fig, out, "schedules")


EXPERIMENT = Experiment(NAME, run, section, count_runs)
