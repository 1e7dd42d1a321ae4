r"""An offline teacher cache: the teacher's top-k + tail targets of every dataset completion token, computed once.

Off-policy rows (λ < 1) train on the dataset's own completions, so the teacher's distributions there do not depend
on the student: :func:`build_teacher_cache` runs the teacher once over the dataset and stores, for every completion
token, its top-k token ids (int32), their log-probabilities (float32) and the tail's log-mass (float32) — ``8k + 4``
bytes per token — in Arrow shards (``datasets.save_to_disk``) that are memory-mapped when read. A λ ≡ 0 run with a
cache needs no teacher in memory at all; a mixed run uses the live teacher only for its on-policy rows.

A cache is keyed by row (the row's index in the prepared dataset) and checked by a hash of the row's prompt and
completion token ids: a cache built with another tokenizer, chat template, truncation or dataset is refused, naming
what differs, instead of silently serving misaligned targets. ``meta.json`` records how it was built.

Trust (what a reader checks before any compute, :class:`TeacherCache`): ``meta.json`` parses, has every field with a
valid value, and lists its shards with their sizes and SHA-256 checksums; each listed shard exists and matches its
checksum (a flipped byte is named, never handed to Arrow); the shards' rows and token counts agree with ``meta.json``.
``meta.json`` is written last and atomically, so a killed build leaves no cache that looks complete. The cache records
the teacher's weights fingerprint (:func:`trl_opd.fingerprint.weights_fingerprint`); a run with a live teacher refuses
a cache built from another one (:meth:`TeacherCache.check_teacher`). The folder carries the package's marker
(:mod:`trl_opd.ownership`): a build refuses a non-empty folder it did not create, and replaces an earlier cache only
with ``overwrite=True`` (``--overwrite``), deleting only the shards it wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_json
from ..compatibility import tokenizer_fingerprint
from ..data import completion_token_ids, prepare_prompt_completion_dataset, prompt_token_ids
from ..divergences import LMHead
from ..divergences.topk import TopKTargets, topk_targets_from_hidden
from ..fingerprint import weights_fingerprint
from ..ownership import OwnershipError, child_dir, claim, release, remove_owned
from ..scoring import completion_hidden_states, pack


CACHE_FORMAT = 2
META_NAME = "meta.json"
MARKER_KIND = "teacher-cache"
SHARD_PATTERN = re.compile(r"shard-\d{5}")
REBUILD = "rebuild it with `trl-opd cache-teacher ... --overwrite` (or build_teacher_cache(..., overwrite=True))"


class CacheError(ValueError):
    """A teacher cache that cannot be used: the message names the cache folder, the part and the fix."""


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
    teacher_fingerprint: str = ""
    shards: list[dict[str, Any]] = field(default_factory=list)
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
    overwrite: bool = False,
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
        overwrite: replace an earlier cache in ``output_dir`` (only a folder this package created; see
            :func:`prepare_cache_folder`).

    Raises:
        OwnershipError: ``output_dir`` is a non-empty folder the package did not create, or already holds a cache
            and ``overwrite`` is off.
        ValueError: the teacher produced a non-finite target (naming the row), or ``top_k`` is impossible.
    """
    from datasets import Dataset, Features, Sequence, Value

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}.")
    start = time.perf_counter()
    head = LMHead.of(teacher).detached()
    vocab = head.rows
    if top_k > vocab:
        raise ValueError(f"top_k={top_k} exceeds the teacher's vocabulary ({vocab} rows); pass at most {vocab}.")
    out = Path(prepare_cache_folder(output_dir, overwrite=overwrite))
    try:
        dataset = prepare_prompt_completion_dataset(dataset, "dataset")
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
        shards: list[dict] = []
        tokens = 0

        def flush():
            nonlocal shard
            if shard["row"]:
                name = f"shard-{len(shards):05d}"
                with _quiet_datasets():
                    Dataset.from_dict(shard, features=features).save_to_disk(str(out / name))
                shards.append({"name": name, "rows": len(shard["row"]), **shard_checksum(out / name)})
                shard = {name: [] for name in features}

        try:
            for first in range(0, len(dataset), batch_size):
                rows = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
                ids = [
                    _row_ids(tokenizer, r, max_prompt_length, max_completion_length, chat_template_kwargs) for r in rows
                ]
                batch = pack([p for p, _ in ids], [c for _, c in ids], tokenizer.pad_token_id or 0, device)
                hidden = completion_hidden_states(teacher, batch)
                targets = topk_targets_from_hidden(hidden, head, top_k, vocab, temperature)
                _check_finite(targets, first, ids)
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
            teacher_fingerprint=weights_fingerprint(teacher),
            shards=shards,
        )
        write_json(out / META_NAME, asdict(meta))  # last and atomic: a killed build leaves no meta.json
        return TeacherCache(out)
    finally:
        release(out)  # another process may rebuild it once this call returns


