r"""The estimate: :func:`predict` turns two shapes and a :class:`TrainingPlan` into a :class:`MemoryEstimate`, the
bytes of each part and the peak over the phases of a GKD step.

Phases of one step (the peak is the largest)::

    persistent = student weights + LoRA adapters + optimizer states + teacher weights (+ vLLM's reserved share)
    generation = persistent + KV cache + prefill workspace                 (student samples; no gradients alive)
    training   = persistent + gradients + activations + max(teacher forward, loss chunks, backward workspace)
                 (+ the cached teacher targets of the micro-batch)
    optimizer  = persistent + gradients                                      (fused AdamW: no large temporaries)
    total      = peak × (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_BYTES

A ``"cache"`` stage (off-policy, λ ≡ 0) has no teacher weights, no teacher forward and no generation on the GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .fixes import Fix, cheapest_fix
from .formulas import (
    activation_bytes,
    adapter_bytes_per_param,
    dequant_buffer_bytes,
    generation_workspace_bytes,
    kv_cache_bytes,
    loss_chunk_bytes,
    optimizer_state_bytes,
    teacher_cache_bytes_per_token,
    teacher_cache_read_bytes,
    teacher_forward_bytes,
    trainable_parameters,
)
from .parts import (
    ALLOCATOR_OVERHEAD,
    CUDA_CONTEXT_BYTES,
    GIB,
    GPU_SIZES_GB,
    ONE_AT_A_TIME,
    PERSISTENT,
    PHASES,
)
from .plan import TrainingPlan
from .render import table, to_dict
from .shapes import SUPPORTED_MODEL_TYPES, ModelShape, weight_bytes


@dataclass
class MemoryEstimate:
    """Predicted peak GPU memory of one GKD step, per part (bytes). Built by :func:`predict`.

    ``parts`` maps each part to its bytes; persistent parts (weights, adapters, optimizer states) are alive in every
    phase, the others only in theirs (``phase_parts``). ``peak_allocated`` is the largest phase, as
    ``torch.cuda.max_memory_allocated`` would report it; ``total`` adds :data:`ALLOCATOR_OVERHEAD` and
    :data:`CUDA_CONTEXT_BYTES`. ``vllm_reserved`` depends on the card, so :meth:`total_for` takes the GPU size.
    """

    student: ModelShape
    teacher: ModelShape
    plan: TrainingPlan
    parts: dict[str, float]
    phase_parts: dict[str, tuple[str, ...]]
    notes: list[str] = field(default_factory=list)

    def phase_bytes(self, phase: str, gpu_gb: float | None = None) -> float:
        """Bytes allocated at the peak of ``phase`` (persistent parts included; a colocated vLLM's share of a
        ``gpu_gb`` card too, when given)."""
        total = sum(self.parts[p] for p in PERSISTENT) + sum(self.parts[p] for p in self.phase_parts[phase])
        return total + self.vllm_bytes(gpu_gb)

    def vllm_bytes(self, gpu_gb: float | None) -> float:
        """What a colocated vLLM reserves on a ``gpu_gb`` card (0 for other backends or without a card)."""
        if self.plan.generation_backend != "vllm" or gpu_gb is None:
            return 0.0
        return self.plan.vllm_gpu_memory_utilization * gpu_gb * GIB

    def peak_phase(self, gpu_gb: float | None = None) -> str:
        return max(PHASES, key=lambda phase: self.phase_bytes(phase, gpu_gb))

    def peak_allocated(self, gpu_gb: float | None = None) -> float:
        """Predicted ``torch.cuda.max_memory_allocated()`` over the step, in bytes."""
        return max(self.phase_bytes(phase, gpu_gb) for phase in PHASES)

    def total_for(self, gpu_gb: float | None = None) -> float:
        """Predicted device memory in use at the peak: allocated × (1 + overhead) + CUDA context, in bytes."""
        return self.peak_allocated(gpu_gb) * (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_BYTES

    @property
    def total(self) -> float:
        """:meth:`total_for` without a card: a colocated vLLM's share is not included."""
        return self.total_for(None)

    def total_gib(self, gpu_gb: float | None = None) -> float:
        return self.total_for(gpu_gb) / GIB

    def headroom_gib(self, gpu_gb: float) -> float:
        """Free GiB on a card of ``gpu_gb`` GiB at the predicted peak (negative: short by that much)."""
        return gpu_gb - self.total_for(gpu_gb) / GIB

    def fits(self, gpu_gb: float) -> bool:
        """Whether the predicted peak, overheads included, fits a card of ``gpu_gb`` GiB."""
        return self.headroom_gib(gpu_gb) >= 0

    def replanned(self, **changes) -> MemoryEstimate:
        """The estimate of the same two models under this plan with ``changes`` (fields of :class:`TrainingPlan`)."""
        return predict(self.student, self.teacher, replace(self.plan, **changes))

    def cheapest_fix(self, gpu_gb: float) -> Fix | None:
        """The least costly change that makes this configuration fit ``gpu_gb``, as a :class:`Fix`; ``None`` if it
        already fits (see :func:`trl_opd.memory.fixes.cheapest_fix`)."""
        return cheapest_fix(self, gpu_gb)

    def table(self, gpu_sizes: Sequence[float] = GPU_SIZES_GB, fixes: bool = True) -> str:
        """A text table of the parts (GiB, and in which phase each is alive), the phase totals and the fit per GPU."""
        return table(self, gpu_sizes, fixes)

    def to_dict(self, gpu_sizes: Sequence[float] = GPU_SIZES_GB) -> dict:
        """Plain data (bytes) for JSON output."""
        return to_dict(self, gpu_sizes)


