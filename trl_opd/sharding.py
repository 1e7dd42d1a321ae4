"""Engine-aware access to parameters that trl-opd reads directly: the heads of the fused loss and of scoring.

The chunked engine (:mod:`trl_opd.divergences.engine`) never calls a model's ``lm_head`` module: it reads
``lm_head.weight`` and projects hidden states chunk by chunk. Each engine keeps that weight somewhere else between
module calls:

- **DDP, ZeRO-1/2, one process**: every rank holds the full weight; nothing to do.
- **DeepSpeed ZeRO-3**: every parameter is partitioned to ``numel 0`` and re-materialized only inside its own module's
  forward hook, which never fires for a direct read. :func:`gathered_heads` all-gathers the heads for the duration of
  the read (TRL's ``maybe_gather_lm_head_ctx``: ``deepspeed.zero.GatheredParameters``, no-op for parameters already
  ``AVAILABLE``, e.g. small ones under ``stage3_param_persistence_threshold`` or a tied embedding in use). The loss
  runs inside the student's forward (``_forward_redirection``), so the gradient the fused loss returns for the full
  weight is reduce-scattered by ZeRO-3's hooks like any other.
- **FSDP2** (``fully_shard``): a sharded parameter is a ``DTensor`` holding ``1/world`` of the rows. Inside the
  wrapped forward of the module that owns it the parameter is unsharded (a plain tensor); outside (the teacher, whose
  forward already returned) :func:`full_head` materializes it with ``DTensor.full_tensor()`` (an all-gather), and a
  no-grad call of a submodule runs inside :func:`unsharded`.

Cost of a gather: the full head, ``V × H × bytes`` on every rank for the duration of one loss or scoring call, e.g.
Qwen2.5-32B's 152064 × 5120 in bf16 = 1.56 GB, Qwen2.5-7B's 152064 × 3584 = 1.09 GB
(:func:`trl_opd.memory.multi_gpu.head_gather_bytes`; ``trl-opd plan --engine`` adds it to the per-GPU peak). The
engine projects the gathered head in row chunks, so the logits stay ``chunk × V`` float32; gathering the head itself
per vocabulary shard would need the engine's softmax statistics reduced across ranks and is not done.

:func:`local_numel` counts the parameter elements a rank actually holds (ZeRO-3 partitions, FSDP2 local shards), the
measure the tests use to prove where a teacher lives; :func:`prepare_frozen` places a frozen model (the teacher, a
reference) by a :data:`PLACEMENTS` choice.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack, contextmanager

import torch

from .divergences import LMHead


logger = logging.getLogger(__name__)

#: How a frozen model (teacher, reference) is placed under a sharding engine: ``"sharded"`` (ZeRO-3 partitions /
#: FSDP2 shards, like the student) or ``"replica"`` (a full copy on every rank, as TRL does under FSDP).
PLACEMENTS = ("sharded", "replica")


def engine_of(accelerator) -> str:
    """``"single"``, ``"ddp"``, ``"zero1"``/``"zero2"``/``"zero3"`` or ``"fsdp1"``/``"fsdp2"``: the engine an
    ``accelerate.Accelerator`` runs."""
    state = accelerator.state
    if getattr(state, "deepspeed_plugin", None) is not None:
        return f"zero{state.deepspeed_plugin.zero_stage}"
    if getattr(state, "fsdp_plugin", None) is not None and str(state.distributed_type).endswith("FSDP"):
        return f"fsdp{state.fsdp_plugin.fsdp_version}"
    return "ddp" if accelerator.num_processes > 1 else "single"


def _head_parameters(model) -> list[torch.Tensor]:
    head = model.get_output_embeddings()
    return [p for p in (head.weight, head.bias) if p is not None]


@contextmanager
def gathered_heads(*models):
    """Hold the output embeddings of ``models`` full on every rank for the block (ZeRO-3; a no-op otherwise).

    An :class:`LMHead` holding the parameters themselves (:func:`full_head`, ``LMHead.of``) sees the full weight inside
    the block; a detached copy taken before it keeps the partitioned ``numel 0`` tensor. Parameters shared by several
    models (tied embeddings, a PEFT reference) are gathered once.
    """
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    params = [p for model in models if model is not None for p in _head_parameters(model)]
    with ExitStack() as stack:
        if params:
            stack.enter_context(maybe_gather_lm_head_ctx(*params))
        yield


def _full(tensor: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None:
        return None
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_head(model) -> LMHead:
    """``LMHead.of(model)`` with FSDP2-sharded weights made full (``DTensor.full_tensor()``: an all-gather,
    differentiable); other weights are the parameters themselves, so under ZeRO-3 the head can be taken before and used
    inside :func:`gathered_heads` (which fills the same parameters in place)."""
    head = LMHead.of(model)
    return LMHead(_full(head.weight), _full(head.bias), head.scale, head.softcap)


@contextmanager
def unsharded(*models):
    """Hold each FSDP2 model's root parameter group (the embeddings, the head, and every parameter not in a wrapped
    layer) unsharded for the block, so a no-grad call of a submodule (``model.base_model`` for hidden states) or a
    direct read of the head sees full tensors: outside the root's own forward they are ``DTensor`` shards. Other
    models are left alone (DeepSpeed ZeRO-3 gathers in each submodule's own forward hook; DDP and one process hold
    full weights); a model given twice is unsharded once."""
    from torch.distributed.fsdp import FSDPModule

    sharded = list({id(m): m for m in models if isinstance(m, FSDPModule)}.values())
    for model in sharded:
        model.unshard()
    try:
        yield
    finally:
        for model in sharded:
            model.reshard()


def refuse_sharded_student(args, trainer: str, why: str) -> None:
    """Refuse a trainer that cannot run with a sharded student (DeepSpeed ZeRO-3, FSDP) before anything is loaded:
    ``args`` is its ``TrainingArguments`` (which carry accelerate's DeepSpeed plugin) and ``why`` what would fail."""
    stage = getattr(getattr(args, "deepspeed_plugin", None), "zero_stage", None)
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(getattr(args, "fsdp", None))
    if stage == 3 or fsdp:
        engine = "DeepSpeed ZeRO-3" if stage == 3 else "FSDP"
        raise ValueError(
            f"{trainer} does not support {engine} yet: {why}. Run it with DDP or DeepSpeed ZeRO-1/2 "
            "(docs/multi-gpu.md)."
        )


def local_numel(model) -> int:
    """Parameter elements this rank holds: ZeRO-3 partitions (``ds_tensor``), FSDP2 local shards, else full."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in model.parameters():
        if hasattr(p, "ds_tensor"):
            total += p.ds_tensor.numel()
        elif isinstance(p, DTensor):
            total += p.to_local().numel()
        else:
            total += p.numel()
    return total


def prepare_frozen(model, accelerator, placement: str = "sharded"):
    """Place a frozen ``model`` for a trainer's ``accelerator`` by ``placement`` (:data:`PLACEMENTS`).

    DeepSpeed: TRL's ``prepare_deepspeed`` (its inference engine: partitioned at stage 3, a replica at stages 0-2;
    ``placement`` cannot make a ZeRO-3 teacher a replica and raises if asked). FSDP2: ``"sharded"`` is TRL's
    ``prepare_fsdp`` (``fully_shard`` with the student's plugin and mesh), ``"replica"`` accelerate's evaluation-mode
    ``prepare_model`` (TRL's own choice for its teachers). One process, DDP: a replica whatever ``placement`` says.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"teacher_placement={placement!r}: choose one of {', '.join(map(repr, PLACEMENTS))}.")
    engine = engine_of(accelerator)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not engine.startswith("fsdp"):
        logger.warning(
            "accelerate was launched with an FSDP config but runs %s: accelerate 1.16 turns FSDP configs into DDP on "
            "CPU processes (use_cpu: true). Nothing is sharded; docs/multi-gpu.md (Known limits).",
            engine,
        )
    if engine.startswith("zero"):
        if engine == "zero3" and placement == "replica":
            raise ValueError(
                "teacher_placement='replica' under DeepSpeed ZeRO-3: DeepSpeed partitions every model it prepares at "
                "stage 3. Use teacher_placement='sharded', or ZeRO-2 for a replicated teacher."
            )
        from trl.models import prepare_deepspeed

        return prepare_deepspeed(model, accelerator)
    if engine == "fsdp2" and placement == "sharded":
        from trl.models.utils import prepare_fsdp

        return prepare_fsdp(model, accelerator)
    return accelerator.prepare_model(model, evaluation_mode=True)
