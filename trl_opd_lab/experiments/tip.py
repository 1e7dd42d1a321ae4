"""Experiment 5: TIP. GKD (λ = 1, JSD) with TokenImportance(top_fraction) at each kept fraction, against the control:
the same fractions of tokens kept at random (RandomTokenImportance)."""

from __future__ import annotations

from ..plots import pyplot, save, verdict_lines
from ..stats import fmt, mean
from .base import Experiment


NAME = "tip"
TIP_MARGIN = 0.03  # token error: closer than this counts as "the same"
SELECTIONS = (("all", "all tokens"), ("top", "TIP top {}"), ("random", "random {}"))
TIP_PRED = {"all": "reference", "top": "close to all tokens", "random": "worse than TIP top (implied)"}


def cells(fractions, random_fractions) -> list[tuple[str, float]]:
    """``(selection, kept fraction)`` of every run per seed: TIP's top fractions (1.0 = all tokens) and the control."""
    out = [("all" if f >= 1.0 else "top", f) for f in fractions]
    return out + [("random", f) for f in random_fractions if f < 1.0]


def run(lab, earlier=None, fractions=None, random_fractions=None, seeds=None, starts=None) -> dict:
    """Each cell trained on the chain at T = ``ablation_T``; the all-tokens run is the ablation's (JSD, λ = 1) run
    when the ablation ran first. JSD to the teacher is measured on the student's own samples, outside the trainer.

    ``starts``: ``"cold"`` (a fresh student) and, when ``size.tip_warm_steps``, ``"warm"``: the student first trained
    by SFT for ``tip_warm_steps`` steps (SPIN's start), then all tokens, TIP's top 50 % and a random 50 %."""
    from trl_opd.hooks import TokenImportance

    from ..controls import RandomTokenImportance

    size = lab.size
    T = size.ablation_T
    fractions = size.tip_fractions if fractions is None else fractions
    random_fractions = size.tip_random_fractions if random_fractions is None else random_fractions
    ablation = (earlier or {}).get("ablation") or {}
    reuse = {
        r["seed"]: r for r in ablation.get("runs", []) if r["divergence"] == "jsd" and r["lmbda"] == 1.0 and r["T"] == T
    }
    starts = starts or (("cold", "warm") if size.tip_warm_steps else ("cold",))
    runs, warm_start = [], {}
    for seed, start in ((seed, start) for start in starts for seed in seeds or size.seeds):
        warm = start == "warm"
        if warm:
            warm_start[str(seed)] = sft_start(lab, seed, T)
        for selection, fraction in cells(fractions, random_fractions):
            if warm and fraction not in (1.0, 0.5):
                continue
            if selection == "all":
                if seed in reuse and not warm:
                    runs.append({"keep_fraction": fraction, "selection": selection, **reuse[seed]})
                    continue
                hook = None
            elif selection == "top":
                hook = TokenImportance(mode="top_fraction", keep_fraction=fraction)
            else:
                hook = RandomTokenImportance(keep_fraction=fraction, seed=seed)
            record, student = lab.gkd_chain(
                T, 1.0, "jsd", seed, token_importance=hook, warm_steps=size.tip_warm_steps if warm else 0
            )
            record.update(lab.chain_eval(student, T, seed), own_jsd=lab.own_divergence(student, T, seed))
            runs.append({"keep_fraction": fraction, "selection": selection, "start": start, **record})
            lab.tick(f"tip {start} {selection} keep={fraction} seed={seed}")
    return {"T": T, "runs": runs, "warm_steps": size.tip_warm_steps, "warm_start": warm_start}


def sft_start(lab, seed, T) -> dict:
    """The warm start's own errors: the student after ``tip_warm_steps`` steps of SFT."""
    from trl_opd.tiny import train_causal_lm

    from ..tasks import make_student

    student = make_student(lab.tok, seed, **lab.size.student)
    texts = [p + lab.chain.completion(p, T) for p in lab.chain.prompts()]
    train_causal_lm(
        student, lab.tok, texts, steps=lab.size.tip_warm_steps, lr=lab.size.spin_sft_lr, batch_size=16, seed=seed
    )
    return lab.chain_eval(student, T, seed)