def predict(
    student: ModelShape | dict | str | os.PathLike,
    teacher: ModelShape | dict | str | os.PathLike,
    plan: TrainingPlan | None = None,
) -> MemoryEstimate:
    """Predict the peak GPU memory of a GKD step (student LoRA/full training, teacher scoring, on-policy generation).

    ``student``/``teacher``: :class:`ModelShape`, a ``config.json`` dict, a folder or a packaged shape name. With
    ``plan.teacher_source="cache"`` the teacher's shape only sets the vocabulary its cache was built with.
    """
    student, teacher = _as_shape(student, "student"), _as_shape(teacher, "teacher")
    plan = plan or TrainingPlan()
    shared_vocab = min(student.vocab_size, teacher.vocab_size)
    if plan.teacher_top_k is not None and plan.teacher_top_k > shared_vocab:
        raise ValueError(
            f"teacher_top_k={plan.teacher_top_k} exceeds the shared vocabulary of {shared_vocab} tokens: choose "
            f"k <= {shared_vocab} (k = {shared_vocab} is the full vocabulary plus an empty tail)."
        )
    notes = _shape_notes(student, teacher)
    trainable = trainable_parameters(student, plan)
    a = adapter_bytes_per_param(plan)
    acts = activation_bytes(student, plan)
    parts: dict[str, float] = {
        "student_weights": weight_bytes(student, plan.student_quant, plan.double_quant),
        "adapters": 0 if plan.full_finetuning else trainable * a,
        "optimizer_states": optimizer_state_bytes(student, plan),
        "gradients": trainable * a,
        "activations": acts["saved"],
        "backward_workspace": acts["recompute"] + acts["workspace"] + dequant_buffer_bytes(student, plan.student_quant),
        "loss_chunks": loss_chunk_bytes(student, teacher, plan),
        "teacher_weights": teacher_weight_bytes(student, teacher, plan, trainable * a),
        "teacher_forward": teacher_forward_bytes(teacher, plan),
    }
    if plan.generation_backend == "hf" and plan.generates:
        parts["kv_cache"] = kv_cache_bytes(student, plan)
        parts["generation_workspace"] = generation_workspace_bytes(student, plan)
    else:
        parts["kv_cache"] = parts["generation_workspace"] = 0.0
        if plan.generation_backend == "vllm":
            notes.append(
                "a colocated vLLM keeps its own copy of the student weights and its KV cache inside its share of the "
                "card; enable vllm_enable_sleep_mode to release it during training"
                if plan.generates
                else "an off-policy (cache) stage generates nothing: use generation_backend='hf' to free the colocated "
                "vLLM's share of the card"
            )
    training = ("gradients", "activations", _largest(parts, *ONE_AT_A_TIME))
    if plan.reads_teacher_cache:
        parts["teacher_cache_read"] = teacher_cache_read_bytes(plan)
        training += ("teacher_cache_read",)
        if plan.teacher_source == "server":
            notes.append(
                "teacher_source='server': the teacher runs on a vLLM server; no teacher weights or forward here"
            )
        elif not plan.loads_teacher:
            notes.append(
                "teacher_source='cache': an off-policy (λ ≡ 0) stage; no teacher weights, teacher forward or "
                "generation on this GPU"
            )
        k = plan.teacher_top_k
        notes.append(
            f"{'each answer of the teacher server' if plan.teacher_source == 'server' else 'the teacher cache'} holds "
            f"top-{k} ids and log-probabilities + 1 tail log-mass per completion token "
            f"({teacher_cache_bytes_per_token(k)} B); a micro-batch reads {parts['teacher_cache_read'] / 2**20:.2f} MiB"
        )
    phase_parts = {
        "generation": ("kv_cache", "generation_workspace"),
        # teacher forward, loss and the backward pass happen one after the other on top of the saved activations
        "training": training,
        "optimizer": ("gradients",),
    }
    if plan.full_finetuning:
        notes.append("full fine-tuning: gradients are counted as alive during the whole backward pass (an upper bound)")
    return MemoryEstimate(student, teacher, plan, parts, phase_parts, notes)


