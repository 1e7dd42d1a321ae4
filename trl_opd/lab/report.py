"""``report.md``, ``results.json`` and one PNG per experiment from :func:`trl_opd.lab.experiments.run_lab`'s results.

Every verdict is computed from the numbers (thresholds in the functions below), never written in advance."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from .experiments import mean_std


LAMBDAS = (0.0, 0.5, 1.0)


def _fmt(values, digits=3):
    m, s = mean_std(values)
    return "n/a" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def _mean(values):
    return mean_std(values)[0]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _verdict_lines(verdict: str, name: str) -> list[str]:
    """The closing lines of a section: the verdict and the section's plot."""
    return [f"**Verdict:** {verdict}.", "", f"![{name}]({name}.png)", ""]


def _save(plt, fig, out, name: str) -> None:
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=90)
    plt.close(fig)


def compounding_verdict(res) -> str:
    ex = res["exponents"]
    off, on = ex["0.0"]["total_errors"], ex["1.0"]["total_errors"]
    m_off, m_on = _mean(off), _mean(on)
    n_order = sum(o > n + 0.2 for o, n in zip(off, on, strict=True))
    T_max = str(max(res["horizons"]))
    runs = res["runs"]
    at = {lm: {r["seed"]: r["total_errors"][T_max] for r in runs if r["lmbda"] == lm} for lm in (0.0, 1.0)}
    seeds = sorted(set(at[0.0]) & set(at[1.0]))
    wins = sum(at[1.0][s] < at[0.0][s] for s in seeds)
    detail = (
        f"exponent of total errors off-policy (λ=0) {m_off:.2f} vs on-policy (λ=1) {m_on:.2f}, off-policy "
        f"steeper by > 0.2 on {n_order}/{len(off)} seeds; at T={T_max} on-policy makes fewer errors on "
        f"{wins}/{len(seeds)} seeds ({_mean([at[1.0][s] for s in seeds]):.2f} vs "
        f"{_mean([at[0.0][s] for s in seeds]):.2f})"
    )
    if n_order == len(off) and m_off >= 1.7 and m_on <= 1.3:
        return "agrees: " + detail
    if n_order == len(off) and m_off > 1.15 and m_on <= 1.3:
        return (
            "partly agrees: off-policy errors compound super-linearly and on-policy ones do not, but the "
            f"off-policy growth is below the seed's T² ({detail})"
        )
    if m_off <= m_on:
        return "disagrees: " + detail
    return "inconclusive at this size: " + detail


