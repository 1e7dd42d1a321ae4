"""``report.md``, ``results.json`` and one PNG per experiment from :func:`trl_opd.lab.experiments.run_lab`'s results."""

from __future__ import annotations

import json
from pathlib import Path

from .experiments import mean_std


def _fmt(values, digits=3):
    m, s = mean_std(values)
    return "n/a" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _compounding(res, size, out):
    runs, Ts = res["runs"], size["chain_T"]
    lines = ["## 1. Error compounding (GKD, FKL, chain task)", "",
             "Student (1 layer, hidden 32, 4 heads) distilled from the chain teacher with λ = 0 (off-policy), 0.5 and 1 "
             "(on-policy); evaluated by sampling at temperature 1. Sequence error = share of completions with any wrong "
             "digit; token error = share of digits that break the rule given the two symbols before them; Hamming = "
             "wrong digits against the reference continuation (the DAgger cost).", "",
             "| λ | " + " | ".join(f"seq. error T={T}" for T in Ts) + " | " + " | ".join(f"token error T={T}" for T in Ts) + " |",
             "|---|" + "---|" * (2 * len(Ts))]
    for lmbda in (0.0, 0.5, 1.0):
        cell = lambda T, k: _fmt([r[k] for r in runs if r["T"] == T and r["lmbda"] == lmbda])  # noqa: E731
        lines.append(f"| {lmbda} | " + " | ".join(cell(T, "sequence_error") for T in Ts) + " | "
                     + " | ".join(cell(T, "token_error") for T in Ts) + " |")
    lines += ["", f"Growth exponents: least-squares slope of log(error) vs log(T) per seed (errors floored at "
              f"{res['eps']}).", "",
              "| λ | seed's prediction | exponent of sequence error | exponent of Hamming errors |", "|---|---|---|---|"]
    ex = res["exponents"]
    for lmbda, pred in (("0.0", "2 (O(εT²))"), ("0.5", "1 (O(εT))"), ("1.0", "1 (O(εT))")):
        lines.append(f"| {lmbda} | {pred} | {_fmt(ex[lmbda]['sequence_error'], 2)} | {_fmt(ex[lmbda]['hamming'], 2)} |")
    off, on = mean_std(ex["0.0"]["hamming"])[0], mean_std(ex["1.0"]["hamming"])[0]
    per_seed = list(zip(ex["0.0"]["hamming"], ex["1.0"]["hamming"], strict=True))
    seq_max = max(r["sequence_error"] for r in runs)
    if seq_max > 0.95 and min(r["sequence_error"] for r in runs if r["T"] == max(Ts)) > 0.95:
        verdict = "inconclusive at this size (sequence error saturates near 1 at the longest T)"
    elif len({o > n for o, n in per_seed}) > 1:
        verdict = (f"inconclusive at this size: the seeds disagree on whether off-policy Hamming errors grow faster "
                   f"(per-seed exponents λ=0 {', '.join(f'{o:.2f}' for o, _ in per_seed)} vs λ=1 "
                   f"{', '.join(f'{n:.2f}' for _, n in per_seed)})")
    elif off > on + 0.1 and off > 1.5:
        verdict = "agrees (off-policy grows faster, super-linearly)"
    elif off > on + 0.1:
        verdict = f"partly agrees: off-policy grows faster than on-policy ({off:.2f} vs {on:.2f}) but far below T²"
    else:
        verdict = f"disagrees: off-policy exponent {off:.2f} is not above on-policy {on:.2f}"
    T_max = max(Ts)
    at = {lm: {r["seed"]: r["sequence_error"] for r in runs if r["T"] == T_max and r["lmbda"] == lm} for lm in (0.0, 1.0)}
    seeds = sorted(set(at[0.0]) & set(at[1.0]))
    if seeds:
        wins = sum(at[1.0][s] < at[0.0][s] for s in seeds)
        verdict += (f"; at T={T_max} sequence error on-policy (λ=1) {mean_std([at[1.0][s] for s in seeds])[0]:.3f} vs "
                    f"off-policy (λ=0) {mean_std([at[0.0][s] for s in seeds])[0]:.3f}, on-policy lower on {wins}/"
                    f"{len(seeds)} seeds")
    lines += ["", f"**Verdict:** {verdict}.", "", "![compounding](compounding.png)", ""]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for lmbda in (0.0, 0.5, 1.0):
        for ax, key in zip(axes, ("sequence_error", "hamming"), strict=True):
            ms = [mean_std([r[key] for r in runs if r["T"] == T and r["lmbda"] == lmbda]) for T in Ts]
            ax.errorbar(Ts, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label=f"λ={lmbda}")
            ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("T"), ax.set_title(key.replace("_", " "))
    axes[0].legend()
    fig.tight_layout(), fig.savefig(out / "compounding.png", dpi=90), plt.close(fig)
    return lines, {"verdict": verdict}


