r"""Can this teacher teach this student? One check, run by every trainer at init and by ``trl-opd check``.

Distillation compares the two models' next-token distributions id by id, so the student and the teacher must split
text into the same tokens with the same ids. A teacher with another tokenizer of the same size trains silently on
meaningless targets; one with another chat template sees prompts rendered in a format it was not trained on (the most
common cause of "the recipe does not reproduce" reports in other distillation tools). Checked here:

* **tokenizers** (blocking): the vocabulary (token → id), the BPE merges, the added tokens, the EOS / BOS / UNK ids
  and the chat template; a differing pad token, normalizer or pre-tokenizer is a warning (pad positions are masked).
  A teacher given as a folder is compared with the tokenizer saved in that folder; a teacher given as an instance with
  the tokenizer of its ``name_or_path`` folder when it has one, or with ``teacher_tokenizer`` when the caller passes
  it; otherwise the check says it could not compare (a warning naming the fix).
* **heads** (blocking when the tokenizer has more tokens than a head has rows): the divergences compare the first
  ``min(V_student, V_teacher)`` rows; a student head with rows past the tokenizer (Qwen2.5 pads its heads) could
  sample ids that are no token and that the teacher may lack, so :attr:`CompatibilityReport.suppressed_ids` lists
  them for the trainers to suppress in generation.
* with a dataset, **the teacher's own per-token NLL** on a few completions (a report, not a verdict): a teacher that
  matches the tokenizer and template predicts its data well; a few nats more than usual means a template mismatch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any


logger = logging.getLogger(__name__)

COMPATIBILITY_CHECKS = ("error", "warn")


@dataclass(frozen=True)
class Problem:
    """One finding: ``level`` is ``"error"`` (blocking) or ``"warning"``; ``fix`` says what to do."""

    level: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.level}: {self.what} Fix: {self.fix}"


@dataclass
class CompatibilityReport:
    """What :func:`check_compatibility` found, and the numbers behind it."""

    problems: list[Problem] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    shared_vocab_size: int | None = None
    suppressed_ids: list[int] = field(default_factory=list)
    #: Rows of the student's and the teacher's heads (their logit ``vocab_size``).
    vocab_sizes: tuple[int, int] | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_or_warn(self, mode: str = "error") -> None:
        """Raise a ``ValueError`` listing the blocking problems (``mode="error"``), or log them (``"warn"``); a
        routed teacher (``facts["teacher id"]``) is named by its id."""
        teacher_id = self.facts.get("teacher id")
        who = "The teacher" if teacher_id is None else f"The teacher {teacher_id!r} (teacher_id)"
        for problem in self.problems:
            if problem.level == "warning" or mode == "warn":
                of = "" if teacher_id is None else f" of {teacher_id!r}"
                logger.warning("Teacher/student compatibility%s: %s", of, problem)
        if self.errors and mode == "error":
            listed = "\n".join(f"  - {p.what} Fix: {p.fix}" for p in self.errors)
            sizes = ""
            if self.vocab_sizes is not None and self.vocab_sizes[0] != self.vocab_sizes[1]:
                # TRL's own words for this refusal, which its users and tests match on.
                sizes = "The student model has vocab_size {} but the teacher model has vocab_size {}.\n".format(
                    *self.vocab_sizes
                )
            raise ValueError(
                f"{who} cannot teach this student:\n{sizes}{listed}\n(`trl-opd check --student S --teacher T` "
                "prints the full report; compatibility_check='warn' trains anyway.)"
            )

    def format(self) -> str:
        """The short text report ``trl-opd check`` prints."""
        lines = [f"{key:<28} {value}" for key, value in self.facts.items()]
        lines.append("")
        lines += [str(p) for p in self.problems] or ["no problem found"]
        lines.append("verdict: " + ("compatible" if self.ok else "NOT compatible"))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _backend(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else {}


def tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """The parts of a tokenizer that must agree between teacher and student, as comparable values (hashes for the
    large ones)."""
    backend = _backend(tokenizer)
    model = backend.get("model", {})
    added = {int(i): (t.content, bool(t.special)) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    return {
        "size": len(tokenizer),
        "vocabulary": _digest(sorted(tokenizer.get_vocab().items())),
        "model": model.get("type"),
        "merges": _digest(model.get("merges")),
        "added tokens": _digest(sorted(added.items())),
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "unk_token_id": tokenizer.unk_token_id,
        "chat template": _digest(tokenizer.chat_template) if tokenizer.chat_template else None,
        "pad_token_id": tokenizer.pad_token_id,
        "normalizer": _digest(backend.get("normalizer")),
        "pre-tokenizer": _digest(backend.get("pre_tokenizer")),
    }


#: Fingerprint fields whose difference blocks training, and those that only warn.
BLOCKING_FIELDS = (
    "size",
    "vocabulary",
    "model",
    "merges",
    "added tokens",
    "eos_token_id",
    "bos_token_id",
    "unk_token_id",
    "chat template",
)
WARNING_FIELDS = ("pad_token_id", "normalizer", "pre-tokenizer")


def compare_tokenizers(student_tokenizer, teacher_tokenizer) -> list[Problem]:
    """The differences between the two tokenizers' fingerprints, each with its level and fix."""
    a, b = tokenizer_fingerprint(student_tokenizer), tokenizer_fingerprint(teacher_tokenizer)
    problems = []
    for key in BLOCKING_FIELDS + WARNING_FIELDS:
        if a[key] == b[key]:
            continue
        if key == "chat template" and (a[key] is None) != (b[key] is None):
            who = "student" if a[key] is None else "teacher"
            problems.append(
                Problem(
                    "warning",
                    f"Only the {'teacher' if who == 'student' else 'student'}'s tokenizer has a chat template.",
                    "if the data is conversational, give the student the teacher's template (or the reverse).",
                )
            )
            continue
        level = "error" if key in BLOCKING_FIELDS else "warning"
        detail = f" ({a[key]} vs {b[key]})" if key.endswith("_id") or key in ("size", "model") else ""
        fix = (
            "copy the teacher's chat_template to the student's tokenizer (or train the student with the teacher's)."
            if key == "chat template"
            else "use a teacher from the student's model family, with the same tokenizer (or a cross-tokenizer method)."
            if level == "error"
            else "nothing needed if the difference is deliberate (padding is masked)."
        )
        problems.append(Problem(level, f"The tokenizers differ in their {key}{detail}.", fix))
    return problems


