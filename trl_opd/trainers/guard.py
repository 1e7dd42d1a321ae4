r"""The non-finite guard shared by every trainer: nothing non-finite reaches the weights or a checkpoint.

Each optimizer step is checked before it is applied:

* the loss of every micro-batch (:meth:`FiniteGuardMixin.training_step`);
* every gradient of a trainable parameter, once the micro-batches are accumulated (:class:`NonFiniteGradientCheck`,
  a callback run between the gradient clipping and ``optimizer.step()``);
* whatever a trainer reports itself through :meth:`FiniteGuardMixin.nonfinite` (GKD's per-token divergences,
  MiniLLM's teacher log-probs, rewards and advantages).

``nonfinite_policy="stop"`` (the default) raises :class:`NonFiniteError` naming the step, the quantity (the loss, the
parameters whose gradient is not finite, the reward function, ...) and the likely cause; the weights are untouched.
``nonfinite_policy="skip"`` drops that optimizer step instead (every gradient is set to ``None``, so ``AdamW`` neither
moves the weights nor its moments; the learning-rate schedule still advances), logs ``nonfinite/skipped_steps``, and
stops with the same error after ``max_nonfinite_skips`` consecutive skipped steps. Whatever the policy, ``save_model``
and checkpoints refuse to write a trainable parameter that is not finite (:meth:`FiniteGuardMixin.save_model`), so the
last good checkpoint stays the last one on disk.

Under fp16 mixed precision the gradient scaler already skips steps whose gradients overflow (and lowers its scale):
the gradient check leaves those to it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback


logger = logging.getLogger(__name__)

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(FloatingPointError):
    """A loss, gradient, reward or teacher output that is NaN or infinite (the message names which and why)."""


@dataclass
class FiniteGuardArguments:
    """Config fields of the non-finite guard, shared by every trainer's config (mixed in before the TRL config).

    Parameters:
        > Parameters that control the non-finite guard

        nonfinite_policy (`str`, *optional*, defaults to `"stop"`):
            What a NaN or infinite loss, gradient, reward or teacher log-probability does: `"stop"` raises an error
            naming the step and the quantity before anything is applied; `"skip"` drops that optimizer step and counts
            it (`nonfinite/skipped_steps`).
        max_nonfinite_skips (`int`, *optional*, defaults to `3`):
            With `"skip"`: stop after this many consecutive skipped steps.
    """

    nonfinite_policy: str = field(
        default="stop", metadata={"help": "On a NaN/inf loss, gradient, reward or teacher output: 'stop' or 'skip'."}
    )
    max_nonfinite_skips: int = field(
        default=3, metadata={"help": "With nonfinite_policy='skip': stop after this many consecutive skipped steps."}
    )

    def __post_init__(self):
        if self.nonfinite_policy not in NONFINITE_POLICIES:
            raise ValueError(
                f"nonfinite_policy must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, "
                f"got {self.nonfinite_policy!r}."
            )
        if self.max_nonfinite_skips < 1:
            raise ValueError(f"max_nonfinite_skips must be >= 1, got {self.max_nonfinite_skips}.")
        super().__post_init__()


def first_nonfinite(tensor: torch.Tensor) -> float | None:
    """The first NaN or infinite value of ``tensor`` (``None`` when all are finite)."""
    bad = ~torch.isfinite(tensor.detach())
    if not bool(bad.any()):
        return None
    return float(tensor.detach()[bad].flatten()[0])


def nonfinite_trainable_parameters(model) -> list[str]:
    """Names of the trainable parameters that hold a NaN or an infinity."""
    return [name for name, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]


class NonFiniteGradientCheck(TrainerCallback):
    """Before each optimizer step: every trainable parameter's gradient must be finite (see the module docstring)."""

    def __init__(self, trainer: FiniteGuardMixin):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        bad = trainer._gradient_report if trainer._gradient_report is not None else trainer._nonfinite_gradients()
        trainer._gradient_report = None
        if trainer.accelerator.scaler is not None:
            bad = []
        if trainer._reduce_flag(bool(bad)):
            names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            trainer.nonfinite(
                f"the gradient of {len(bad) or 'some'} parameter tensor(s) ({names or 'on another process'})",
                "a finite loss with a non-finite gradient usually means an overflow in the backward pass (fp16, a "
                "learning rate too high for the last steps, or a divergence whose gradient is unbounded where the "
                "teacher gives zero probability)",
            )
        if trainer._skip_this_step:
            for group in trainer.optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            trainer._record_skip()
        else:
            trainer._consecutive_skips = 0


