r"""PACED curriculum sampling (the tutorial's chapter 7, "Pillar 2"): per-example success estimates and the sampler.

The weights, the success proxy and the easy-first warm-up are stated in :mod:`trl_opd.hooks.paced`; the sampler that
replaces TRL's ``RepeatSampler`` is :class:`trl_opd.hooks.paced_sampler.PacedSampler`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .paced import check_non_negative, difficulty_ranks, observation_from_divergence, paced_weights
from .paced_sampler import PacedSampler


__all__ = ["PacedCurriculum", "PacedSampler", "observation_from_divergence", "paced_weights"]

_STATE_VERSION = 1
_HISTORY_LENGTH = 64  # served generation batches remembered for `batch_record` and `state_dict(consumed_batches=)`
_CONFIG_FIELDS = (
    "alpha",
    "beta",
    "prior",
    "ema",
    "floor",
    "warmup_steps",
    "warmup_strength",
    "success_threshold",
)


@dataclass(eq=False)
class PacedCurriculum:
    r"""Per-example success estimates and the PACED sampler that draws from them.

    Sampling probability of example ``i`` at the current state (``t`` = generation batches drawn so far)::

        q_i ∝ (floor + p_i^α (1 − p_i)^β) · f_i(t)          f_i(t) = exp(−s (1 − t/W) r_i) if t < W (warm-up) else 1

    Args:
        alpha, beta: exponents of ``p^α (1 − p)^β`` (>= 0). The weight peaks at ``p* = α / (α + β)``.
        prior: ``p`` of an unseen example, in [0, 1].
        ema: EMA rate, in (0, 1]: ``p ← (1 − ema) · p + ema · o``. ``ema = 1`` keeps only the last observation.
        floor: additive weight floor (>= 0; see :func:`paced_weights`). With ``floor = 0`` a draw fails when fewer
            than ``batch_size`` examples have a positive weight.
        warmup_steps: ``W``, number of generation batches of easy-first warm-up (>= 0; needs ``difficulty`` in
            :meth:`bind`, else it is a no-op).
        warmup_strength: ``s`` (>= 0), the log of the hardest/easiest probability ratio on the first batch.
        success_threshold: ``None`` (use observations as given) or a value in [0, 1]: each observation is binarised,
            ``o ← 1 if o >= success_threshold else 0``, before the EMA (e.g. a verifier's graded reward turned into
            solved / not solved).

    Usage (the trainer's side)::

        curriculum = PacedCurriculum(alpha=1, beta=1, ema=0.5)
        curriculum.bind(len(train_dataset))
        sampler = curriculum.sampler(batch_size=G, repeat_count=grad_accum, seed=args.seed)
        ...  # after each generation batch (identical calls on every process):
        curriculum.update(dataset_indices, curriculum.observation_from_divergence(per_row_mean_divergence))
        # at a checkpoint (one generation batch per optimizer step; the DataLoader has drawn one batch ahead):
        curriculum.save(os.path.join(checkpoint_dir, "paced_curriculum.json"), consumed_batches=state.global_step)
    """

    alpha: float = 1.0
    beta: float = 1.0
    prior: float = 0.5
    ema: float = 0.5
    floor: float = 1e-3
    warmup_steps: int = 0
    warmup_strength: float = 3.0
    success_threshold: float | None = None

    def __post_init__(self):
        self._validate_config()
        self._num_examples: int | None = None
        self._p: torch.Tensor | None = None  # float64 [N]
        self._visits: torch.Tensor | None = None  # int64 [N], observations received per example
        self._difficulty: torch.Tensor | None = None  # float64 [N] or None
        self._difficulty_rank: torch.Tensor | None = None  # float64 [N] in [0, 1] or None
        self._generator = torch.Generator()
        self._generator_seeded = False
        self._batches_drawn = 0  # generation batches drawn from the generator (the warm-up clock t)
        self._batches_served = 0  # generation batches handed out by samplers (drawn or replayed)
        self._pending: deque[dict[str, Any]] = deque()  # drawn before a checkpoint, not yet served: replayed first
        self._history: deque[dict[str, Any]] = deque(maxlen=_HISTORY_LENGTH)
        self._last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------------------------
    # Configuration and state.
    # ------------------------------------------------------------------------------------------------------------------

    def _validate_config(self) -> None:
        check_non_negative("alpha", self.alpha)
        check_non_negative("beta", self.beta)
        check_non_negative("floor", self.floor)
        check_non_negative("warmup_strength", self.warmup_strength)
        if not (isinstance(self.prior, (int, float)) and 0.0 <= self.prior <= 1.0):
            raise ValueError(f"prior must be in [0, 1], got {self.prior!r}.")
        if not (isinstance(self.ema, (int, float)) and 0.0 < self.ema <= 1.0):
            raise ValueError(f"ema must be in (0, 1] (p <- (1-ema)*p + ema*observation), got {self.ema!r}.")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}.")
        if self.success_threshold is not None and not (
            isinstance(self.success_threshold, (int, float)) and 0.0 <= self.success_threshold <= 1.0
        ):
            raise ValueError(f"success_threshold must be None or in [0, 1], got {self.success_threshold!r}.")

    def _require_bound(self, what: str) -> None:
        if self._num_examples is None:
            raise RuntimeError(
                f"PacedCurriculum.{what}() called before bind(num_examples): bind the curriculum to the training "
                "dataset first (or load_state_dict a saved state)."
            )

    @property
    def num_examples(self) -> int | None:
        """Number of bound examples (``None`` before :meth:`bind`)."""
        return self._num_examples

    @property
    def p(self) -> torch.Tensor:
        """A copy of the success estimates (float64, shape ``[N]``)."""
        self._require_bound("p")
        return self._p.clone()

    @property
    def visits(self) -> torch.Tensor:
        """A copy of the per-example observation counts (int64, shape ``[N]``)."""
        self._require_bound("visits")
        return self._visits.clone()

    @property
    def generation_batches_drawn(self) -> int:
        """Generation batches drawn so far (the warm-up clock ``t``)."""
        return self._batches_drawn

    @property
    def generation_batches_served(self) -> int:
        """Generation batches handed out by samplers so far (drawn, or replayed after a resume)."""
        return self._batches_served

    def bind(self, num_examples: int, difficulty: Sequence[float] | torch.Tensor | None = None) -> PacedCurriculum:
        """Allocate per-example state for ``num_examples`` examples: ``p = prior``, visits = 0; reset all counters.

        ``difficulty`` (length ``num_examples``, finite, larger = harder; e.g. completion length or 1 − teacher
        confidence) enables the easy-first warm-up (see the module docstring); only its ranks matter. The generator
        is reset to "unseeded": the next :meth:`sampler` call seeds it. Returns ``self``.
        """
        self._validate_config()
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"num_examples must be an integer >= 1, got {num_examples!r}.")
        diff = None
        if difficulty is not None:
            diff = torch.as_tensor(difficulty, dtype=torch.float64).flatten()
            if diff.numel() != num_examples:
                raise ValueError(f"difficulty has {diff.numel()} values, expected num_examples = {num_examples}.")
            if not bool(torch.isfinite(diff).all()):
                raise ValueError("difficulty values must be finite (no NaN / inf).")
        elif self.warmup_steps > 0:
            warnings.warn(
                f"PacedCurriculum: warmup_steps={self.warmup_steps} but no difficulty was given to bind(); the "
                "easy-first warm-up is disabled.",
                stacklevel=2,
            )
        self._num_examples = num_examples
        self._p = torch.full((num_examples,), float(self.prior), dtype=torch.float64)
        self._visits = torch.zeros(num_examples, dtype=torch.int64)
        self._difficulty = diff
        self._difficulty_rank = None if diff is None else difficulty_ranks(diff)
        self._generator = torch.Generator()
        self._generator_seeded = False
        self._batches_drawn = 0
        self._batches_served = 0
        self._pending.clear()
        self._history.clear()
        self._last_metrics = {}
        return self

    # ------------------------------------------------------------------------------------------------------------------
    # Observations.
    # ------------------------------------------------------------------------------------------------------------------

    observation_from_divergence = staticmethod(observation_from_divergence)

    def update(
        self, indices: Sequence[int] | torch.Tensor, observations: Sequence[float] | torch.Tensor
    ) -> PacedCurriculum:
        """EMA update ``p_i ← (1 − ema) · p_i + ema · o`` for each ``(i, o)`` pair, in order; ``visits_i += 1`` each.

        An index may appear several times (e.g. several rollouts of one prompt): its observations are applied one
        after the other. Observations must be finite and in [0, 1] (binarised first if ``success_threshold`` is set).
        Indices are dataset indices in ``[0, num_examples)``. Returns ``self``.
        """
        self._require_bound("update")
        idx = torch.as_tensor(indices).flatten()
        obs = torch.as_tensor(observations, dtype=torch.float64).flatten()
        if idx.numel() != obs.numel():
            raise ValueError(f"update: got {idx.numel()} indices but {obs.numel()} observations.")
        if idx.numel() == 0:
            return self
        if idx.is_floating_point() or idx.dtype == torch.bool or idx.is_complex():
            raise ValueError(f"update: indices must be integers, got dtype {idx.dtype}.")
        idx = idx.to(torch.int64)
        bad = (idx < 0) | (idx >= self._num_examples)
        if bool(bad.any()):
            raise IndexError(
                f"update: index {int(idx[bad][0])} out of range for a curriculum bound to {self._num_examples} "
                "examples (valid: 0 <= index < num_examples)."
            )
        bad = ~torch.isfinite(obs) | (obs < 0) | (obs > 1)
        if bool(bad.any()):
            position = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"update: observations must be finite and in [0, 1]; got {float(obs[position])!r} at position "
                f"{position} (for example {int(idx[position])})."
            )
        if self.success_threshold is not None:
            obs = (obs >= self.success_threshold).to(torch.float64)
        rate = float(self.ema)
        new_values: dict[int, float] = {}
        p = self._p
        for i, o in zip(idx.tolist(), obs.tolist()):
            current = new_values[i] if i in new_values else float(p[i])
            new_values[i] = (1.0 - rate) * current + rate * o
        keys = torch.tensor(list(new_values.keys()), dtype=torch.int64)
        p[keys] = torch.tensor(list(new_values.values()), dtype=torch.float64).clamp_(0.0, 1.0)
        self._visits.index_add_(0, idx, torch.ones_like(idx))
        return self

    # ------------------------------------------------------------------------------------------------------------------
    # Sampling.
    # ------------------------------------------------------------------------------------------------------------------

    def warmup_factor(self) -> torch.Tensor:
        """The easy-first factor ``f_i(t) = exp(−s (1 − t/W) r_i)`` at the current ``t`` (all ones when inactive)."""
        self._require_bound("warmup_factor")
        t, w = self._batches_drawn, self.warmup_steps
        if self._difficulty_rank is None or w <= 0 or t >= w:
            return torch.ones(self._num_examples, dtype=torch.float64)
        return torch.exp(-float(self.warmup_strength) * (1.0 - t / w) * self._difficulty_rank)

    def sampling_probabilities(self) -> torch.Tensor:
        """``q_i = w_i f_i(t) / Σ_j w_j f_j(t)`` at the current state (float64, shape ``[N]``, sums to 1).

        ``w = paced_weights(p, alpha, beta, floor)``; ``f`` is :meth:`warmup_factor` for the current number of drawn
        generation batches ``t``.
        """
        self._require_bound("sampling_probabilities")
        weights = paced_weights(self._p, self.alpha, self.beta, self.floor) * self.warmup_factor()
        total = float(weights.sum())
        if not (total > 0 and math.isfinite(total)):
            raise ValueError(
                "PacedCurriculum: every example has weight 0 (floor = 0 and all p in {0, 1}); use floor > 0."
            )
        return weights / total

    def sampler(
        self, batch_size: int, repeat_count: int = 1, mini_repeat_count: int = 1, seed: int = 0
    ) -> PacedSampler:
        """A :class:`PacedSampler` (drop-in for TRL's ``RepeatSampler``) drawing from this curriculum.

        The draw generator lives on the curriculum: the FIRST ``sampler()`` call after :meth:`bind` seeds it with
        ``seed``; later calls (a sampler re-created per epoch or per ``train()``), and any call after
        :meth:`load_state_dict` of a seeded state, ignore ``seed`` and continue the same draw sequence.
        """
        self._require_bound("sampler")
        self._validate_config()
        for name, value in (
            ("batch_size", batch_size),
            ("repeat_count", repeat_count),
            ("mini_repeat_count", mini_repeat_count),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if batch_size > self._num_examples:
            raise ValueError(
                f"batch_size ({batch_size}) > num_examples ({self._num_examples}): a generation batch needs "
                "batch_size distinct examples."
            )
        if not self._generator_seeded:
            self._generator.manual_seed(int(seed))
            self._generator_seeded = True
        return PacedSampler(self, batch_size, repeat_count, mini_repeat_count, seed)

    def _draw(self, batch_size: int) -> list[int]:
        """Draw one generation batch: ``batch_size`` distinct indices from :meth:`sampling_probabilities`."""
        probabilities = self.sampling_probabilities()
        if int((probabilities > 0).sum()) < batch_size:
            raise ValueError(
                f"PacedCurriculum: only {int((probabilities > 0).sum())} examples have a positive weight, fewer "
                f"than batch_size = {batch_size}; use floor > 0."
            )
        chosen = torch.multinomial(probabilities, batch_size, replacement=False, generator=self._generator)
        positive = probabilities[probabilities > 0]
        metrics = {
            "curriculum/mean_p": float(self._p[chosen].mean()),
            "curriculum/weight_entropy": float(-(positive * positive.log()).sum()),
            "curriculum/visited_fraction": float((self._visits > 0).to(torch.float64).mean()),
            "curriculum/mean_p_all": float(self._p.mean()),
        }
        indices = chosen.tolist()
        self._batches_drawn += 1
        self._record({"indices": indices, "metrics": metrics})
        return indices

    def _record(self, record: dict[str, Any]) -> None:
        record = {"batch": self._batches_served, "indices": list(record["indices"]), "metrics": dict(record["metrics"])}
        self._batches_served += 1
        self._history.append(record)
        self._last_metrics = dict(record["metrics"])

    def next_batch(self, batch_size: int) -> list[int]:
        """The next generation batch: a pending (drawn before the checkpoint) batch if any, else a fresh draw."""
        self._require_bound("sampler iteration")
        if self._pending:
            if len(self._pending[0]["indices"]) == batch_size:
                record = self._pending.popleft()
                self._record(record)
                return list(record["indices"])
            warnings.warn(
                f"PacedCurriculum: discarding {len(self._pending)} pending generation batch(es) restored from a "
                f"checkpoint: their size {len(self._pending[0]['indices'])} != batch_size {batch_size}.",
                stacklevel=3,
            )
            self._pending.clear()
        return self._draw(batch_size)

    def last_batch_metrics(self) -> dict[str, float]:
        """Metrics of the most recently served generation batch (``{}`` before any).

        ``curriculum/mean_p``: mean ``p`` of its examples at draw time; ``curriculum/weight_entropy``: entropy in nats
        of :meth:`sampling_probabilities` at draw time (``log N`` = uniform, the maximum);
        ``curriculum/visited_fraction``: fraction of examples observed at least once; ``curriculum/mean_p_all``: mean
        ``p`` over all examples. With a prefetching DataLoader this is the batch drawn *ahead* of the one being
        trained: use :meth:`batch_record` with the trained batch's number to log aligned values.
        """
        return dict(self._last_metrics)

    def batch_record(self, batch: int) -> dict[str, Any]:
        """``{"batch", "indices", "metrics"}`` of served generation batch number ``batch`` (0-based, global).

        Only the last 64 served batches are remembered (KeyError otherwise).
        """
        for record in self._history:
            if record["batch"] == batch:
                return {
                    "batch": record["batch"],
                    "indices": list(record["indices"]),
                    "metrics": dict(record["metrics"]),
                }
        raise KeyError(f"generation batch {batch} is not among the last {_HISTORY_LENGTH} served batches.")

    # ------------------------------------------------------------------------------------------------------------------
    # Checkpointing.
    # ------------------------------------------------------------------------------------------------------------------

    def state_dict(self, consumed_batches: int | None = None) -> dict[str, Any]:
        """A JSON-serialisable snapshot (plain lists / ints / floats / bools / None).

        Holds the configuration, ``p``, visits, difficulty, counters, the generator state (a ByteTensor, stored as a
        list of ints) and the last metrics. A curriculum that loads it and creates a new sampler continues exactly
        the draw sequence this one would have continued.

        ``consumed_batches`` (optional): the number of generation batches the trainer has actually trained on (e.g.
        ``global_step``). Batches served after those (drawn ahead by a prefetching DataLoader) are stored as
        *pending*: after loading, samplers first replay them verbatim, then resume drawing, so a resumed run sees the
        same batches as an uninterrupted one. ``None`` = everything served was consumed.
        """
        self._require_bound("state_dict")
        pending = [dict(r) for r in self._pending]
        served = self._batches_served
        if consumed_batches is not None:
            if consumed_batches > self._batches_served or consumed_batches < 0:
                raise ValueError(
                    f"consumed_batches={consumed_batches} must be in [0, {self._batches_served}] (batches served)."
                )
            unconsumed = [r for r in self._history if r["batch"] >= consumed_batches]
            if len(unconsumed) != self._batches_served - consumed_batches:
                raise ValueError(
                    f"consumed_batches={consumed_batches}: only the last {_HISTORY_LENGTH} served batches are "
                    "remembered."
                )
            pending = [dict(r) for r in unconsumed] + pending
            served = consumed_batches
        return {
            "version": _STATE_VERSION,
            "config": {name: getattr(self, name) for name in _CONFIG_FIELDS},
            "num_examples": self._num_examples,
            "p": self._p.tolist(),
            "visits": self._visits.tolist(),
            "difficulty": None if self._difficulty is None else self._difficulty.tolist(),
            "generation_batches_drawn": self._batches_drawn,
            "generation_batches_served": served,
            "generator_seeded": self._generator_seeded,
            "generator_state": self._generator.get_state().tolist(),
            "pending_batches": [{"indices": list(r["indices"]), "metrics": dict(r["metrics"])} for r in pending],
            "last_batch_metrics": dict(self._last_metrics),
        }

    def load_state_dict(self, state: dict[str, Any]) -> PacedCurriculum:
        """Restore a :meth:`state_dict` (configuration included: the saved hyperparameters win). Returns ``self``.

        Works on a fresh (unbound) curriculum. The remembered batch history (:meth:`batch_record`) starts empty.
        """
        version = state.get("version")
        if version != _STATE_VERSION:
            raise ValueError(f"Unsupported PacedCurriculum state version {version!r} (expected {_STATE_VERSION}).")
        config = state["config"]
        for name in _CONFIG_FIELDS:
            setattr(self, name, config[name])
        self._validate_config()
        n = int(state["num_examples"])
        p = torch.tensor(state["p"], dtype=torch.float64)
        visits = torch.tensor(state["visits"], dtype=torch.int64)
        if p.numel() != n or visits.numel() != n:
            raise ValueError(
                f"Corrupt PacedCurriculum state: num_examples={n} but {p.numel()} p / {visits.numel()} visits."
            )
        self._num_examples = n
        self._p = p
        self._visits = visits
        difficulty = state["difficulty"]
        self._difficulty = None if difficulty is None else torch.tensor(difficulty, dtype=torch.float64)
        self._difficulty_rank = None if self._difficulty is None else difficulty_ranks(self._difficulty)
        self._generator = torch.Generator()
        self._generator_seeded = bool(state["generator_seeded"])
        if self._generator_seeded:
            self._generator.set_state(torch.tensor(state["generator_state"], dtype=torch.uint8))
        self._batches_drawn = int(state["generation_batches_drawn"])
        self._batches_served = int(state["generation_batches_served"])
        self._pending = deque(
            {"indices": [int(i) for i in r["indices"]], "metrics": dict(r["metrics"])} for r in state["pending_batches"]
        )
        self._history = deque(maxlen=_HISTORY_LENGTH)
        self._last_metrics = dict(state.get("last_batch_metrics", {}))
        return self

    def save(self, path: str | os.PathLike, consumed_batches: int | None = None) -> None:
        """Write :meth:`state_dict` (``consumed_batches`` passed on) to ``path`` as JSON (atomically)."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        state = self.state_dict(consumed_batches=consumed_batches)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".paced_curriculum.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def load(self, path: str | os.PathLike) -> PacedCurriculum:
        """Read a JSON file written by :meth:`save` into this curriculum (see :meth:`load_state_dict`); ``self``."""
        with open(os.fspath(path)) as f:
            return self.load_state_dict(json.load(f))

    def __repr__(self) -> str:
        config = ", ".join(f"{name}={getattr(self, name)!r}" for name in _CONFIG_FIELDS)
        if self._num_examples is None:
            return f"PacedCurriculum({config}, unbound)"
        return (
            f"PacedCurriculum({config}, num_examples={self._num_examples}, mean_p={float(self._p.mean()):.4f}, "
            f"visited={int((self._visits > 0).sum())}, generation_batches_drawn={self._batches_drawn})"
        )
