"""What ``trl-opd plan`` prints: the text table of a :class:`~trl_opd.memory.MemoryEstimate` and its plain data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from .parts import (
    ALLOCATOR_OVERHEAD,
    CUDA_CONTEXT_BYTES,
    GIB,
    GPU_SIZES_GB,
    ONE_AT_A_TIME,
    PART_LABELS,
    PERSISTENT,
    PHASES,
)


def table(estimate, gpu_sizes: Sequence[float] = GPU_SIZES_GB, fixes: bool = True) -> str:
    """A text table of the parts (GiB, and in which phase each is alive), the phase totals and the fit per GPU."""
    gib = lambda x: f"{x / GIB:8.2f}"  # noqa: E731
    plan = estimate.plan
    lines = [
        f"student: {estimate.student.name} ({estimate.student.num_parameters() / 1e9:.2f} B params)   "
        f"teacher: {estimate.teacher.name} ({estimate.teacher.num_parameters() / 1e9:.2f} B params)",
        plan.describe(),
        "",
        f"{'part':<24}{'GiB':>8}  alive in",
    ]
    for part, label in PART_LABELS.items():
        if part == "vllm_reserved":
            if plan.generation_backend == "vllm":
                lines.append(f"{label:<24}{'':>8}  every phase: {plan.vllm_gpu_memory_utilization:.2f} × card")
            continue
        if part not in estimate.parts:
            continue
        lines.append(f"{label:<24}{gib(estimate.parts[part])}  {_alive_in(estimate, part)}")
    card = max(gpu_sizes) if plan.generation_backend == "vllm" else None
    lines.append("")
    for phase in PHASES:
        marker = "  <- peak" if phase == estimate.peak_phase(card) else ""
        lines.append(f"{'phase: ' + phase:<24}{gib(estimate.phase_bytes(phase, card))}{marker}")
    lines.append(
        f"{'CUDA context + alloc.':<24}{gib(estimate.total_for(card) - estimate.peak_allocated(card))}  "
        f"({CUDA_CONTEXT_BYTES / GIB:.2f} GiB + {ALLOCATOR_OVERHEAD:.0%} of the peak)"
    )
    suffix = f" (vLLM share of a {card:g} GB card included)" if card else ""
    lines.append(f"{'predicted total':<24}{gib(estimate.total_for(card))}{suffix}")
    lines.append("")
    for gb in gpu_sizes:
        room = estimate.headroom_gib(gb)
        verdict = f"fits ({room:.1f} GiB free)" if room >= 0 else f"does not fit (short by {-room:.1f} GiB)"
        line = f"{gb:>4g} GB: {verdict}"
        if room < 0 and fixes:
            try:
                fix = estimate.cheapest_fix(gb)
                line += f"; cheapest fix: {fix.description} -> {fix.estimate.total_gib(gb):.1f} GiB"
            except ValueError:
                line += "; no change in the list makes it fit"
        lines.append(line)
    lines.extend(f"note: {note}" for note in estimate.notes)
    return "\n".join(lines)


def _alive_in(estimate, part: str) -> str:
    """The table's "alive in" column: the phases a part lives in, or why a part is absent from this stage."""
    if part in ("teacher_weights", "teacher_forward") and not estimate.plan.loads_teacher:
        source = "a vLLM server" if estimate.plan.teacher_source == "server" else "the teacher cache"
        return f"not on this GPU (targets from {source})"
    if part in ("kv_cache", "generation_workspace") and not estimate.plan.generates:
        return "none (an off-policy stage generates nothing)"
    if part in PERSISTENT:
        return "every phase"
    if part in ONE_AT_A_TIME:
        counted = part in estimate.phase_parts["training"]
        return "training, one at a time" + (" (the largest: counted)" if counted else "")
    return ", ".join(p for p in PHASES if part in estimate.phase_parts[p])


def to_dict(estimate, gpu_sizes: Sequence[float] = GPU_SIZES_GB) -> dict:
    """Plain data (bytes) for JSON output."""
    return {
        "student": estimate.student.name,
        "teacher": estimate.teacher.name,
        "plan": asdict(estimate.plan),
        "parts_bytes": {k: int(v) for k, v in estimate.parts.items()},
        "phases_bytes": {p: int(estimate.phase_bytes(p, max(gpu_sizes))) for p in PHASES},
        "fits": {str(gb): estimate.fits(gb) for gb in gpu_sizes},
        "total_bytes": {str(gb): int(estimate.total_for(gb)) for gb in gpu_sizes},
    }
