"""Experiment 2: mode covering vs mode seeking. A bigram student distilled from the bimodal teacher by GKD (FKL, JSD,
RKL, λ = 1) and by MiniLLM; the exact mass of each whole completion tells covering from seeking."""

from __future__ import annotations

import shutil
import tempfile
import time

from ..plots import pyplot, save, verdict_lines
from ..settings import MODE_METHODS
from ..stats import fmt, mean
from .base import Experiment


NAME = "modes"
MODE_PRED = {
    "fkl": "covers both (mass between)",
    "jsd": "balanced",
    "rkl": "one mode",
    "minillm": "one mode",
}


def run(lab, earlier=None, methods=MODE_METHODS, seeds=None) -> dict:
    from trl_opd import DistillationConfig, GKDTrainer, MiniLLMConfig, MiniLLMTrainer

    from ..context import quiet, training_args
    from ..tasks import make_student

    teacher = lab.bimodal_teacher()
    dataset = lab.bimodal.dataset()
    runs = []
    for seed in seeds or lab.size.all_seeds:
        for method in methods:
            # a bigram model: 0 transformer layers (embedding -> norm -> head); it fits one mode, not the mixture
            student = make_student(lab.tok, seed, hidden_size=16, num_layers=0, num_heads=1)
            common = training_args(
                tempfile.mkdtemp(),
                seed,
                max_steps=lab.size.modes_steps,
                per_device_train_batch_size=16,
                max_completion_length=4,
                learning_rate=lab.size.modes_lr,
            )
            if method == "minillm":
                trainer = MiniLLMTrainer(
                    model=student,
                    teacher_model=teacher,
                    args=MiniLLMConfig(**common, num_generations=8),
                    train_dataset=dataset.remove_columns("completion"),
                    processing_class=lab.tok,
                )
            else:
                trainer = GKDTrainer(
                    model=student,
                    teacher_model=teacher,
                    args=DistillationConfig(**common, lmbda=1.0, divergence=method, beta=0.5),
                    train_dataset=dataset,
                    processing_class=lab.tok,
                )
            start = time.perf_counter()
            quiet(trainer).train()
            seconds = time.perf_counter() - start
            shutil.rmtree(common["output_dir"], ignore_errors=True)
            runs.append(
                {"method": method, "seed": seed, "train_seconds": seconds, **lab.bimodal.mass(student, lab.tok)}
            )
            lab.tick(f"modes {method} seed={seed}")
    return {"runs": runs, "student": "bigram (0-layer llama, hidden 16)"}


def count_runs(size, experiments) -> int:
    return len(size.all_seeds) * len(MODE_METHODS)


def one_mode(rs) -> bool:
    """Every run keeps ≥ 0.8 on one mode and ≤ 0.05 on the other."""
    return bool(rs) and all(r["top_mode"] >= 0.8 and min(r["mode_1"], r["mode_2"]) <= 0.05 for r in rs)


def covers(rs) -> bool:
    """Every run keeps ≥ 0.05 on both modes and more mass between them than on the top mode."""
    return bool(rs) and all(min(r["mode_1"], r["mode_2"]) >= 0.05 and r["between"] > r["top_mode"] for r in rs)


def verdict(res) -> str:
    by = {m: [r for r in res["runs"] if r["method"] == m] for m in MODE_PRED}
    fkl, rkl, mini = covers(by["fkl"]), one_mode(by["rkl"]), one_mode(by["minillm"])

    def avg(method, key):
        return mean([r[key] for r in by[method]])

    facts = (
        f"FKL: modes {avg('fkl', 'mode_1'):.2f} / {avg('fkl', 'mode_2'):.2f}, between {avg('fkl', 'between'):.2f}; "
        f"MiniLLM: top mode {avg('minillm', 'top_mode'):.2f}, between {avg('minillm', 'between'):.2f}; "
        f"GKD RKL: top mode {avg('rkl', 'top_mode'):.2f}, between {avg('rkl', 'between'):.2f}, first token "
        f"p(a) {avg('rkl', 'first_1'):.2f}"
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


def section(res, out, results=None):
    runs = res["runs"]
    teacher = ((results or {}).get("teachers") or {}).get("bimodal")
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
        f"n = {len({r['seed'] for r in runs})} seeds per method (mean [90 % bootstrap interval]).",
        "",
        "| method | tutorial's prediction | mode 1 (ab) | mode 2 (ba) | top mode | between | p(a) first "
        "| train seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if teacher:
        lines.append(
            f"| teacher | both modes | {teacher['mode_1']:.3f} | {teacher['mode_2']:.3f} | "
            f"{teacher['top_mode']:.3f} | {teacher['between']:.3f} | {teacher['first_1']:.3f} | |"
        )
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        lines.append(
            f"| {m} | {MODE_PRED[m]} | "
            + " | ".join(fmt([r[k] for r in rs]) for k in ("mode_1", "mode_2", "top_mode", "between", "first_1"))
            + f" | {fmt([r.get('train_seconds') for r in rs], 1)} |"
        )
    text = verdict(res) if set(methods) == set(MODE_PRED) else "n/a (not every method ran)"
    lines += [
        "",
        (
            "Which mode MiniLLM keeps differs by seed (the table's mode columns average over seeds; the top-mode "
            "column does not)."
        ),
        "",
        *verdict_lines(text, "modes"),
    ]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0.0] * len(methods)
    for key, label in (("top_mode", "top mode"), ("mode_2", "other mode"), ("between", "between")):
        if key == "mode_2":
            vals = [mean([min(r["mode_1"], r["mode_2"]) for r in runs if r["method"] == m]) for m in methods]
        else:
            vals = [mean([r[key] for r in runs if r["method"] == m]) for m in methods]
        ax.bar(methods, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    for k, m in enumerate(methods):  # each seed's top-mode mass and top + other + between (= 1) as points
        rs = [r for r in runs if r["method"] == m]
        ax.scatter([k - 0.15] * len(rs), [r["top_mode"] for r in rs], color="k", s=8, zorder=3)
        ax.scatter(
            [k + 0.15] * len(rs),
            [r["top_mode"] + min(r["mode_1"], r["mode_2"]) for r in rs],
            color="w",
            s=8,
            edgecolors="k",
            zorder=3,
        )
    n = len({r["seed"] for r in runs})
    ax.set_ylabel("probability"), ax.legend(fontsize=7)
    ax.set_title(f"mass on each mode (bigram student), bars = mean, points = each of n = {n} seeds", fontsize=9)
    save(fig, out, "modes")
    return lines, {"verdict": text}


EXPERIMENT = Experiment(NAME, run, section, count_runs)
