"""Experiment 7: OPSD on the chain task: the student, shown the answer as a hint, teaches itself without it; against
SFT on the same answers and GKD from the chain teacher, at equal steps from the same start.

The start: the lab's student (hidden 32) trained by next-token learning on every prompt twice, once plain
(``prompt + completion``) and once with the answer as its hint (the privileged prompt of
:func:`~trl_opd.teachers.privileged.privileged_prompt`, then the completion), so that it can use a hint (a model that
never saw one cannot). From that start, for ``gkd_steps`` of ``gkd_batch`` rows at ``gkd_lr``:

* **OPSD**, one run per self-teacher kind in ``size.opsd_teachers`` (``frozen``, ``ema``, ``live``: the student has
  no PEFT adapter, so no ``base``): GKDTrainer, λ = 1, ``privileged_teacher = kind``: the teacher is the student
  itself, fed the row's answer as its ``privileged_context``; no teacher model;
* **SFT**: next-token learning on the same (prompt, answer) rows;
* **GKD**: GKDTrainer, λ = 1, from the lab's chain teacher (a real, bigger teacher).

Only the objective (and for GKD, the teacher) differs between the arms. The token error is measured on each student's
own rollouts without the hint; the start's rollouts *with* the hint measure how good the self-teacher is.
"""

from __future__ import annotations

import copy
import time

from ..plots import pyplot, save, verdict_lines
from ..stats import clearly_above_paired, fmt, mean
from .base import Experiment


NAME = "opsd"
CONTROLS = ("sft", "gkd")
LABELS = {"sft": "SFT on the answers", "gkd": "GKD from the real teacher"}
FLOOR = 0.01  # the least token-error difference a verdict counts, besides 2 standard errors of the paired differences


def hinted_prompts(task, T) -> list[str]:
    """Each chain prompt as the self-teacher sees it: the answer placed by the trainer's default template."""
    from trl_opd.teachers.privileged import privileged_prompt

    return [privileged_prompt(p, task.completion(p, T)) for p in task.prompts()]


def warm_start(lab, seed, T):
    """The lab's student trained on every prompt plain and with its hint (``size.opsd_warm_steps``, the SPIN start's
    learning rate, batch 16)."""
    from trl_opd.tiny import train_causal_lm

    from ..tasks import make_student

    task = lab.chain
    plain = [p + task.completion(p, T) for p in task.prompts()]
    hinted = [h + task.completion(p, T) for p, h in zip(task.prompts(), hinted_prompts(task, T), strict=True)]
    student = make_student(lab.tok, seed, **lab.size.student)
    train_causal_lm(
        student,
        lab.tok,
        plain + hinted,
        steps=lab.size.opsd_warm_steps,
        lr=lab.size.spin_sft_lr,
        batch_size=16,
        seed=seed,
    )
    return student


def hinted_eval(lab, model, T, seed) -> dict:
    """The chain metrics of ``model``'s rollouts after the hinted prompts (scored against the plain prompts): the
    quality of the self-teacher."""
    from ..context import EVAL_SEED_OFFSET
    from ..tasks import sample_texts

    n = lab.size.samples_per_prompt
    _, texts = sample_texts(model, lab.tok, hinted_prompts(lab.chain, T), T, n, EVAL_SEED_OFFSET + seed)
    return lab.chain.score([p for p in lab.chain.prompts() for _ in range(n)], texts, T)


def arm_key(kind: str) -> str:
    """The run key of OPSD with self-teacher ``kind``."""
    return f"opsd_{kind}"


def arms(kinds) -> list[str]:
    """The run keys of the trained students: one OPSD run per kind, then the controls."""
    return [arm_key(k) for k in kinds] + list(CONTROLS)


def label(arm: str) -> str:
    return LABELS.get(arm) or f"OPSD, `{arm.removeprefix('opsd_')}` self-teacher"


