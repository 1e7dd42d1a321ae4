"""Experiment 1: error compounding. One student per (λ, seed) distilled with FKL on T_max-digit chain completions at
equal steps and tokens; its rule errors on its own rollouts are counted digit by digit, so the total over the first
T digits is the DAgger cost at horizon T (the seed: ≈ εT²/2 off-policy, εT on-policy)."""

from __future__ import annotations

from ..plots import pyplot, save, verdict_lines
from ..settings import LAMBDAS
from ..stats import EPS, fmt, mean, mean_std, slope
from .base import Experiment


NAME = "compounding"


def run(lab, earlier=None, lambdas=LAMBDAS) -> dict:
    size = lab.size
    H = size.horizons
    T_max = max(H)
    runs = []
    for seed in size.seeds:
        for lmbda in lambdas:
            record, student = lab.gkd_chain(
                T_max,
                lmbda,
                "fkl",
                seed,
                steps=size.compounding_steps,
                lr=size.compounding_lr,
                batch=size.compounding_batch,
            )
            prompts, texts = lab.rollouts(student, T_max, seed)
            profile = lab.chain.error_profile(prompts, texts, T_max)
            record["profile"] = profile
            # aligned with ``horizons``
            record["total_errors"] = [sum(profile[:h]) for h in H]
            record["sequence_error"] = [lab.chain.score(prompts, texts, h)["sequence_error"] for h in H]
            runs.append(record)
            lab.tick(f"compounding λ={lmbda} seed={seed}")
    return {
        "T_max": T_max,
        "horizons": H,
        "runs": runs,
        "eps": EPS,
        "steps": size.compounding_steps,
        "batch": size.compounding_batch,
        "student": size.student,
    }


def count_runs(size, experiments) -> int:
    return len(size.seeds) * len(LAMBDAS)


def runs_at(res, lmbda) -> list[dict]:
    return [r for r in res["runs"] if r["lmbda"] == lmbda]


def exponents(res, lmbda, metric="total_errors") -> list[float]:
    """Per seed (in run order): the growth exponent of ``metric`` over the horizons (log-log slope)."""
    return [slope(res["horizons"], r[metric]) for r in runs_at(res, lmbda)]


def verdict(res) -> str:
    off, on = exponents(res, 0.0), exponents(res, 1.0)
    m_off, m_on = mean(off), mean(on)
    n_order = sum(o > n + 0.2 for o, n in zip(off, on, strict=True))
    T_max = max(res["horizons"])
    last = res["horizons"].index(T_max)
    at = {lm: {r["seed"]: r["total_errors"][last] for r in runs_at(res, lm)} for lm in (0.0, 1.0)}
    seeds = sorted(set(at[0.0]) & set(at[1.0]))
    wins = sum(at[1.0][s] < at[0.0][s] for s in seeds)
    detail = (
        f"exponent of total errors off-policy (λ=0) {m_off:.2f} vs on-policy (λ=1) {m_on:.2f}, off-policy "
        f"steeper by > 0.2 on {n_order}/{len(off)} seeds; at T={T_max} on-policy makes fewer errors on "
        f"{wins}/{len(seeds)} seeds ({mean([at[1.0][s] for s in seeds]):.2f} vs "
        f"{mean([at[0.0][s] for s in seeds]):.2f})"
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


def section(res, out, results=None):
    H, T_max = res["horizons"], res["T_max"]
    st = res["student"]
    lines = [
        "## 1. Error compounding (GKD with FKL, chain task)",
        "",
        (
            f"One student per (λ, seed) (1 layer, hidden {st['hidden_size']}) distilled from the chain teacher on "
            f"{T_max}-digit completions: {res['steps']} GKD steps of {res['batch']} rows for every λ (equal steps, "
            "equal completion tokens). λ = 0 trains on the dataset's (teacher's) sequences, λ = 1 on the student's own "
            "samples. Each student then samples (temperature 1) its own rollouts; a digit is an error when it breaks "
            "the rule given the two digits before it (the model's own), the per-step cost of the DAgger bound. **Total "
            'errors at T** = errors among the first T digits (the seed\'s "total error"); **sequence error** = share '
            "of rollouts with any error among the first T."
        ),
        "",
        "| λ | " + " | ".join(f"total errors T={h}" for h in H) + " |",
        "|---|" + "---|" * len(H),
    ]
    for lmbda in LAMBDAS:
        rs = runs_at(res, lmbda)
        lines.append(
            f"| {lmbda} | " + " | ".join(fmt([r["total_errors"][i] for r in rs]) for i in range(len(H))) + " |"
        )
    lines += [
        "",
        "| λ | " + " | ".join(f"seq. error T={h}" for h in H) + " | error rate, first quarter of the digits "
        "| error rate, last quarter |",
        "|---|" + "---|" * (len(H) + 2),
    ]
    q = max(1, T_max // 4)
    for lmbda in LAMBDAS:
        rs = runs_at(res, lmbda)
        lines.append(
            f"| {lmbda} | "
            + " | ".join(fmt([r["sequence_error"][i] for r in rs]) for i in range(len(H)))
            + f" | {fmt([sum(r['profile'][:q]) / q for r in rs])} | {fmt([sum(r['profile'][-q:]) / q for r in rs])} |"
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
    for lmbda, pred in ((0.0, "2 (O(εT²))"), (0.5, "1 (O(εT))"), (1.0, "1 (O(εT))")):
        total = exponents(res, lmbda)
        lines.append(
            f"| {lmbda} | {pred} | {fmt(total, 2)} | "
            f"{', '.join(f'{v:.2f}' for v in total)} | {fmt(exponents(res, lmbda, 'sequence_error'), 2)} |"
        )
    text = verdict(res)
    lines += [
        "",
        (
            "Sequence error cannot show compounding: the first error comes at the same time whatever follows it, so "
            "it grows like 1 − (1 − ε)^T ≤ εT for every λ; the total errors carry the DAgger effect (an off-policy "
            "student that slipped once keeps erring: the per-step error rate rises along its rollout)."
        ),
        "",
        *verdict_lines(text, "compounding"),
    ]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for lmbda in LAMBDAS:
        rs = runs_at(res, lmbda)
        ms = [mean_std([r["total_errors"][i] for r in rs]) for i in range(len(H))]
        axes[0].errorbar(
            H, [max(m, 1e-3) for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label=f"λ={lmbda}"
        )
        prof = [mean([r["profile"][t] for r in rs]) for t in range(T_max)]
        axes[1].plot(range(1, T_max + 1), prof, label=f"λ={lmbda}")
    ref = mean([r["total_errors"][0] for r in runs_at(res, 0.0)]) or 1e-2
    axes[0].plot(H, [ref * (h / H[0]) ** 2 for h in H], "k--", lw=0.8, label="∝ T²")
    axes[0].plot(H, [ref * h / H[0] for h in H], "k:", lw=0.8, label="∝ T")
    axes[0].set_xscale("log"), axes[0].set_yscale("log"), axes[0].set_xlabel("T (horizon)")
    axes[0].set_title("total errors in the first T digits"), axes[0].legend(fontsize=7)
    axes[1].set_xlabel("digit t"), axes[1].set_ylabel("P(digit t breaks the rule)")
    axes[1].set_title("error along the rollout"), axes[1].legend(fontsize=7)
    save(fig, out, "compounding")
    return lines, {"verdict": text}


EXPERIMENT = Experiment(NAME, run, section, count_runs)
