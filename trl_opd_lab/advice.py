"""The report's closing "What to do": recommendations computed from the measured numbers, never written in advance.

Each rule reads one experiment's results and returns one recommendation (or None when that experiment did not run):
it names the choice the numbers favour, the quality gain and the cost next to it, and says "no clear winner" when
the difference does not clear 2 standard errors of the per-seed differences
(:func:`~trl_opd_lab.stats.clearly_above_paired`).
"""

from __future__ import annotations

from .stats import clearly_above_paired, mean, unit


def _paired(runs, key_a, key_b, value="token_error"):
    """Values of two groups of runs paired by (teacher seed, seed)."""
    a = {unit(r): r[value] for r in runs if key_a(r)}
    b = {unit(r): r[value] for r in runs if key_b(r)}
    units = sorted(set(a) & set(b))
    return [a[u] for u in units], [b[u] for u in units]


def _seconds(runs, key) -> float | None:
    return mean([r.get("train_seconds") for r in runs if key(r)])


def _ratio(a, b) -> str:
    return f"{a / b:.1f}×" if a and b else "n/a"


def compounding(res) -> str | None:
    runs = res["runs"]
    last = len(res["horizons"]) - 1
    T = res["horizons"][last]
    rows = [{**r, "at_T": r["total_errors"][last]} for r in runs]
    off, on = _paired(rows, lambda r: r["lmbda"] == 0.0, lambda r: r["lmbda"] == 1.0, "at_T")
    if not off:
        return None
    cost = _ratio(_seconds(runs, lambda r: r["lmbda"] == 1.0), _seconds(runs, lambda r: r["lmbda"] == 0.0))
    facts = f"total errors at T = {T}: λ=1 {mean(on):.2f} vs λ=0 {mean(off):.2f}, at {cost} the training time per step"
    if clearly_above_paired(off, on, k=2, floor=0.05):
        return f"**Long generations: train on-policy (λ = 1).** {facts}."
    if clearly_above_paired(on, off, k=2, floor=0.05):
        return f"**Long generations: off-policy (λ = 0) was better here, and cheaper.** {facts}."
    return f"**Long generations: no clear winner between λ = 0 and λ = 1 at equal steps;** λ = 0 is cheaper. {facts}."


def schedules(res) -> str | None:
    from .experiments import schedules as sched

    names = sched.labels(res)
    if not names:
        return None
    tok = {n: [r["token_error"] for r in sched.runs_of(res, n)] for n in names}
    secs = {n: mean([r["train_seconds"] for r in sched.runs_of(res, n)]) for n in names}
    order = sorted(names, key=lambda n: mean(tok[n]))
    best, second = order[0], order[1]
    budget = sched.equal_time_budget(res)
    at_budget = {n: mean([sched.at_seconds(r, budget) for r in sched.runs_of(res, n)]) for n in names}
    timed = [n for n in names if at_budget[n] is not None]
    fastest = min(timed, key=lambda n: at_budget[n]) if timed else None
    clear = clearly_above_paired(tok[second], tok[best], k=2, floor=0.02)
    text = (
        f"**λ: use {best}**" + ("" if clear else f" (not clearly ahead of {second})") + f": token error "
        f"{mean(tok[best]):.3f} at equal steps ({secs[best]:.0f} s) against {second} {mean(tok[second]):.3f} "
        f"({secs[second]:.0f} s)"
    )
    for label in ("three_phase", "λ=0.5"):
        if label in tok and label not in (best, second):
            text += f", {label} {mean(tok[label]):.3f} ({secs[label]:.0f} s)"
    if fastest is not None:
        text += f"; at an equal {budget:.0f} s of training the best is {fastest} ({at_budget[fastest]:.3f})"
    whys = [f"{label}: {d}" for label in sched.MIXED if (d := sched.diagnosis(res, label))]
    return text + "." + (" Why the mixed settings lose or not: " + "; ".join(whys) + "." if whys else "")


def ablation(res) -> str | None:
    runs = [r for r in res["runs"] if r["lmbda"] == 1.0]
    divs = sorted({r["divergence"] for r in runs})
    if len(divs) < 2:
        return None
    tok = {d: mean([r["token_error"] for r in runs if r["divergence"] == d]) for d in divs}
    order = sorted(divs, key=tok.get)
    best, second = order[0], order[1]
    a, b = _paired(runs, lambda r: r["divergence"] == second, lambda r: r["divergence"] == best)
    clear = clearly_above_paired(a, b, k=2, floor=0.02)
    facts = ", ".join(f"{d.upper()} {tok[d]:.3f}" for d in order)
    return (
        f"**Divergence on a task with one right answer (the chain, λ = 1): {best.upper()}"
        + ("" if clear else f", not clearly ahead of {second.upper()}")
        + f"** (token error {facts} at T = {res['T']}, {res['steps']} steps)."
    )


def modes(res) -> str | None:
    runs = res["runs"]
    by = {m: [r for r in runs if r["method"] == m] for m in sorted({r["method"] for r in runs})}
    if "fkl" not in by:
        return None
    top = {m: mean([r["top_mode"] for r in rs]) for m, rs in by.items()}
    between = {m: mean([r["between"] for r in rs]) for m, rs in by.items()}
    seeker = max(top, key=top.get)
    if top[seeker] < 0.8:
        return (
            f"**Divergence on a task with several right answers: no method committed to one mode at this size** (best "
            f"top-mode mass {top[seeker]:.2f}, {seeker.upper()})."
        )
    return (
        f"**Divergence on a task with several right answers: to commit to one, {seeker.upper()}** (mass on its top "
        f"mode {top[seeker]:.2f}, between the modes {between[seeker]:.2f}); FKL spreads the mass (top mode "
        f"{top['fkl']:.2f}, between {between['fkl']:.2f}), which on a small student means invalid mixtures."
    )