def has_tokenizer_files(folder: str) -> bool:
    """Whether ``folder`` is a local folder holding a tokenizer (``tokenizer.json``, ``vocab.json``, ...)."""
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    return os.path.isdir(folder) and any(os.path.isfile(os.path.join(folder, n)) for n in names)


def teacher_tokenizer_of(teacher, teacher_tokenizer=None):
    """The teacher's own tokenizer: the one given, the one in the teacher's folder, or ``None`` when there is none."""
    if teacher_tokenizer is not None:
        return teacher_tokenizer
    folder = teacher if isinstance(teacher, str) else getattr(teacher, "name_or_path", None)
    if folder and has_tokenizer_files(str(folder)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------------------


def head_rows_of(model_or_config) -> int:
    """Rows of a model's output head (a model: its ``lm_head``; a config or a model folder: ``vocab_size``)."""
    if isinstance(model_or_config, (str, os.PathLike)):
        from transformers import AutoConfig

        model_or_config = AutoConfig.from_pretrained(str(model_or_config))
    if hasattr(model_or_config, "get_output_embeddings") and model_or_config.get_output_embeddings() is not None:
        return model_or_config.get_output_embeddings().weight.shape[0]
    config = getattr(model_or_config, "config", model_or_config)
    return config.get_text_config().vocab_size


def compare_heads(student_rows: int, teacher_rows: int, n_tokens: int) -> tuple[int, list[int], list[Problem]]:
    """``(shared vocabulary, student ids to suppress in generation, problems)`` for heads of these sizes."""
    shared = min(student_rows, teacher_rows)
    if n_tokens > shared:
        return (
            shared,
            [],
            [
                Problem(
                    "error",
                    f"Vocabulary mismatch: the tokenizer has {n_tokens} tokens but the student head has "
                    f"{student_rows} rows and the teacher head {teacher_rows}: the models do not share this tokenizer.",
                    "use a teacher from the student's model family (or a cross-tokenizer method).",
                )
            ],
        )
    suppressed = list(range(n_tokens, student_rows)) if student_rows > n_tokens else []
    problems = []
    if student_rows > teacher_rows:
        problems.append(
            Problem(
                "warning",
                f"The student head has {student_rows} rows, the teacher's {teacher_rows}: ids "
                f"{n_tokens}..{student_rows - 1} are no token of the tokenizer and are suppressed in the student's "
                "generation.",
                "nothing: the divergences compare the shared rows.",
            )
        )
    return shared, suppressed, problems


# ----------------------------------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------------------------------


def check_compatibility(student, teacher, tokenizer, teacher_tokenizer=None) -> CompatibilityReport:
    """Compare ``student`` and ``teacher`` (models, or folders / configs for the heads) under ``tokenizer``.

    ``teacher_tokenizer`` is the teacher's own tokenizer when the caller has it (else looked up, see
    :func:`teacher_tokenizer_of`).
    """
    report = CompatibilityReport()
    other = teacher_tokenizer_of(teacher, teacher_tokenizer)
    fingerprint = tokenizer_fingerprint(tokenizer)
    report.facts["tokenizer size"] = fingerprint["size"]
    report.facts["eos / pad ids"] = f"{fingerprint['eos_token_id']} / {fingerprint['pad_token_id']}"
    if other is None:
        report.problems.append(
            Problem(
                "warning",
                "The teacher's own tokenizer is unknown (an instance without a tokenizer folder), so only the head "
                "sizes were compared.",
                "pass the teacher as a folder holding its tokenizer, or save its tokenizer next to its weights.",
            )
        )
    else:
        report.facts["teacher tokenizer"] = "same" if not compare_tokenizers(tokenizer, other) else "differs"
        report.problems += compare_tokenizers(tokenizer, other)
    student_rows, teacher_rows = head_rows_of(student), head_rows_of(teacher)
    report.facts["head rows (student/teacher)"] = f"{student_rows} / {teacher_rows}"
    report.vocab_sizes = (student_rows, teacher_rows)
    shared, suppressed, problems = compare_heads(student_rows, teacher_rows, len(tokenizer))
    report.shared_vocab_size, report.suppressed_ids = shared, suppressed
    report.facts["shared vocabulary"] = shared
    report.problems += problems
    return report


def teacher_nll(teacher, tokenizer, dataset, rows: int = 8, chat_template_kwargs: dict | None = None) -> float:
    """The teacher's mean per-token negative log-likelihood of the first ``rows`` completions of ``dataset``
    (``prompt`` + ``completion``, text or messages), rendered with the student's tokenizer and template as the trainers
    render them."""
    from .data import completion_token_ids
    from .evaluation import mean_token_log_prob

    rows = dataset.select(range(min(rows, len(dataset))))
    prompts, completions = [], []
    for row in rows:
        prompt = row["prompt"]
        if isinstance(prompt, list):
            text = tokenizer.apply_chat_template(
                prompt, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
            )
            prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            prompts.append(tokenizer(prompt)["input_ids"])
        completions.append(
            completion_token_ids(
                tokenizer,
                prompt,
                row["completion"],
                eos_token_ids=[tokenizer.eos_token_id],
                chat_template_kwargs=chat_template_kwargs,
            )
        )
    return -mean_token_log_prob(teacher, prompts, completions)