def teacher_weight_bytes(student: ModelShape, teacher: ModelShape, plan: TrainingPlan, trainable_bytes: float) -> float:
    """The teacher's weights on the card: a separate teacher's; for a self teacher (``plan.self_teacher``) none for
    ``base`` and ``live`` (the student's own weights), a copy of the student's for ``frozen``, and a copy of the
    trainable weights (the adapter under LoRA) for ``ema``."""
    if not plan.loads_teacher:
        return 0
    own = {"base": 0, "live": 0, "ema": trainable_bytes}
    if plan.self_teacher in own:
        return own[plan.self_teacher]
    if plan.self_teacher == "frozen":
        return weight_bytes(student, plan.student_quant, plan.double_quant) + (
            0 if plan.full_finetuning else trainable_bytes
        )
    return weight_bytes(teacher, plan.teacher_quant, plan.double_quant)


def _shape_notes(student: ModelShape, teacher: ModelShape) -> list[str]:
    """Notes on shapes the formulas approximate: an unchecked architecture, heads of different sizes."""
    notes = []
    for role, shape in (("student", student), ("teacher", teacher)):
        if not shape.supported:
            notes.append(
                f"the {role}'s model_type {shape.model_type!r} is planned as a Llama-style decoder (the formulas were "
                f"checked for {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
    if student.vocab_size != teacher.vocab_size:
        notes.append(
            f"heads of {student.vocab_size} and {teacher.vocab_size} rows: the loss compares the shared "
            f"{min(student.vocab_size, teacher.vocab_size)}"
        )
    return notes


def _largest(parts: dict[str, float], *names: str) -> str:
    return max(names, key=lambda n: parts[n])


def _as_shape(value, role: str) -> ModelShape:
    if isinstance(value, ModelShape):
        return value
    if isinstance(value, dict):
        return ModelShape.from_config(value, name=role)
    return ModelShape.from_dir(value)