def warm_cells(size) -> list[tuple[str, float]]:
    return [c for c in cells(size.tip_fractions, size.tip_random_fractions) if c[1] in (1.0, 0.5)]


def count_runs(size, experiments) -> int:
    reused = "ablation" in experiments and 1.0 in size.tip_fractions
    cold = len(cells(size.tip_fractions, size.tip_random_fractions)) - reused
    return len(size.seeds) * (cold + (len(warm_cells(size)) if size.tip_warm_steps else 0))


def _pct(fraction) -> str:
    return f"{fraction * 100:.0f} %"


def rows(runs) -> list[tuple[str, str, float, list[dict]]]:
    """``[(label, selection, kept fraction, runs)]``: all tokens, then TIP's top and the random control by fraction."""
    out = []
    for f in sorted({r["keep_fraction"] for r in runs}, reverse=True):
        for selection, label in SELECTIONS:
            rs = [r for r in runs if r["keep_fraction"] == f and r["selection"] == selection]
            if rs:
                out.append((label.format(_pct(f)), selection, f, rs))
    return out


def verdict(tok, div=None) -> str:
    """``tok`` (and ``div``, the JSD on own samples): mean over seeds by ``(selection, kept fraction)``, selection
    ``"all"`` (fraction 1), ``"top"`` (TIP) or ``"random"`` (the control). Judged at 50 % (or the largest fraction
    below 1 with a control): TIP's selection against all tokens and against random selection, margin 0.03 in token
    error."""
    full = tok.get(("all", 1.0))
    tops = sorted((f for s, f in tok if s == "top" and f < 1.0), reverse=True)
    if full is None or not tops:
        return "inconclusive (no all-tokens run or no TIP run below 100 %)"
    paired = [f for f in tops if ("random", f) in tok]
    f = 0.5 if 0.5 in paired else (paired[0] if paired else tops[0])
    top, rnd = tok["top", f], tok.get(("random", f))
    p = _pct(f)
    facts = [
        f"token error TIP top-{p} {top:.3f}"
        + (f", random {p} {rnd:.3f}" if rnd is not None else "")
        + f", all tokens {full:.3f}"
    ]
    for g in tops:
        if g != f and ("random", g) in tok:
            facts.append(f"at {_pct(g)}: top {tok['top', g]:.3f} vs random {tok['random', g]:.3f}")
    if div and ("top", f) in div and ("all", 1.0) in div:
        facts.append(
            f"JSD on own samples top-{p} {div['top', f]:.4f}"
            + (f", random {p} {div['random', f]:.4f}" if ("random", f) in div else "")
            + f", all {div['all', 1.0]:.4f}"
        )
    facts = "; ".join(facts)
    close_all = top <= full + TIP_MARGIN
    if rnd is None:  # no control: against all tokens only
        return ("agrees: " if close_all else "disagrees: ") + facts
    if close_all and top < rnd - TIP_MARGIN:
        return f"agrees: TIP's top-{p} selection loses little against all tokens and beats a random {p} ({facts})"
    if close_all:
        return (
            f"partly agrees: keeping {p} of the tokens loses little, but TIP's selection is no better than a "
            f"random {p} ({facts})"
        )
    if top < rnd - TIP_MARGIN:
        return f"partly agrees: TIP's top-{p} selection beats a random {p} but loses against all tokens ({facts})"
    if top > rnd + TIP_MARGIN:
        return (
            f"disagrees: TIP's top-{p} selection is worse than a random {p} and than all tokens"
            + ("" if rnd <= full + TIP_MARGIN else " (a random selection loses too)")
            + f" ({facts})"
        )
    return (
        f"disagrees: keeping {p} of the tokens loses against all tokens and TIP's selection is no better than a "
        f"random {p} ({facts})"
    )


def start_runs(runs, start) -> list[dict]:
    return [r for r in runs if r.get("start", "cold") == start]


