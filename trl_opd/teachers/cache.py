r"""An offline teacher cache: the teacher's top-k + tail targets of every dataset completion token, computed once.

Off-policy rows (λ < 1) train on the dataset's own completions, so the teacher's distributions there do not depend
on the student: :func:`build_teacher_cache` runs the teacher once over the dataset and stores, for every completion
token, its top-k token ids (int32), their log-probabilities (float32) and the tail's log-mass (float32) — ``8k + 4``
bytes per token — in Arrow shards (``datasets.save_to_disk``) that are memory-mapped when read. A λ ≡ 0 run with a
cache needs no teacher in memory at all; a mixed run uses the live teacher only for its on-policy rows.

A cache is keyed by row (the row's index in the prepared dataset) and checked by a hash of the row's prompt and
completion token ids: a cache built with another tokenizer, chat template, truncation or dataset is refused, naming
what differs, instead of silently serving misaligned targets. ``meta.json`` records how it was built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..compatibility import tokenizer_fingerprint
from ..data import completion_token_ids, prepare_prompt_completion_dataset, prompt_token_ids
from ..divergences import LMHead
from ..divergences.topk import TopKTargets, topk_targets_from_hidden
from ..scoring import completion_hidden_states, pack


CACHE_FORMAT = 1
META_NAME = "meta.json"


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bar while the shards are written (restored afterwards)."""
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    enabled = is_progress_bar_enabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            enable_progress_bars()


def row_hash(prompt_ids: list[int], completion_ids: list[int]) -> str:
    """A short hash of a row's prompt and completion token ids (what the cache's targets are aligned to)."""
    array = np.asarray([*prompt_ids, -1, *completion_ids], dtype=np.int64)
    return hashlib.sha1(array.tobytes()).hexdigest()[:16]


@dataclass
class CacheMeta:
    """How a cache was built; a trainer refuses a cache whose settings differ from its own."""

    top_k: int
    temperature: float
    rows: int
    tokens: int
    max_completion_length: int | None
    max_prompt_length: int | None
    teacher: str
    teacher_vocab_size: int
    tokenizer: dict[str, Any]
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    format: int = CACHE_FORMAT

    @property
    def bytes_per_token(self) -> int:
        return 8 * self.top_k + 4


def _row_ids(tokenizer, row: dict, max_prompt_length, max_completion_length, chat_template_kwargs):
    prompt = prompt_token_ids(tokenizer, row["prompt"], chat_template_kwargs)
    if max_prompt_length is not None:
        prompt = prompt[-max_prompt_length:]
    completion = completion_token_ids(
        tokenizer,
        row["prompt"],
        row["completion"],
        eos_token_ids=[tokenizer.eos_token_id],
        chat_template_kwargs=chat_template_kwargs,
    )
    if max_completion_length is not None:
        completion = completion[:max_completion_length]
    return prompt, completion


@torch.no_grad()
def build_teacher_cache(
    teacher,
    tokenizer,
    dataset,
    top_k: int,
    output_dir: str | os.PathLike,
    *,
    max_completion_length: int | None = None,
    max_prompt_length: int | None = None,
    temperature: float = 1.0,
    chat_template_kwargs: dict | None = None,
    batch_size: int = 8,
    shard_rows: int = 4096,
) -> TeacherCache:
    """Compute and store the teacher's top-k + tail targets of every completion token of ``dataset``.

    Args:
        teacher: the teacher model (its head and transform are read from it).
        tokenizer: the tokenizer the student trains with (the one the compatibility check accepts for both).
        dataset: ``prompt`` + ``completion`` (text or messages) or ``messages``, prepared as the trainers prepare it
            (rows with empty completions dropped, so row indices agree).
        top_k: tokens kept per position (plus the tail bin).
        output_dir: where the shards and ``meta.json`` go.
        max_completion_length, max_prompt_length: the trainer's truncation settings (they must match at training).
        temperature: the temperature the trainer will use (the targets are ``softmax(u / τ)``).
        batch_size: rows per teacher forward pass; shard_rows: rows per Arrow shard.
    """
    from datasets import Dataset, Features, Sequence, Value

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    start = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = prepare_prompt_completion_dataset(dataset, "dataset")
    head = LMHead.of(teacher).detached()
    vocab = head.rows
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    features = Features(
        {
            "row": Value("int64"),
            "hash": Value("string"),
            "n_tokens": Value("int32"),
            "ids": Sequence(Value("int32")),
            "log_probs": Sequence(Value("float32")),
            "tail": Sequence(Value("float32")),
        }
    )
    shard: dict[str, list] = {name: [] for name in features}
    shards, tokens = 0, 0

    def flush():
        nonlocal shards, shard
        if shard["row"]:
            with _quiet_datasets():
                Dataset.from_dict(shard, features=features).save_to_disk(str(out / f"shard-{shards:05d}"))
            shards += 1
            shard = {name: [] for name in features}

    try:
        for first in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
            ids = [_row_ids(tokenizer, r, max_prompt_length, max_completion_length, chat_template_kwargs) for r in rows]
            batch = pack([p for p, _ in ids], [c for _, c in ids], tokenizer.pad_token_id or 0, device)
            hidden = completion_hidden_states(teacher, batch)
            targets = topk_targets_from_hidden(hidden, head, top_k, vocab, temperature)
            offset = 0
            for i, (prompt, completion) in enumerate(ids):
                part = targets.select(slice(offset, offset + len(completion)))
                offset += len(completion)
                shard["row"].append(first + i)
                shard["hash"].append(row_hash(prompt, completion))
                shard["n_tokens"].append(len(completion))
                shard["ids"].append(part.ids.flatten().to(torch.int32).tolist())
                shard["log_probs"].append(part.log_probs.flatten().float().tolist())
                shard["tail"].append(part.tail_log_prob.float().tolist())
                tokens += len(completion)
            if len(shard["row"]) >= shard_rows:
                flush()
        flush()
    finally:
        teacher.train(was_training)
    meta = CacheMeta(
        top_k=min(top_k, vocab),
        temperature=temperature,
        rows=len(dataset),
        tokens=tokens,
        max_completion_length=max_completion_length,
        max_prompt_length=max_prompt_length,
        teacher=str(getattr(teacher, "name_or_path", "") or type(teacher).__name__),
        teacher_vocab_size=vocab,
        tokenizer=tokenizer_fingerprint(tokenizer),
        chat_template_kwargs=dict(chat_template_kwargs or {}),
        seconds=time.perf_counter() - start,
    )
    (out / META_NAME).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return TeacherCache(out)