def _compounding(res, out):
    runs, H, T_max = res["runs"], res["horizons"], res["T_max"]
    st = res["student"]
    lines = [
        "## 1. Error compounding (GKD with FKL, chain task)",
        "",
        (
            f"One student per (λ, seed) (1 layer, hidden {st['hidden_size']}) distilled from the chain teacher on "
            f"{T_max}-digit completions: {res['steps']} GKD steps of {res['batch']} rows for every λ (equal steps, equal "
            "completion tokens). λ = 0 trains on the dataset's (teacher's) sequences, λ = 1 on the student's own samples. "
            "Each student then samples (temperature 1) its own rollouts; a digit is an error when it breaks the rule "
            "given the two digits before it (the model's own), the per-step cost of the DAgger bound. **Total errors at "
            'T** = errors among the first T digits (the seed\'s "total error"); **sequence error** = share of rollouts '
            "with any error among the first T."
        ),
        "",
        "| λ | " + " | ".join(f"total errors T={h}" for h in H) + " |",
        "|---|" + "---|" * len(H),
    ]
    for lmbda in LAMBDAS:
        rs = [r for r in runs if r["lmbda"] == lmbda]
        lines.append(f"| {lmbda} | " + " | ".join(_fmt([r["total_errors"][str(h)] for r in rs]) for h in H) + " |")
    lines += [
        "",
        "| λ | " + " | ".join(f"seq. error T={h}" for h in H) + " | error rate, first quarter of the digits "
        "| error rate, last quarter |",
        "|---|" + "---|" * (len(H) + 2),
    ]
    q = max(1, T_max // 4)
    for lmbda in LAMBDAS:
        rs = [r for r in runs if r["lmbda"] == lmbda]
        lines.append(
            f"| {lmbda} | "
            + " | ".join(_fmt([r["sequence_error"][str(h)] for r in rs]) for h in H)
            + f" | {_fmt([sum(r['profile'][:q]) / q for r in rs])} | {_fmt([sum(r['profile'][-q:]) / q for r in rs])} |"
        )
    lines += [
        "",
        (
            f"Growth exponent: least-squares slope of log(error) on log(T) over T = {H}, per seed (errors "
            f"floored at {res['eps']}); mean ± std over seeds."
        ),
        "",
        "| λ | seed's prediction | exponent of total errors | per seed | exponent of sequence error |",
        "|---|---|---|---|---|",
    ]
    ex = res["exponents"]
    for lmbda, pred in (
        ("0.0", "2 (O(εT²))"),
        ("0.5", "1 (O(εT))"),
        ("1.0", "1 (O(εT))"),
    ):
        lines.append(
            f"| {lmbda} | {pred} | {_fmt(ex[lmbda]['total_errors'], 2)} | "
            f"{', '.join(f'{v:.2f}' for v in ex[lmbda]['total_errors'])} | {_fmt(ex[lmbda]['sequence_error'], 2)} |"
        )
    verdict = compounding_verdict(res)
    lines += [
        "",
        (
            "Sequence error cannot show compounding: the first error comes at the same time whatever follows it, so "
            "it grows like 1 − (1 − ε)^T ≤ εT for every λ; the total errors carry the DAgger effect (an off-policy "
            "student that slipped once keeps erring: the per-step error rate rises along its rollout)."
        ),
        "",
        *_verdict_lines(verdict, "compounding"),
    ]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for lmbda in LAMBDAS:
        rs = [r for r in runs if r["lmbda"] == lmbda]
        ms = [mean_std([r["total_errors"][str(h)] for r in rs]) for h in H]
        axes[0].errorbar(
            H,
            [max(m, 1e-3) for m, _ in ms],
            yerr=[s for _, s in ms],
            marker="o",
            capsize=3,
            label=f"λ={lmbda}",
        )
        prof = [_mean([r["profile"][t] for r in rs]) for t in range(T_max)]
        axes[1].plot(range(1, T_max + 1), prof, label=f"λ={lmbda}")
    ref = _mean([r["total_errors"][str(H[0])] for r in runs if r["lmbda"] == 0.0]) or 1e-2
    axes[0].plot(H, [ref * (h / H[0]) ** 2 for h in H], "k--", lw=0.8, label="∝ T²")
    axes[0].plot(H, [ref * h / H[0] for h in H], "k:", lw=0.8, label="∝ T")
    (
        axes[0].set_xscale("log"),
        axes[0].set_yscale("log"),
        axes[0].set_xlabel("T (horizon)"),
    )
    axes[0].set_title("total errors in the first T digits"), axes[0].legend(fontsize=7)
    (
        axes[1].set_xlabel("digit t"),
        axes[1].set_ylabel("P(digit t breaks the rule)"),
        axes[1].set_title("error along the rollout"),
    )
    axes[1].legend(fontsize=7)
    _save(plt, fig, out, "compounding")
    return lines, {"verdict": verdict}


MODE_PRED = {
    "fkl": "covers both (mass between)",
    "jsd": "balanced",
    "rkl": "one mode",
    "minillm": "one mode",
}


def _one_mode(rs) -> bool:
    return bool(rs) and all(r["top_mode"] >= 0.8 and min(r["mode_1"], r["mode_2"]) <= 0.05 for r in rs)


def _covers(rs) -> bool:
    return bool(rs) and all(min(r["mode_1"], r["mode_2"]) >= 0.05 and r["between"] > r["top_mode"] for r in rs)


def modes_verdict(res) -> str:
    runs = res["runs"]
    by = {m: [r for r in runs if r["method"] == m] for m in MODE_PRED}
    fkl, rkl, mini = _covers(by["fkl"]), _one_mode(by["rkl"]), _one_mode(by["minillm"])
    mean = lambda m, k: _mean([r[k] for r in by[m]])
    facts = (
        f"FKL: modes {mean('fkl', 'mode_1'):.2f} / {mean('fkl', 'mode_2'):.2f}, between {mean('fkl', 'between'):.2f}; "
        f"MiniLLM: top mode {mean('minillm', 'top_mode'):.2f}, between {mean('minillm', 'between'):.2f}; "
        f"GKD RKL: top mode {mean('rkl', 'top_mode'):.2f}, between {mean('rkl', 'between'):.2f}, first token "
        f"p(a) {mean('rkl', 'first_1'):.2f}"
    )
    if fkl and rkl and mini:
        return "agrees (FKL covers both modes and the space between; RKL and MiniLLM lock onto one mode): " + facts
    if fkl and mini:
        return (
            "partly agrees: FKL covers both modes and puts most mass between them, MiniLLM (sequence-level RKL) "
            "locks onto one mode on every seed, but GKD's token-level RKL does not (its first token matches the "
            "teacher's 50/50 split; the choice of mode is a sequence-level effect): " + facts
        )
    if fkl or mini:
        return "partly agrees: " + facts
    return "disagrees or inconclusive at this size: " + facts


def _modes(res, out, teacher=None):
    runs = res["runs"]
    methods = [m for m in MODE_PRED if any(r["method"] == m for r in runs)]
    lines = [
        "## 2. Mode covering vs mode seeking (bimodal task)",
        "",
        (
            'Teacher: "?" → "ab<eos>" or "ba<eos>" (50 % each). Student: a bigram model (0-layer llama: '
            "embedding → norm → head, hidden 16), which fits either mode exactly but not their mixture (after `b` it "
            "must say `<eos>` in one mode and `a` in the other). Exact probability of each whole completion; between = "
            "everything else; p(a) = probability of the first token `a`. For reference, the bigram that best fits the "
            "mixture (the FKL optimum) has 0.125 on each mode and 0.75 between; a one-mode bigram has 1.0 on its mode."
        ),
        "",
        "| method | seed's prediction | mode 1 (ab) | mode 2 (ba) | top mode | between | p(a) first |",
        "|---|---|---|---|---|---|---|",
    ]
    if teacher:
        lines.append(
            f"| teacher | both modes | {teacher['mode_1']:.3f} | {teacher['mode_2']:.3f} | "
            f"{teacher['top_mode']:.3f} | {teacher['between']:.3f} | {teacher['first_1']:.3f} |"
        )
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        lines.append(
            f"| {m} | {MODE_PRED[m]} | "
            + " | ".join(_fmt([r[k] for r in rs]) for k in ("mode_1", "mode_2", "top_mode", "between", "first_1"))
            + " |"
        )
    verdict = modes_verdict(res) if set(methods) == set(MODE_PRED) else "n/a (not every method ran)"
    lines += [
        "",
        (
            "Which mode MiniLLM keeps differs by seed (the table's mode columns average over seeds; the top-mode "
            "column does not)."
        ),
        "",
        *_verdict_lines(verdict, "modes"),
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0.0] * len(methods)
    for key, label in (
        ("top_mode", "top mode"),
        ("mode_2", "other mode"),
        ("between", "between"),
    ):
        if key == "mode_2":
            vals = [_mean([min(r["mode_1"], r["mode_2"]) for r in runs if r["method"] == m]) for m in methods]
        else:
            vals = [_mean([r[key] for r in runs if r["method"] == m]) for m in methods]
        ax.bar(methods, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    (
        ax.set_ylabel("probability"),
        ax.legend(fontsize=7),
        ax.set_title("mass on each mode (bigram student)"),
    )
    _save(plt, fig, out, "modes")
    return lines, {"verdict": verdict}


def main_effects(runs, key="token_error", seed=None):
    """Range of the marginal means of ``key`` over λ and over the divergence."""
    rs = [r for r in runs if seed is None or r["seed"] == seed]
    divs = sorted({r["divergence"] for r in rs})
    lams = sorted({r["lmbda"] for r in rs})
    cell = {
        (d, lam): _mean([r[key] for r in rs if r["divergence"] == d and r["lmbda"] == lam])
        for d in divs
        for lam in lams
    }
    by_lam = [_mean([cell[d, lam] for d in divs]) for lam in lams]
    by_div = [_mean([cell[d, lam] for lam in lams]) for d in divs]
    return max(by_lam) - min(by_lam), max(by_div) - min(by_div)


def _ablation(res, out):
    runs, T = res["runs"], res["T"]
    divs = ("fkl", "rkl", "jsd")
    lines = [
        "## 3. GKD ablation: λ against divergence",
        "",
        (
            f"Chain task, T = {T}; student 1 layer, hidden {res['student']['hidden_size']}, {res['steps']} GKD steps per "
            "cell. Each cell: token error (share of digits that break the rule on the student's own rollouts), "
            "sequence error in brackets."
        ),
        "",
        "| divergence | " + " | ".join(f"λ={lam}" for lam in LAMBDAS) + " |",
        "|---|---|---|---|",
    ]

    def cell(d, lam, k):
        return [r[k] for r in runs if r["divergence"] == d and r["lmbda"] == lam]

    for d in divs:
        lines.append(
            f"| {d} | "
            + " | ".join(
                f"{_fmt(cell(d, lam, 'token_error'))} ({_fmt(cell(d, lam, 'sequence_error'))})" for lam in LAMBDAS
            )
            + " |"
        )
    lam_effect, div_effect = main_effects(runs)
    seeds = sorted({r["seed"] for r in runs})
    per_seed = [main_effects(runs, seed=s) for s in seeds]
    n_lam = sum(le > de for le, de in per_seed)
    if lam_effect > div_effect + 0.02 and n_lam == len(seeds):
        verdict = f"agrees: λ moves the token error by {lam_effect:.3f}, the divergence by {div_effect:.3f} (λ larger on {n_lam}/{len(seeds)} seeds)"
    elif div_effect > lam_effect + 0.02 and n_lam == 0:
        verdict = f"disagrees: the divergence moves the token error by {div_effect:.3f}, λ by {lam_effect:.3f}"
    else:
        verdict = (
            f"inconclusive at this size: λ effect {lam_effect:.3f}, divergence effect {div_effect:.3f}, λ larger "
            f"on {n_lam}/{len(seeds)} seeds"
        )
    lines += [
        "",
        (
            f"Main effects on token error (range of the marginal means over the other factor): λ {lam_effect:.3f}, "
            f"divergence {div_effect:.3f}. Seed's prediction: the sampling distribution (λ) matters more than the "
            "divergence."
        ),
        "",
        *_verdict_lines(verdict, "ablation"),
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for d in divs:
        ms = [mean_std(cell(d, lam, "token_error")) for lam in LAMBDAS]
        ax.errorbar(
            LAMBDAS,
            [m for m, _ in ms],
            yerr=[s for _, s in ms],
            marker="o",
            capsize=3,
            label=d,
        )
    (
        ax.set_xlabel("λ"),
        ax.set_ylabel("token error"),
        ax.legend(),
        ax.set_title(f"GKD ablation, T={T}"),
    )
    _save(plt, fig, out, "ablation")
    return lines, {
        "verdict": verdict,
        "lambda_effect": lam_effect,
        "divergence_effect": div_effect,
    }


def spin_verdict(tok_means) -> str:
    gains = [a - b for a, b in itertools.pairwise(tok_means)]
    if not gains:
        return "inconclusive (no round ran)"
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


def _spin(res, out):
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
        tok_means.append(_mean([r["token_error"] for r in rs]))
        sat = "n/a" if k == 0 else f"{sum(bool(r.get('saturated')) for r in rs)}/{len(rs)}"
        lines.append(
            f"| {k} | {_fmt([r['sequence_error'] for r in rs])} | {_fmt([r['token_error'] for r in rs])} | "
            f"{_fmt([r.get('reward_margin') for r in rs])} | {_fmt([r.get('kl') for r in rs])} | {sat} |"
        )
    verdict = spin_verdict(tok_means)
    lines += [
        "",
        "Seed's prediction: fast improvement, then flat (saturation).",
        "",
        *_verdict_lines(verdict, "spin"),
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in runs:
        ax.plot(
            [x["round"] for x in r["rounds"]],
            [x["token_error"] for x in r["rounds"]],
            color="0.7",
            lw=0.8,
        )
    ax.plot(range(n), tok_means, marker="o", color="C0", label="mean")
    (
        ax.set_xlabel("round (0 = SFT start)"),
        ax.set_ylabel("token error"),
        ax.set_title("SPIN"),
        ax.legend(),
    )
    _save(plt, fig, out, "spin")
    return lines, {"verdict": verdict, "token_error_by_round": tok_means}


TIP_MARGIN = 0.03  # token error: closer than this counts as "the same"


def _pct(fraction) -> str:
    return f"{fraction * 100:.0f} %"


def _tip_rows(runs):
    """``[(label, selection, kept fraction, runs)]``: all tokens, then TIP's top and the random control by fraction.
    Runs of an older lab (no ``selection``) are TIP's top selection, or all tokens at fraction 1."""

    def sel(r):
        return r.get("selection") or ("all" if r["keep_fraction"] >= 1.0 else "top")

    rows = []
    for f in sorted({r["keep_fraction"] for r in runs}, reverse=True):
        for selection, label in (
            ("all", "all tokens"),
            ("top", f"TIP top {_pct(f)}"),
            ("random", f"random {_pct(f)}"),
        ):
            rs = [r for r in runs if r["keep_fraction"] == f and sel(r) == selection]
            if rs:
                rows.append((label, selection, f, rs))
    return rows


def tip_verdict(tok, div=None) -> str:
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


TIP_PRED = {
    "all": "reference",
    "top": "close to all tokens",
    "random": "worse than TIP top (implied)",
}


def _tip(res, out):
    runs, T = res["runs"], res["T"]
    rows = _tip_rows(runs)
    lines = [
        "## 5. TIP: fraction of tokens trained",
        "",
        (
            f"Chain task, T = {T}, GKD λ = 1, JSD(β = 0.5). **TIP top f**: TokenImportance(top_fraction) trains only "
            "the share f of each micro-batch's completion tokens with the highest score (1 − H_T / log V) · D (the "
            "tutorial's: teacher confident, student off). **random f**, the control: the same share of tokens, "
            "chosen uniformly at random (RandomTokenImportance in `trl_opd/lab/experiments.py`). Both rescale the "
            "kept tokens' weights to mean 1. All tokens is the ablation's (JSD, λ = 1) run. JSD to the teacher is "
            "measured on the student's own samples, outside the trainer."
        ),
        "",
        "| trained tokens | seed's prediction | JSD on own samples | sequence error | token error |",
        "|---|---|---|---|---|",
    ]
    div, tok = {}, {}
    for label, selection, f, rs in rows:
        div[selection, f] = _mean([r["own_jsd"] for r in rs])
        tok[selection, f] = _mean([r["token_error"] for r in rs])
        lines.append(
            f"| {label} | {TIP_PRED[selection]} | {_fmt([r['own_jsd'] for r in rs], 4)} | "
            f"{_fmt([r['sequence_error'] for r in rs])} | {_fmt([r['token_error'] for r in rs])} |"
        )
    verdict = tip_verdict(tok, div)
    lines += [
        "",
        (
            "Seed's prediction: the informative tokens carry the signal: keeping a fraction of them loses little "
            "(so TIP's selection should stay close to all tokens, and beat a random selection of the same size)."
        ),
        "",
        *_verdict_lines(verdict, "tip"),
    ]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for selection, label in (
        ("top", "TIP top fraction"),
        ("random", "random fraction"),
    ):
        pts = [(f, rs) for _, s, f, rs in rows if s in (selection, "all")]
        if not any(s == selection for _, s, _, _ in rows):
            continue
        for ax, key in zip(axes, ("token_error", "own_jsd"), strict=True):
            ms = [mean_std([r[key] for r in rs]) for _, rs in pts]
            ax.errorbar(
                [f for f, _ in pts],
                [m for m, _ in ms],
                yerr=[s for _, s in ms],
                marker="o",
                capsize=3,
                label=label,
            )
    for ax, ylabel in zip(axes, ("token error", "JSD on own samples"), strict=True):
        ax.set_xlabel("kept fraction"), ax.set_ylabel(ylabel), ax.legend(fontsize=7)
    axes[0].set_title("TIP vs random selection")
    _save(plt, fig, out, "tip")
    return lines, {"verdict": verdict}


def write_report(results: dict, out: str | Path, command: str = "trl-opd lab") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = results["size"]
    seeds = size["seeds"]
    cheap = [s for s in size.get("cheap_seeds", []) if s not in seeds]
    lines = [
        "# OPD lab report",
        "",
        f"Command: `{command}` — size `{size['name']}`; seeds {seeds} (modes and SPIN also "
        f"{cheap}); experiments took {sum(results['seconds'].values()):.0f} s"
        + (
            f" of compute, {results['wall_seconds']:.0f} s of wall time with the teachers (compounding runs in a"
            " second process when there are two cores)"
            if "wall_seconds" in results
            else ""
        )
        + ". Every table: mean ± std over seeds.",
        "",
    ]
    t = results.get("teachers", {})
    if "chain" in t:
        c = t["chain"]
        lines += [
            f"Chain teacher (2 layers, hidden 64, {c['params']} parameters, {c['steps']} steps on {c['T']}-digit "
            "sequences with 15 % corrupted digits): own total errors "
            + ", ".join(f"{k} {v['total_errors']:.3f}" for k, v in c.items() if k.startswith("T="))
            + ".",
            "",
        ]
    verdicts = {}
    builders = {
        "compounding": lambda r: _compounding(r, out),
        "modes": lambda r: _modes(r, out, t.get("bimodal")),
        "ablation": lambda r: _ablation(r, out),
        "spin": lambda r: _spin(r, out),
        "tip": lambda r: _tip(r, out),
    }
    summary = []
    for name, build in builders.items():
        if name in results:
            section, verdicts[name] = build(results[name])
            lines += section
            summary.append(f"| {name} | {verdicts[name]['verdict'].split(':')[0]} |")
    if summary:
        i = next(k for k, line in enumerate(lines) if line.startswith("## "))
        lines = lines[:i] + ["| experiment | verdict |", "|---|---|", *summary, ""] + lines[i:]
    results["verdicts"] = verdicts
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    return out / "report.md"