def _table(runs) -> tuple[list[str], dict, dict]:
    lines = [
        "| trained tokens | tutorial's prediction | JSD on own samples | sequence error | token error "
        "| train seconds |",
        "|---|---|---|---|---|---|",
    ]
    div, tok = {}, {}
    for label, selection, f, rs in rows(runs):
        div[selection, f] = mean([r["own_jsd"] for r in rs])
        tok[selection, f] = mean([r["token_error"] for r in rs])
        lines.append(
            f"| {label} | {TIP_PRED[selection]} | {fmt([r['own_jsd'] for r in rs], 4)} | "
            f"{fmt([r['sequence_error'] for r in rs])} | {fmt([r['token_error'] for r in rs])} | "
            f"{fmt([r.get('train_seconds') for r in rs], 1)} |"
        )
    return lines, tok, div


def section(res, out, results=None):
    runs, T = res["runs"], res["T"]
    cold, warm = start_runs(runs, "cold"), start_runs(runs, "warm")
    n = len({(r.get("teacher_seed", 0), r["seed"]) for r in cold})
    lines = [
        "## 5. TIP: fraction of tokens trained",
        "",
        (
            f"Chain task, T = {T}, GKD λ = 1, JSD(β = 0.5); n = {n} runs per row (mean [90 % bootstrap interval]). "
            "**TIP top f**: TokenImportance(top_fraction) trains only "
            "the share f of each micro-batch's completion tokens with the highest score (1 − H_T / log V) · D (the "
            "tutorial's: teacher confident, student off). **random f**, the control: the same share of tokens, "
            "chosen uniformly at random (RandomTokenImportance in `trl_opd_lab/controls.py`). Both rescale the "
            "kept tokens' weights to mean 1. All tokens is the ablation's (JSD, λ = 1) run. JSD to the teacher is "
            "measured on the student's own samples, outside the trainer. Train seconds: the cost of each setting "
            "(the top-f selection skips the backward pass of the other tokens' head projections)."
        ),
        "",
        "**Cold start** (a fresh student):",
        "",
    ]
    table, tok, div = _table(cold)
    lines += table
    text = verdict(tok, div)
    if warm:
        by_teacher = res.get("by_teacher") or {"0": res}
        starts = [s for part in by_teacher.values() for s in (part.get("warm_start") or {}).values()]
        table, wtok, wdiv = _table(warm)
        lines += [
            "",
            (
                f"**Warm start**: the student first trained by SFT for {res.get('warm_steps')} steps (token error "
                f"{fmt([s['token_error'] for s in starts])} before distillation), then the same GKD:"
            ),
            "",
            *table,
        ]
        warm_text = verdict(wtok, wdiv)
        short = f"cold start: {text.split(':')[0]}; warm start: {warm_text.split(':')[0]}"
        text = "cold start: " + text + "; warm start: " + warm_text
    else:
        short = text.split(":")[0]
    lines += [
        "",
        (
            "Tutorial's prediction: the informative tokens carry the signal: keeping a fraction of them loses little "
            "(so TIP's selection should stay close to all tokens, and beat a random selection of the same size)."
        ),
        "",
        *verdict_lines(text, "tip"),
    ]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (start, rs_all) in zip(axes, (("cold", cold), ("warm", warm)), strict=True):
        for k, (label, _selection, _f, rs) in enumerate(rows(rs_all)):
            ys = [r["token_error"] for r in rs]
            ax.scatter([k] * len(ys), ys, color="0.5", s=12, zorder=2)
            ax.plot([k - 0.25, k + 0.25], [mean(ys)] * 2, color="C0", lw=2, zorder=3)
        ax.set_xticks(range(len(rows(rs_all))), [label for label, *_ in rows(rs_all)], rotation=20, fontsize=7)
        ax.set_ylabel("token error"), ax.set_title(f"{start} start: per-run points, bar = mean")
    save(fig, out, "tip")
    return lines, {"verdict": text, "short": short}


EXPERIMENT = Experiment(NAME, run, section, count_runs)