class FiniteGuardMixin:
    """The guard for a ``transformers.Trainer`` subclass; call :meth:`_init_finite_guard` after its ``__init__``."""

    _skip_this_step: bool = False
    _skip_reasons: list[str]
    _consecutive_skips: int = 0
    _skipped_steps: int = 0

    def _init_finite_guard(self) -> None:
        self._skip_reasons = []
        self.add_callback(NonFiniteGradientCheck(self))

    @property
    def _guard_policy(self) -> tuple[str, int]:
        return getattr(self.args, "nonfinite_policy", "stop"), getattr(self.args, "max_nonfinite_skips", 3)

    def nonfinite(self, quantity: str, cause: str) -> None:
        """Report a non-finite ``quantity`` at the current step: raise (``"stop"``) or mark the step skipped."""
        policy, _ = self._guard_policy
        step = self.state.global_step + 1
        message = f"Step {step}: {quantity} is not finite. Likely cause: {cause}."
        if policy == "stop":
            raise NonFiniteError(
                message + " Nothing was applied to the weights (nonfinite_policy='skip' drops such steps)."
            )
        if not self._skip_this_step:
            logger.warning("%s Skipping this optimizer step (nonfinite_policy='skip').", message)
        self._skip_this_step = True
        self._skip_reasons.append(message)

    def check_finite(self, quantity: str, tensor: torch.Tensor, cause: str) -> bool:
        """``True`` when ``tensor`` is finite; otherwise :meth:`nonfinite` (raises, or marks the step) and ``False``."""
        value = first_nonfinite(tensor)
        if value is None:
            return True
        self.nonfinite(f"{quantity} (e.g. {value})", cause)
        return False

    def _record_skip(self) -> None:
        _, limit = self._guard_policy
        self._skipped_steps += 1
        self._consecutive_skips += 1
        reasons, self._skip_this_step, self._skip_reasons = self._skip_reasons, False, []
        mode = "train"
        if hasattr(self, "_metrics"):
            self._metrics[mode]["nonfinite/skipped_steps"].append(float(self._skipped_steps))
        if self._consecutive_skips >= limit:
            raise NonFiniteError(
                f"{self._consecutive_skips} consecutive optimizer steps were skipped for non-finite values "
                f"(max_nonfinite_skips={limit}); the last: {reasons[-1] if reasons else 'a gradient'} Stopping: "
                "lower the learning rate, check the teacher's logits, or use bf16 instead of fp16."
            )

    _gradient_report: list[str] | None = None

    def _clip_grad_norm(self, model):
        # Before clipping: a NaN total norm would spread NaN to every gradient and hide the parameter it came from.
        self._gradient_report = self._nonfinite_gradients()
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None and self._gradient_report is None:  # no clipping: the norm is taken with max_norm=inf
            self._gradient_report = self._nonfinite_gradients()
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _nonfinite_gradients(self) -> list[str]:
        """Names of the trainable parameters whose gradient has a NaN or an infinity."""
        model = self.accelerator.unwrap_model(self.model)
        return [
            name
            for name, param in model.named_parameters()
            if param.grad is not None and not bool(torch.isfinite(param.grad).all())
        ]

    def _reduce_flag(self, flag: bool) -> bool:
        """``flag`` or-ed over processes (sharded gradients: each process sees its own shard)."""
        if self.accelerator.num_processes == 1:
            return flag
        tensor = torch.tensor([float(flag)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(tensor, reduction="sum").item() > 0)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not math.isfinite(float(loss.detach())):
            self.nonfinite(
                f"the training loss ({float(loss.detach())})",
                "the student's logits overflowed (learning rate, fp16) or the teacher produced NaN/inf logits",
            )
            return torch.zeros_like(loss)  # keep the logged running loss finite; the step is skipped
        return loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model`` (also behind every checkpoint), refused when a trainable parameter is not finite."""
        model = self.accelerator.unwrap_model(self.model)
        bad = nonfinite_trainable_parameters(model)
        if self._reduce_flag(bool(bad)):
            raise NonFiniteError(
                f"Refusing to save to {output_dir or self.args.output_dir}: {len(bad)} trainable parameter tensor(s) "
                f"hold NaN or inf ({', '.join(bad[:3])}). The last checkpoint on disk is the last good one; resume "
                "from it with a lower learning rate."
            )
        return super().save_model(output_dir, _internal_call)
