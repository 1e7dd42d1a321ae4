"""Experiment 7: OPSD on the chain task: the student, shown the answer as a hint, teaches itself without it; against
SFT on the same answers and GKD from the chain teacher, at equal steps from the same start.

The start: the lab's student (hidden 32) trained by next-token learning on every prompt twice, once plain
(``prompt + completion``) and once with the answer as its hint (the privileged prompt of
:func:`~trl_opd.teachers.privileged.privileged_prompt`, then the completion), so that it can use a hint (a model that
never saw one cannot). From that start, for ``gkd_steps`` of ``gkd_batch`` rows at ``gkd_lr``:

* **OPSD**: GKDTrainer, λ = 1, ``privileged_teacher = size.opsd_teacher``: the teacher is the student itself, fed the
  row's answer as its ``privileged_context``; no teacher model;
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
ARMS = ("opsd", "sft", "gkd")
LABELS = {"opsd": "OPSD (own teacher, answer as hint)", "sft": "SFT on the answers", "gkd": "GKD from the real teacher"}
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


def train_arm(lab, arm, start, seed, T) -> dict:
    """One arm from a copy of ``start``: its train seconds and chain metrics (no hint)."""
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
        privileged = {"privileged_teacher": size.opsd_teacher} if arm == "opsd" else None
        record, student = lab.gkd_chain(T, 1.0, size.opsd_divergence, seed, student=student, privileged=privileged)
        record = {k: record[k] for k in ("train_seconds", "on_policy_divergence")}
    return {**record, **lab.chain_eval(student, T, seed)}


def run(lab, earlier=None, seeds=None, arms=ARMS) -> dict:
    size = lab.size
    T = size.ablation_T
    runs = []
    for seed in size.all_seeds if seeds is None else seeds:
        start = warm_start(lab, seed, T)
        run = {"seed": seed, "start": lab.chain_eval(start, T, seed), "hinted_start": hinted_eval(lab, start, T, seed)}
        for arm in arms:
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
        "teacher_kind": size.opsd_teacher,
        "divergence": size.opsd_divergence,
    }


def count_runs(size, experiments) -> int:
    return len(size.all_seeds) * len(ARMS)


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


def verdict(start, opsd, sft=None, gkd=None) -> str:
    """From the per-seed token errors (the start's, and each arm's after equal steps): does OPSD improve on its start
    (the tutorial's claim), and how does it compare with SFT on the same answers and with GKD from a real teacher."""
    if not opsd or len(opsd) != len(start) or len(opsd) < 2:
        return "inconclusive (fewer than 2 seeds)"
    change = {-1: "improves on", 0: "does not clearly improve on", 1: "makes worse"}[compare(opsd, start)]
    text = (
        f"{'agrees' if compare(opsd, start) < 0 else 'disagrees'}: OPSD {change} its start (token error "
        f"{mean(start):.3f} -> {mean(opsd):.3f})"
    )
    for name, other in (("plain SFT on the same answers", sft), ("GKD from the real teacher", gkd)):
        if other and len(other) == len(opsd):
            word = {-1: "beats", 0: "is not clearly apart from", 1: "loses to"}[compare(opsd, other)]
            text += f"; at equal steps it {word} {name} ({mean(other):.3f})"
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
            f"`privileged_teacher='{res['teacher_kind']}'`: the student is its own teacher, shown the answer), **SFT** "
            "on the same (prompt, answer) rows, and **GKD** from the chain teacher (λ = 1, same divergence). Errors "
            "are measured on each student's own rollouts without the hint; *start with the hint* is the start's "
            f"rollouts after the hinted prompt (the self-teacher's quality). n = {len(runs)} student seeds."
        ),
        "",
        "| student | sequence error | token error | train seconds |",
        "|---|---|---|---|",
    ]
    rows = [("start", "start (no hint)"), ("hinted_start", "start with the hint")]
    for key, label in rows + [(arm, LABELS[arm]) for arm in ARMS]:
        if all(key in r for r in runs):
            lines.append(
                f"| {label} | {fmt(errors(res, key, 'sequence_error'))} | {fmt(errors(res, key))} | "
                f"{fmt(errors(res, key, 'train_seconds'), 1) if key in ARMS else 'n/a'} |"
            )
    text = verdict(*(errors(res, key) if all(key in r for r in runs) else None for key in ("start", *ARMS)))
    lines += [
        "",
        "Tutorial's prediction: the model with the hint produces better traces, and the model without it learns them "
        "(it improves without a bigger teacher).",
        "",
        *verdict_lines(text, "opsd"),
    ]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    keys = ["start", "hinted_start", *ARMS]
    for r in runs:
        ax.plot(range(len(keys)), [r[k]["token_error"] if k in r else None for k in keys], color="0.7", lw=0.8)
    ax.plot(range(len(keys)), [mean(errors(res, k)) for k in keys], marker="o", ls="", color="C0", label="mean")
    ax.set_xticks(range(len(keys)), ["start", "start+hint", "OPSD", "SFT", "GKD"])
    ax.set_ylabel("token error"), ax.set_title(f"OPSD, T = {T}"), ax.legend()
    save(fig, out, "opsd")
    return lines, {"verdict": text}


EXPERIMENT = Experiment(NAME, run, section, count_runs)