def train_arm(lab, arm, start, seed, T) -> dict:
    """One arm (``sft``, ``gkd`` or ``opsd_<kind>``) from a copy of ``start``: its train seconds and chain metrics
    (no hint)."""
    from trl_opd.tiny import train_causal_lm

    size = lab.size
    student = copy.deepcopy(start)
    if arm == "sft":
        texts = [p + lab.chain.completion(p, T) for p in lab.chain.prompts()]
        begin = time.perf_counter()
        train_causal_lm(
            student, lab.tok, texts, steps=size.gkd_steps, lr=size.gkd_lr, batch_size=size.gkd_batch, seed=seed + 1
        )
        record = {"train_seconds": time.perf_counter() - begin}
    else:
        privileged = {"privileged_teacher": arm.removeprefix("opsd_")} if arm != "gkd" else None
        record, student = lab.gkd_chain(T, 1.0, size.opsd_divergence, seed, student=student, privileged=privileged)
        record = {k: record[k] for k in ("train_seconds", "on_policy_divergence")}
    return {**record, **lab.chain_eval(student, T, seed)}


def run(lab, earlier=None, seeds=None, kinds=None, controls=CONTROLS) -> dict:
    size = lab.size
    T = size.ablation_T
    kinds = list(size.opsd_teachers if kinds is None else kinds)
    runs = []
    for seed in size.all_seeds if seeds is None else seeds:
        start = warm_start(lab, seed, T)
        run = {"seed": seed, "start": lab.chain_eval(start, T, seed), "hinted_start": hinted_eval(lab, start, T, seed)}
        for arm in [arm_key(k) for k in kinds] + list(controls):
            run[arm] = train_arm(lab, arm, start, seed, T)
            lab.tick(f"opsd {arm} seed={seed}")
        runs.append(run)
    return {
        "T": T,
        "runs": runs,
        "warm_steps": size.opsd_warm_steps,
        "steps": size.gkd_steps,
        "lr": size.gkd_lr,
        "batch": size.gkd_batch,
        "kinds": kinds,
        "divergence": size.opsd_divergence,
    }


def count_runs(size, experiments) -> int:
    return len(size.all_seeds) * len(arms(size.opsd_teachers))


def compare(a, b) -> int:
    """-1 when the per-seed errors ``a`` lie clearly below ``b`` (2 standard errors of the paired differences and
    :data:`FLOOR`), +1 when clearly above, 0 otherwise."""
    if clearly_above_paired(b, a, k=2, floor=FLOOR):
        return -1
    if clearly_above_paired(a, b, k=2, floor=FLOOR):
        return 1
    return 0


def errors(res, arm, key="token_error") -> list:
    """Per-seed ``key`` of one arm (or of ``start`` / ``hinted_start``), in run order."""
    return [r[arm][key] if arm in r else None for r in res["runs"]]


def best_kind(res) -> str | None:
    """The self-teacher kind with the lowest mean token error (``None`` when no OPSD run is complete)."""
    kinds = [k for k in res.get("kinds", []) if all(arm_key(k) in r for r in res["runs"])]
    return min(kinds, key=lambda k: mean(errors(res, arm_key(k)))) if kinds else None