def _modes(res, out):
    runs = res["runs"]
    methods = ("fkl", "jsd", "rkl", "minillm")
    pred = {"fkl": "covers both (mass between)", "jsd": "balanced", "rkl": "one mode", "minillm": "one mode"}
    lines = ["## 2. Mode covering vs mode seeking (bimodal task)", "",
             f"Teacher: \"?\" → \"ab\" or \"ba\" (50 % each). Student: 1 layer, hidden {res['student_hidden_size']} "
             "(cannot fully represent the two modes). Exact probability of the first two tokens; top mode = the larger "
             "of the two.", "",
             "| method | seed's prediction | mode 1 (ab) | mode 2 (ba) | top mode | between |", "|---|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        lines.append(f"| {m} | {pred[m]} | " + " | ".join(_fmt([r[k] for r in rs]) for k in ("mode_1", "mode_2", "top_mode", "between")) + " |")
    between = {m: mean_std([r["between"] for r in runs if r["method"] == m])[0] for m in methods}
    asym = {m: abs(mean_std([r["mode_1"] - r["mode_2"] for r in runs if r["method"] == m])[0]) for m in methods}
    covers = between["fkl"] > max(between["rkl"], between["jsd"]) + 0.05
    picks_one = max(asym["rkl"], asym["minillm"]) > 0.2
    if covers and picks_one:
        verdict = "agrees (FKL spreads mass between the modes; RKL/MiniLLM concentrate on one)"
    elif covers:
        verdict = (f"partly agrees: FKL leaves the most mass between the modes ({between['fkl']:.2f} vs RKL "
                   f"{between['rkl']:.2f}), but RKL/MiniLLM do not pick one mode at this size (|mode 1 − mode 2| "
                   f"{asym['rkl']:.2f} / {asym['minillm']:.2f}; MiniLLM between {between['minillm']:.2f})")
    else:
        verdict = "disagrees or inconclusive at this size (FKL does not leave more mass between the modes)"
    lines += ["", f"**Verdict:** {verdict}.", "", "![modes](modes.png)", ""]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0.0] * len(methods)
    for key in ("mode_1", "mode_2", "between"):
        vals = [mean_std([r[key] for r in runs if r["method"] == m])[0] for m in methods]
        ax.bar(methods, vals, bottom=bottom, label=key)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("probability"), ax.legend(), ax.set_title("mass on each mode")
    fig.tight_layout(), fig.savefig(out / "modes.png", dpi=90), plt.close(fig)
    return lines, {"verdict": verdict}


def _ablation(res, out):
    runs, T = res["runs"], res["T"]
    divs, lams = ("fkl", "rkl", "jsd"), (0.0, 0.5, 1.0)
    lines = ["## 3. GKD ablation: λ against divergence", "",
             f"Chain task, T = {T}. Sequence error of sampled completions (on-policy divergence in brackets: the eval "
             "loss, the divergence on the student's own samples).", "",
             "| divergence | " + " | ".join(f"λ={lam}" for lam in lams) + " |", "|---|---|---|---|"]
    def cell(d, lam, k):
        return [r[k] for r in runs if r["divergence"] == d and r["lmbda"] == lam]
    for d in divs:
        lines.append(f"| {d} | " + " | ".join(f"{_fmt(cell(d, lam, 'sequence_error'))} ({_fmt(cell(d, lam, 'on_policy_divergence'))})" for lam in lams) + " |")
    err = lambda d, lam: mean_std(cell(d, lam, "token_error"))[0]  # noqa: E731
    lam_effect = max(sum(err(d, lam) for d in divs) / 3 for lam in lams) - min(sum(err(d, lam) for d in divs) / 3 for lam in lams)
    div_effect = max(sum(err(d, lam) for lam in lams) / 3 for d in divs) - min(sum(err(d, lam) for lam in lams) / 3 for d in divs)
    bigger = "λ" if lam_effect > div_effect else "the divergence"
    lines += ["", f"Main effects on token error (range of the marginal means): λ {lam_effect:.3f}, divergence "
              f"{div_effect:.3f}. Seed's prediction: the sampling distribution (λ) matters more than the divergence.", "",
              f"**Verdict:** {'agrees' if bigger == 'λ' else 'disagrees'} (here {bigger} matters more"
              f"{'; the effects are within 0.02, so inconclusive at this size' if abs(lam_effect - div_effect) < 0.02 else ''}).",
              "", "![ablation](ablation.png)", ""]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for d in divs:
        ms = [mean_std(cell(d, lam, "token_error")) for lam in lams]
        ax.errorbar(lams, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label=d)
    ax.set_xlabel("λ"), ax.set_ylabel("token error"), ax.legend(), ax.set_title(f"GKD ablation, T={T}")
    fig.tight_layout(), fig.savefig(out / "ablation.png", dpi=90), plt.close(fig)
    return lines, {"verdict": bigger, "lambda_effect": lam_effect, "divergence_effect": div_effect}


