r"""Per-GPU memory of a multi-GPU run: :func:`per_gpu` divides a one-GPU :class:`~trl_opd.memory.MemoryEstimate` by
the engine's sharding and the teacher's placement.

Each of ``gpus`` ranks holds (``/ n``: this part is split over the n GPUs)::

    part                 ddp     zero1   zero2   zero3   fsdp2
    student weights      full    full    full    / n     / n
    LoRA adapters        full    full    full    / n     / n
    optimizer states     full    / n     / n     / n     / n
    gradients            full    full    / n     / n     / n
    activations, KV cache, loss chunks, teacher forward: per rank as on one GPU (each rank runs its own micro-batch)

The teacher (``teacher_placement``, the trainers' config field of the same name): ``"replica"`` full on every rank
(DDP, ZeRO-1/2 always; FSDP2 optionally), ``"sharded"`` ``/ n`` (ZeRO-3 always, FSDP2 by default:
:func:`trl_opd.sharding.prepare_frozen`). A teacher offloaded to CPU is not offered: the trainers do not implement it.

A sharded model materializes what it computes with, on top: the parts ``gathered layers`` (the student's largest
decoder layer, full, and the next one prefetched: 2 layers; the same for a sharded teacher during its forward)
and ``gathered heads`` (the full ``lm_head`` of the student and of a sharded teacher while the fused loss runs,
``V × H × bytes`` each: :func:`head_gather_bytes`). Both are counted in the training phase (an upper bound: the
teacher's layers and the heads are not alive at the same moment).
"""

from __future__ import annotations

from dataclasses import dataclass

from .estimate import MemoryEstimate
from .shapes import ModelShape, weight_bytes


ENGINES = ("ddp", "zero1", "zero2", "zero3", "fsdp2")
TEACHER_PLACEMENTS = ("replica", "sharded")  # as trl_opd.sharding.PLACEMENTS (this package imports no torch)
#: Which parts each engine splits over the GPUs.
SPLIT = {
    "ddp": (),
    "zero1": ("optimizer_states",),
    "zero2": ("optimizer_states", "gradients"),
    "zero3": ("student_weights", "adapters", "optimizer_states", "gradients"),
    "fsdp2": ("student_weights", "adapters", "optimizer_states", "gradients"),
}
SHARDING_ENGINES = ("zero3", "fsdp2")
PREFETCHED_LAYERS = 2


def head_gather_bytes(vocab_size: int, hidden_size: int, bytes_per_param: float) -> int:
    """Bytes one rank holds while a full head is gathered: ``vocab_size × hidden_size × bytes_per_param``
    (Qwen2.5-32B's 152064 × 5120 in bf16: 1.56 GB)."""
    return int(vocab_size * hidden_size * bytes_per_param)


def layer_bytes(shape: ModelShape, quant: str, double_quant: bool = False) -> float:
    """Bytes of one decoder layer: the model's weight bytes per parameter times a layer's parameters."""
    per_param = weight_bytes(shape, quant, double_quant) / shape.num_parameters()
    return per_param * (shape.layer_linear_weights() + shape.layer_other_params())


def _head_bytes(shape: ModelShape, quant: str) -> int:
    return head_gather_bytes(shape.vocab_size, shape.hidden_size, 4 if quant == "fp32" else 2)


@dataclass(frozen=True)
class PerGPU:
    """The estimate of one rank (a :class:`MemoryEstimate`: ``table``, ``fits``, ``total_gib``) and the setup."""

    engine: str
    gpus: int
    teacher_placement: str
    estimate: MemoryEstimate

    def describe(self) -> str:
        return f"{self.engine} on {self.gpus} GPUs, teacher {self.teacher_placement}"


def valid_placements(engine: str) -> tuple[str, ...]:
    """The teacher placements an engine offers: sharding needs ZeRO-3 or FSDP2; ZeRO-3 always partitions it."""
    if engine == "zero3":
        return ("sharded",)
    return TEACHER_PLACEMENTS if engine in SHARDING_ENGINES else ("replica",)


def per_gpu(estimate: MemoryEstimate, engine: str, gpus: int, teacher_placement: str = "sharded") -> PerGPU:
    """The memory of one of ``gpus`` ranks under ``engine`` with the teacher placed by ``teacher_placement``."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose one of {', '.join(ENGINES)}.")
    if gpus < 1:
        raise ValueError(f"gpus={gpus}: a run has at least 1 GPU.")
    if teacher_placement not in valid_placements(engine):
        raise ValueError(
            f"teacher_placement={teacher_placement!r} under {engine}: choose one of "
            f"{', '.join(valid_placements(engine))} (a sharded teacher needs zero3 or fsdp2; zero3 always shards it)."
        )
    plan, parts = estimate.plan, dict(estimate.parts)
    for part in SPLIT[engine]:
        parts[part] = parts[part] / gpus
    student, teacher = estimate.student, estimate.teacher
    gathered_layers = gathered_heads = 0.0
    if engine in SHARDING_ENGINES:
        gathered_layers = PREFETCHED_LAYERS * layer_bytes(student, plan.student_quant, plan.double_quant)
        gathered_heads = _head_bytes(student, plan.student_quant)
    if plan.loads_teacher:
        if teacher_placement == "sharded":
            parts["teacher_weights"] = parts["teacher_weights"] / gpus
            teacher_layer = layer_bytes(teacher, plan.teacher_quant, plan.double_quant)
            gathered_layers = max(gathered_layers, PREFETCHED_LAYERS * teacher_layer)
            gathered_heads += _head_bytes(teacher, plan.teacher_quant)
    parts["gathered_layers"], parts["gathered_heads"] = gathered_layers, gathered_heads
    phase_parts = dict(estimate.phase_parts)
    phase_parts["training"] = (*phase_parts["training"], "gathered_layers", "gathered_heads")
    phase_parts["generation"] = (*phase_parts["generation"], "gathered_layers")
    notes = [*estimate.notes, f"per GPU: {engine} on {gpus} GPUs, teacher {teacher_placement}"]
    per_rank = MemoryEstimate(student, teacher, plan, parts, phase_parts, notes)
    return PerGPU(engine, gpus, teacher_placement, per_rank)