def verdict(start, opsd: dict, sft=None, gkd=None) -> str:
    """From the per-seed token errors (the start's, each self-teacher kind's in ``opsd``, each control's after equal
    steps): does OPSD improve on its start with some kind (the tutorial's claim), how each kind moved, and how the
    best kind compares with SFT on the same answers and with GKD from a real teacher."""
    opsd = {k: v for k, v in opsd.items() if v and len(v) == len(start)}
    if not opsd or len(start) < 2:
        return "inconclusive (fewer than 2 seeds)"
    moves = {k: compare(v, start) for k, v in opsd.items()}
    best = min(opsd, key=lambda k: mean(opsd[k]))
    change = {-1: "improves on its start", 0: "does not clearly improve on its start", 1: "ends worse than its start"}
    text = (
        f"{'agrees' if moves[best] < 0 else 'disagrees'}: OPSD with the {best} self-teacher {change[moves[best]]} "
        f"(token error {mean(start):.3f} -> {mean(opsd[best]):.3f})"
    )
    place = {-1: "better than the start", 0: "not clearly apart from the start", 1: "worse than the start"}
    others = [f"{k} {place[moves[k]]} ({mean(opsd[k]):.3f})" for k in opsd if k != best]
    if others:
        text += "; " + ", ".join(others)
    for name, other in (("plain SFT on the same answers", sft), ("GKD from the real teacher", gkd)):
        if other and len(other) == len(start):
            word = {-1: "beats", 0: "is not clearly apart from", 1: "loses to"}[compare(opsd[best], other)]
            text += f"; at equal steps {best} OPSD {word} {name} ({mean(other):.3f})"
    return text


def section(res, out, results=None):
    runs, T = res["runs"], res["T"]
    lines = [
        "## 7. OPSD: the answer as privileged context",
        "",
        (
            f"Chain task, T = {T}. The student (1 layer, hidden 32) first learns from every prompt twice, plain and "
            f"with its answer as a hint in the privileged prompt (`{{prompt}}\\n\\n{{privileged_context}}`), for "
            f"{res['warm_steps']} steps: the start. From the same start, for {res['steps']} steps of {res['batch']} "
            f"rows at learning rate {res['lr']}: **OPSD** (GKDTrainer, λ = 1, {res['divergence'].upper()}, "
            f"one run per `privileged_teacher` kind: {', '.join(res['kinds'])}; the student is its own teacher, "
            "shown the answer), **SFT** on the same (prompt, answer) rows (next-token loss, constant learning rate), "
            "and **GKD** from the chain teacher (λ = 1, same divergence). Errors "
            "are measured on each student's own rollouts without the hint; *start with the hint* is the start's "
            f"rollouts after the hinted prompt (the self-teacher's quality). n = {len(runs)} student seeds."
        ),
        "",
        "| student | sequence error | token error | train seconds |",
        "|---|---|---|---|",
    ]
    rows = [("start", "start (no hint)"), ("hinted_start", "start with the hint")]
    trained = [a for a in arms(res["kinds"]) if all(a in r for r in runs)]
    for key, name in rows + [(a, label(a)) for a in trained]:
        lines.append(
            f"| {name} | {fmt(errors(res, key, 'sequence_error'))} | {fmt(errors(res, key))} | "
            f"{fmt(errors(res, key, 'train_seconds'), 1) if key in trained else 'n/a'} |"
        )
    text = verdict(
        errors(res, "start"),
        {k: errors(res, arm_key(k)) for k in res["kinds"] if arm_key(k) in trained},
        *(errors(res, c) if c in trained else None for c in CONTROLS),
    )
    lines += [
        "",
        "Tutorial's prediction: the model with the hint produces better traces, and the model without it learns them "
        "(it improves without a bigger teacher).",
        "",
        *verdict_lines(text, "opsd"),
    ]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    keys = ["start", "hinted_start", *trained]
    for r in runs:
        ax.plot(range(len(keys)), [r[k]["token_error"] for k in keys], color="0.7", lw=0.8)
    ax.plot(range(len(keys)), [mean(errors(res, k)) for k in keys], marker="o", ls="", color="C0", label="mean")
    ticks = {"start": "start", "hinted_start": "start+hint", "sft": "SFT", "gkd": "GKD"}
    ax.set_xticks(range(len(keys)), [ticks.get(k) or k.replace("opsd_", "OPSD\n") for k in keys])
    ax.set_ylabel("token error"), ax.set_title(f"OPSD, T = {T}"), ax.legend()
    save(fig, out, "opsd")
    return lines, {"verdict": text}


EXPERIMENT = Experiment(NAME, run, section, count_runs)