def _spin(res, out):
    runs, T = res["runs"], res["T"]
    n = max(len(r["rounds"]) for r in runs)
    lines = ["## 4. SPIN: improvement per round", "",
             f"Chain task, T = {T}; the student (from scratch) plays against its previous iterate, the dataset's "
             "completions are the 'chosen' side. Round 0 = before SPIN.", "",
             "| round | sequence error | token error | reward margin | KL(θ_k‖θ_k-1) |", "|---|---|---|---|---|"]
    tok_means = []
    for k in range(n):
        rs = [r["rounds"][k] for r in runs if len(r["rounds"]) > k]
        tok_means.append(mean_std([r["token_error"] for r in rs])[0])
        lines.append(f"| {k} | {_fmt([r['sequence_error'] for r in rs])} | {_fmt([r['token_error'] for r in rs])} | "
                     f"{_fmt([r.get('reward_margin') for r in rs])} | {_fmt([r.get('kl') for r in rs])} |")
    gains = [a - b for a, b in zip(tok_means, tok_means[1:])]
    if len(gains) >= 2 and gains[0] > 0 and gains[-1] < gains[0] / 2:
        verdict = "agrees (the first round gains most, later rounds flatten)"
    elif len(gains) >= 2:
        verdict = "inconclusive at this size (gains per round: " + ", ".join(f"{g:+.3f}" for g in gains) + ")"
    else:
        verdict = "inconclusive (one round)"
    lines += ["", "Seed's prediction: fast improvement, then flat (saturation).", "", f"**Verdict:** {verdict}.", "",
              "![spin](spin.png)", ""]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(n), tok_means, marker="o")
    ax.set_xlabel("round"), ax.set_ylabel("token error"), ax.set_title("SPIN")
    fig.tight_layout(), fig.savefig(out / "spin.png", dpi=90), plt.close(fig)
    return lines, {"verdict": verdict, "gains": gains}


def _tip(res, out):
    runs, T = res["runs"], res["T"]
    fr = sorted({r["keep_fraction"] for r in runs}, reverse=True)
    lines = ["## 5. TIP: fraction of tokens trained", "",
             f"Chain task, T = {T}, GKD λ = 1, JSD; TokenImportance(top_fraction) keeps the given share of tokens.", "",
             "| kept fraction | on-policy JSD | sequence error | token error |", "|---|---|---|---|"]
    div = {}
    for f in fr:
        rs = [r for r in runs if r["keep_fraction"] == f]
        div[f] = mean_std([r["on_policy_divergence"] for r in rs])[0]
        lines.append(f"| {f} | {_fmt([r['on_policy_divergence'] for r in rs], 4)} | {_fmt([r['sequence_error'] for r in rs])} | {_fmt([r['token_error'] for r in rs])} |")
    full, lowest = div[fr[0]], div[fr[-1]]
    half = div.get(0.5, lowest)
    verdict = ("agrees (training on half the tokens reaches within 10 % of the full divergence)" if half <= 1.1 * full
               else f"disagrees (keeping 50 % ends at {half:.4f} vs {full:.4f} with all tokens)")
    lines += ["", "Seed's prediction: the informative tokens carry the signal; keeping a fraction loses little.", "",
              f"**Verdict:** {verdict}.", "", "![tip](tip.png)", ""]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ms = [mean_std([r["on_policy_divergence"] for r in runs if r["keep_fraction"] == f]) for f in fr]
    ax.errorbar(fr, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3)
    ax.set_xlabel("kept fraction"), ax.set_ylabel("final on-policy JSD"), ax.set_title("TIP")
    fig.tight_layout(), fig.savefig(out / "tip.png", dpi=90), plt.close(fig)
    return lines, {"verdict": verdict}


def write_report(results: dict, out: str | Path, command: str = "trl-opd lab") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = results["size"]
    lines = ["# OPD lab report", "", f"Command: `{command}` — size `{size['name']}`, seeds {size['seeds']}; "
             f"total {sum(results['seconds'].values()):.0f} s. Every table: mean ± std over seeds.", ""]
    t = results.get("teachers", {})
    if "chain" in t:
        c = t["chain"]
        lines += [f"Chain teacher (2 layers, hidden 64, {c['params']} parameters, {c['steps']} steps): own sequence error "
                  + ", ".join(f"{k} {v['sequence_error']:.3f}" for k, v in c.items() if k.startswith("T=")) + ".", ""]
    if "bimodal" in t:
        b = t["bimodal"]
        lines += [f"Bimodal teacher: mass ab {b['mode_1']:.3f}, ba {b['mode_2']:.3f}, between {b['between']:.3f}.", ""]
    verdicts = {}
    builders = {"compounding": lambda r: _compounding(r, size, out), "modes": lambda r: _modes(r, out),
                "ablation": lambda r: _ablation(r, out), "spin": lambda r: _spin(r, out), "tip": lambda r: _tip(r, out)}
    for name, build in builders.items():
        if name in results:
            section, verdicts[name] = build(results[name])
            lines += section
    results["verdicts"] = verdicts
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    return out / "report.md"