def prepare_cache_folder(output_dir: str | os.PathLike, *, overwrite: bool = False, check_only: bool = False) -> str:
    """Make ``output_dir`` ready for a new cache; returns it. A missing or empty folder is created and marked; a folder
    this package created is reused: an unfinished build's shards are replaced, a finished cache only with
    ``overwrite`` (its ``meta.json`` first, so a killed rebuild never looks complete, then its shards). Any other
    non-empty folder is refused (:func:`trl_opd.ownership.claim`). ``check_only``: refuse, but delete nothing yet."""
    folder = os.fspath(output_dir)
    _, created = claim(folder, MARKER_KIND, "the cache folder")
    if created:
        return folder
    if os.path.exists(os.path.join(folder, META_NAME)) and not overwrite:
        raise OwnershipError(
            f"{folder} already holds a teacher cache; pass --overwrite (overwrite=True) to rebuild it, or choose "
            "another folder."
        )
    if check_only:
        return folder
    remove_owned(folder, [META_NAME] if os.path.exists(os.path.join(folder, META_NAME)) else [])
    remove_owned(folder, [name for name in os.listdir(folder) if SHARD_PATTERN.fullmatch(name)])
    return folder


def shard_checksum(folder: str | os.PathLike) -> dict:
    """``{"bytes", "sha256"}`` of a shard folder: its files' sizes and contents, in name order."""
    sha, size = hashlib.sha256(), 0
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            sha.update(f"{path.relative_to(folder).as_posix()}\0".encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
                    size += len(block)
    return {"bytes": size, "sha256": sha.hexdigest()}


def _check_finite(targets: TopKTargets, first: int, ids) -> None:
    """Refuse to store a NaN or +inf log-probability (a tail of -inf, all mass in the top k, is valid)."""
    bad = torch.isnan(targets.log_probs).any(-1) | (targets.log_probs > 1e-4).any(-1)
    bad |= torch.isnan(targets.tail_log_prob) | (targets.tail_log_prob == math.inf)
    if bool(bad.any()):
        token = int(bad.nonzero()[0, 0])
        ends = torch.tensor([len(c) for _, c in ids]).cumsum(0)
        row = first + int((ends <= token).sum())
        raise ValueError(
            f"the teacher's targets of row {row} are not finite log-probabilities (NaN or > 0); check the teacher's "
            "weights and dtype (a float16 overflow?). Nothing was stored for that row."
        )


#: ``meta.json`` fields and the check each value must pass (``None`` allowed where the field is optional).
_META_CHECKS = {
    "top_k": lambda v: _is_int(v) and v >= 1,
    "temperature": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
    "rows": lambda v: _is_int(v) and v >= 0,
    "tokens": lambda v: _is_int(v) and v >= 0,
    "max_completion_length": lambda v: v is None or (_is_int(v) and v >= 1),
    "max_prompt_length": lambda v: v is None or (_is_int(v) and v >= 1),
    "teacher": lambda v: isinstance(v, str),
    "teacher_vocab_size": lambda v: _is_int(v) and v >= 1,
    "tokenizer": lambda v: isinstance(v, dict),
    "chat_template_kwargs": lambda v: isinstance(v, dict),
    "teacher_fingerprint": lambda v: isinstance(v, str) and v != "",
    "shards": lambda v: (
        isinstance(v, list) and all(isinstance(s, dict) and {"name", "rows", "bytes", "sha256"} <= set(s) for s in v)
    ),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_cache_meta(path: str | os.PathLike) -> CacheMeta:
    """The ``meta.json`` of the cache at ``path``, every field checked; each problem is named with the fix.

    Raises:
        CacheError: ``path`` holds no ``meta.json`` (not a cache, or a build that did not finish), or ``meta.json``
            is not valid JSON, is of another format, or has a missing, unknown or invalid field.
    """
    path = Path(path)
    meta_path = path / META_NAME
    if not meta_path.is_file():
        raise CacheError(
            f"{path} is not a teacher cache (no {META_NAME}; a build that was interrupted leaves none): build one with "
            "trl_opd.build_teacher_cache or `trl-opd cache-teacher` (--overwrite to replace an unfinished one)."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheError(f"The teacher cache {path}: {META_NAME} is not valid JSON ({error}); {REBUILD}.") from None
    if not isinstance(meta, dict):
        raise CacheError(f"The teacher cache {path}: {META_NAME} is not a JSON object; {REBUILD}.")
    if meta.get("format") != CACHE_FORMAT:
        raise CacheError(f"The teacher cache {path} was written in cache format {meta.get('format')!r}; this "
                         f"version reads format {CACHE_FORMAT}: {REBUILD}.")  # fmt: skip
    known = {f for f in CacheMeta.__dataclass_fields__}
    unknown, missing = sorted(set(meta) - known), sorted(set(_META_CHECKS) - set(meta))
    invalid = [f"{k}={meta[k]!r}" for k, ok in _META_CHECKS.items() if k in meta and not ok(meta[k])]
    if unknown or missing or invalid:
        what = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
        what += [f"missing field(s) {', '.join(missing)}"] if missing else []
        what += [f"invalid value(s) {', '.join(invalid)}"] if invalid else []
        raise CacheError(
            f"The teacher cache {path}: {META_NAME} has " + "; ".join(what) + f". Was it edited? {REBUILD}."
        )
    return CacheMeta(**meta)


class TeacherCache:
    """A cache written by :func:`build_teacher_cache`, memory-mapped; :meth:`targets` serves rows by index."""

    def __init__(self, path: str | os.PathLike):
        from datasets import concatenate_datasets, load_from_disk

        self.path = Path(path)
        self.meta = read_cache_meta(self.path)
        for shard in self.meta.shards:
            folder = Path(child_dir(self.path, shard["name"], f"{self.path}/{META_NAME} lists a shard"))
            if not folder.is_dir():
                raise CacheError(
                    f"The teacher cache {self.path} lacks its shard {shard['name']} (listed in {META_NAME}): the "
                    f"folder was moved or deleted. Restore it, or {REBUILD}."
                )
            found = shard_checksum(folder)
            if found != {"bytes": shard["bytes"], "sha256": shard["sha256"]}:
                raise CacheError(
                    f"The teacher cache {self.path}: shard {shard['name']} is damaged or was changed ({found['bytes']} "
                    f"bytes, checksum {found['sha256'][:12]}; {META_NAME} records {shard['bytes']} bytes, checksum "
                    f"{str(shard['sha256'])[:12]}). Restore it from a copy, or {REBUILD}."
                )
        parts = [load_from_disk(str(self.path / shard["name"])) for shard in self.meta.shards]
        self.data = concatenate_datasets(parts).with_format("numpy") if parts else None
        self._check_counts()

    def _check_counts(self) -> None:
        """The shards' rows, row indices and token counts agree with ``meta.json`` (an edited top_k, rows or tokens
        is caught here, at init, not as a shape error inside the loss)."""
        import pyarrow.compute as pc

        meta, problems = self.meta, []
        rows = 0 if self.data is None else len(self.data)
        if rows != meta.rows:
            problems.append(f"its shards hold {rows} rows and {META_NAME} says {meta.rows}")
        elif rows:
            table = self.data.data
            tokens = int(pc.sum(table.column("n_tokens")).as_py() or 0)
            if tokens != meta.tokens:
                problems.append(f"its shards hold {tokens} tokens and {META_NAME} says {meta.tokens}")
            if not np.array_equal(table.column("row").to_numpy(), np.arange(rows)):
                problems.append("its rows are not numbered 0..rows-1 in shard order")
            for column, per_token in (("ids", meta.top_k), ("log_probs", meta.top_k), ("tail", 1)):
                stored = int(pc.sum(pc.list_value_length(table.column(column))).as_py() or 0)
                if stored != tokens * per_token:
                    problems.append(f"its `{column}` column holds {stored} values, not tokens x {per_token} = "
                                    f"{tokens * per_token} (top_k={meta.top_k} in {META_NAME})")  # fmt: skip
        if problems:
            raise CacheError(f"The teacher cache {self.path} is inconsistent: " + "; ".join(problems) + f". Was "
                             f"{META_NAME} edited? Restore it, or {REBUILD}.")  # fmt: skip

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
        if top_k is not None and top_k > meta.teacher_vocab_size:
            raise ValueError(
                f"teacher_top_k={top_k} exceeds the teacher's vocabulary ({meta.teacher_vocab_size} rows), so no "
                f"cache can hold it; unset teacher_top_k (the cache's top {meta.top_k} is used) or set it to at "
                f"most {meta.teacher_vocab_size}."
            )
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

    def check_teacher(self, model, label: str = "teacher") -> None:
        """Refuse a live teacher whose weights are not the ones this cache was built from (a mixed run would train its
        on-policy and off-policy rows on two teachers), naming both."""
        live = weights_fingerprint(model)
        if live != self.meta.teacher_fingerprint:
            name = getattr(model, "name_or_path", "") or type(model).__name__
            raise ValueError(
                f"The teacher cache {self.path} was built from the teacher {self.meta.teacher!r} (weights fingerprint "
                f"{self.meta.teacher_fingerprint}), but the live {label} {name!r} has fingerprint {live}: the "
                "on-policy rows would learn from another teacher than the cached off-policy rows. Pass the cache's "
                "teacher, or rebuild the cache with this one (`trl-opd cache-teacher --overwrite`)."
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