class TeacherCache:
    """A cache written by :func:`build_teacher_cache`, memory-mapped; :meth:`targets` serves rows by index."""

    def __init__(self, path: str | os.PathLike):
        from datasets import concatenate_datasets, load_from_disk

        self.path = Path(path)
        meta_path = self.path / META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a teacher cache (no {META_NAME}); build one with trl_opd.build_teacher_cache or "
                "`trl-opd cache-teacher`."
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.path} was written in cache format {meta.get('format')}; rebuild it.")
        self.meta = CacheMeta(**meta)
        shards = sorted(p for p in self.path.glob("shard-*") if p.is_dir())
        self.data = concatenate_datasets([load_from_disk(str(p)) for p in shards]).with_format("numpy")
        if len(self.data) != self.meta.rows:
            raise ValueError(
                f"{self.path} holds {len(self.data)} rows but its meta.json says {self.meta.rows}: rebuild."
            )

    @property
    def top_k(self) -> int:
        return self.meta.top_k

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*.arrow"))

    def check(self, *, tokenizer, rows: int, top_k, temperature: float, max_completion_length, max_prompt_length):
        """Refuse this cache for a run whose settings differ, naming each difference and the fix."""
        from ..compatibility import BLOCKING_FIELDS

        meta, problems = self.meta, []
        here = tokenizer_fingerprint(tokenizer)
        differing = [key for key in BLOCKING_FIELDS if here.get(key) != meta.tokenizer.get(key)]
        if differing:
            problems.append(f"it was built with another tokenizer (its {', '.join(differing)} differ)")
        if rows != meta.rows:
            problems.append(f"it holds {meta.rows} rows and the training dataset has {rows}")
        if top_k is not None and top_k != meta.top_k:
            problems.append(f"it stores the top {meta.top_k} tokens and teacher_top_k={top_k}")
        if temperature != meta.temperature:
            problems.append(f"it was built at temperature {meta.temperature} and the run uses {temperature}")
        for name, value in (("max_completion_length", max_completion_length), ("max_prompt_length", max_prompt_length)):
            if value != getattr(meta, name):
                problems.append(f"it was built with {name}={getattr(meta, name)} and the run uses {value}")
        if problems:
            raise ValueError(
                f"The teacher cache {self.path} does not fit this run: " + "; ".join(problems) + ". Rebuild it with "
                "the run's tokenizer, dataset and settings (`trl-opd cache-teacher ...`)."
            )

    def verify(self, rows: list[int], hashes: list[str]) -> None:
        """Refuse rows whose prompt + completion token ids (hashed with :func:`row_hash` by the trainer) are not the
        ones the cache was built from."""
        if not rows:
            return
        bad = [row for row, h in zip(rows, hashes, strict=True) if not 0 <= row < self.meta.rows]
        if bad:
            raise ValueError(f"Rows {bad[:5]} are outside the teacher cache {self.path} ({self.meta.rows} rows).")
        stored = self.data.select_columns(["hash"])[rows]["hash"]
        for row, mine, theirs in zip(rows, hashes, stored, strict=True):
            if str(theirs) != mine:
                raise ValueError(
                    f"Row {row} of the training dataset is not the row the teacher cache {self.path} was built from "
                    "(its prompt or completion tokens differ): the tokenizer, chat template, truncation or dataset "
                    "changed since. Rebuild the cache."
                )

    def targets(self, rows: list[int]) -> list[TopKTargets]:
        """The stored targets of ``rows``, one :class:`TopKTargets` (T_row × k) each."""
        records = self.data[rows] if rows else {"n_tokens": [], "ids": [], "log_probs": [], "tail": []}
        out = []
        for i in range(len(rows)):
            n, k = int(records["n_tokens"][i]), self.top_k
            out.append(
                TopKTargets(
                    torch.from_numpy(np.array(records["ids"][i], dtype=np.int64)).view(n, k),
                    torch.from_numpy(np.array(records["log_probs"][i], dtype=np.float32)).view(n, k),
                    torch.from_numpy(np.array(records["tail"][i], dtype=np.float32)),
                )
            )
        return out