def tip(res) -> str | None:
    from .experiments.tip import start_runs

    out = []
    for start in ("cold", "warm"):
        runs = start_runs(res["runs"], start)
        top, full = _paired(
            runs,
            lambda r: r["selection"] == "top" and r["keep_fraction"] == 0.5,
            lambda r: r["selection"] == "all",
        )
        if not top:
            continue
        s_top = _seconds(runs, lambda r: r["selection"] == "top" and r["keep_fraction"] == 0.5)
        s_all = _seconds(runs, lambda r: r["selection"] == "all")
        saving = 1 - s_top / s_all if s_top and s_all else None
        loses = clearly_above_paired(top, full, k=2, floor=0.03)
        close = mean(top) <= mean(full) + 0.03
        if close and saving and saving > 0.05:
            verdict = "pays"
        else:
            verdict = "does not pay" if loses or not close else "is neutral"
        out.append(
            f"{start} start: TIP top-50 % {verdict} (token error {mean(top):.3f} vs all tokens {mean(full):.3f}"
            + (f", training time {saving * 100:+.0f} % saved" if saving is not None else "")
            + ")"
        )
    if not out:
        return None
    return "**TIP (top_fraction = 0.5): " + "; ".join(out) + ".**"


def spin(res) -> str | None:
    runs = [r for r in res["runs"] if "sft_control" in r]
    if not runs:
        return None
    final = [r["rounds"][-1]["token_error"] for r in runs]
    start = [r["rounds"][0]["token_error"] for r in runs]
    sft = [r["sft_control"]["token_error"] for r in runs]
    s_spin, s_sft = mean([r["seconds"] for r in runs]), mean([r["sft_control"]["seconds"] for r in runs])
    facts = (
        f"token error from {mean(start):.3f}: SPIN {mean(final):.3f} after {len(runs[0]['rounds']) - 1} rounds "
        f"({s_spin:.0f} s), plain SFT for the same steps {mean(sft):.3f} ({s_sft:.0f} s)"
    )
    if clearly_above_paired(final, sft, k=2, floor=0.01):
        return f"**SPIN vs SFT: keep training with SFT while it still improves;** SPIN does not pay here ({facts})."
    if clearly_above_paired(sft, final, k=2, floor=0.01):
        return f"**SPIN vs SFT: SPIN pays over more SFT here** ({facts})."
    return f"**SPIN vs SFT: no clear difference at equal steps;** SFT is cheaper ({facts})."


def opsd(res) -> str | None:
    from .experiments import opsd as exp

    best = exp.best_kind(res)
    if best is None or not all(c in r for r in res["runs"] for c in exp.CONTROLS):
        return None
    own, start, sft, gkd = (exp.errors(res, key) for key in (exp.arm_key(best), "start", *exp.CONTROLS))
    secs = {a: mean(exp.errors(res, a, "train_seconds")) for a in (exp.arm_key(best), *exp.CONTROLS)}
    facts = (
        f"token error from {mean(start):.3f} after {res['steps']} steps each: OPSD ({best}) {mean(own):.3f} "
        f"({secs[exp.arm_key(best)]:.0f} s), SFT on the answers {mean(sft):.3f} ({secs['sft']:.0f} s), GKD from the "
        f"real teacher {mean(gkd):.3f} ({secs['gkd']:.0f} s)"
    )
    worse = [k for k in res["kinds"] if exp.compare(exp.errors(res, exp.arm_key(k)), start) > 0]
    if worse:
        facts += f"; {', '.join(worse)} made the start worse"
    without = {
        -1: f"without a bigger teacher, OPSD ({best} self-teacher) pays over SFT on the same answers",
        0: "without a bigger teacher, no clear difference between OPSD and SFT on the same answers; SFT is cheaper",
        1: "without a bigger teacher, train on the answers with SFT: it beats OPSD",
    }[exp.compare(own, sft)]
    with_teacher = {
        -1: "the self-teacher even beat the real teacher here",
        0: "a real teacher was not clearly better than the self-teacher",
        1: "with a real teacher at hand, distil from it: it beats the self-teacher",
    }[exp.compare(own, gkd)]
    return f"**Self-distillation with the answer as hint (OPSD): {without}; {with_teacher}** ({facts})."


RULES = (
    ("compounding", compounding),
    ("schedules", schedules),
    ("ablation", ablation),
    ("modes", modes),
    ("tip", tip),
    ("spin", spin),
    ("opsd", opsd),
)


def what_to_do(results: dict) -> list[str]:
    """The report's last section: one computed recommendation per experiment that ran."""
    items = [rule(results[name]) for name, rule in RULES if name in results]
    items = [item for item in items if item]
    if not items:
        return []
    return [
        "## What to do",
        "",
        "Computed from this run's numbers (each rule: `trl_opd_lab/advice.py`); a choice counts as clearly better "
        "when its mean gain exceeds 2 standard errors of the per-seed differences.",
        "",
        *[f"- {item}" for item in items],
        "",
    ]
