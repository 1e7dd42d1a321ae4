r"""Will it fit? Peak GPU memory of on-policy distillation, predicted from two ``config.json`` files.

:func:`predict` turns the student's and the teacher's shapes (:class:`ModelShape`, read from a ``config.json``) and
the training settings (:class:`TrainingPlan`) into a :class:`MemoryEstimate`: bytes per part (weights, adapters,
optimizer states, gradients, activations, loss chunks, KV cache of generation, teacher or teacher cache), the peak over
the three phases of a GKD step, and which GPU sizes fit. :meth:`MemoryEstimate.cheapest_fix` names the least costly
change that makes a configuration fit. The command line is ``trl-opd plan`` (:mod:`trl_opd.cli.plan`).

Everything here is arithmetic on config fields; nothing is loaded, and importing it imports neither torch,
transformers nor TRL. The formulas mirror what :class:`trl_opd.GKDTrainer` (on ``trl.DistillationTrainer``) actually
allocates, and ``tests/test_memory.py`` checks each part that exists on a CPU against a measurement made with
:class:`trl_opd.measurement.LiveTensorMeter` (``docs/memory.md`` lists the tolerances).

The modules, each importing only those above it:

* :mod:`.shapes`: :class:`ModelShape`, packaged shapes, :func:`weight_bytes` (fp32/bf16/fp16, NF4, int8);
* :mod:`.plan`: :class:`TrainingPlan`, its validation and its fields' command-line metadata;
* :mod:`.formulas`: the bytes of each part (activations, loss chunks, teacher forward, generation, teacher cache);
* :mod:`.parts`: the parts' labels, the phases, the overhead constants and the GPU sizes;
* :mod:`.fixes`: :data:`FIX_ORDER` and the search for the cheapest fix (it re-plans through the estimate it is given);
* :mod:`.render`: the text table and the JSON form;
* :mod:`.estimate`: :func:`predict` and :class:`MemoryEstimate` (whose ``cheapest_fix``, ``table`` and ``to_dict``
  call :mod:`.fixes` and :mod:`.render`);
* :mod:`.recipes`: the packaged 7B-student recipes.

Phases of one step (the peak is the largest)::

    persistent = student weights + LoRA adapters + optimizer states + teacher weights (+ vLLM's reserved share)
    generation = persistent + KV cache + prefill workspace                 (student samples; no gradients alive)
    training   = persistent + gradients + activations + max(teacher forward, loss chunks, backward workspace)
    optimizer  = persistent + gradients                                      (fused AdamW: no large temporaries)
    total      = peak × (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_BYTES
"""

from __future__ import annotations

import importlib

from ..divergences.registry import DIVERGENCES
from .estimate import MemoryEstimate, predict
from .fixes import FIX_ORDER, Fix, fix_candidates
from .formulas import (
    TOPK_BIN_TENSORS,
    TOPK_STUDENT_TILES,
    activation_bytes,
    adapter_bytes_per_param,
    backward_workspace_bytes_per_token,
    dequant_buffer_bytes,
    generation_workspace_bytes,
    kv_cache_bytes,
    layer_activation_bytes_per_token,
    lora_parameters,
    loss_chunk_bytes,
    no_grad_forward_bytes_per_token,
    optimizer_state_bytes,
    teacher_cache_bytes_per_token,
    teacher_cache_read_bytes,
    teacher_forward_bytes,
    tile_rows,
    trainable_parameters,
)
from .parts import ALLOCATOR_OVERHEAD, CUDA_CONTEXT_BYTES, GIB, GPU_SIZES_GB, PART_LABELS, PHASES
from .plan import GENERATION_BACKENDS, LORA_TARGETS, OPTIMIZERS, TEACHER_SOURCES, TrainingPlan
from .recipes import RECIPE_PLAN, RECIPES, recipe
from .shapes import (
    NF4_BLOCKSIZE,
    NF4_NESTED_BLOCKSIZE,
    QUANTIZATIONS,
    ConfigError,
    ModelShape,
    config_dir,
    nf4_linear_bytes,
    packaged_configs,
    weight_bytes,
)


#: Names that live in :mod:`trl_opd.measurement` (which imports torch): loaded on first use.
_MEASUREMENT = ("LiveTensorMeter", "storage_bytes")


def __getattr__(name):
    if name in _MEASUREMENT:
        return getattr(importlib.import_module("..measurement", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_MEASUREMENT])


__all__ = [
    "ALLOCATOR_OVERHEAD",
    "CUDA_CONTEXT_BYTES",
    "DIVERGENCES",
    "FIX_ORDER",
    "GENERATION_BACKENDS",
    "GIB",
    "GPU_SIZES_GB",
    "LORA_TARGETS",
    "NF4_BLOCKSIZE",
    "NF4_NESTED_BLOCKSIZE",
    "OPTIMIZERS",
    "PART_LABELS",
    "PHASES",
    "QUANTIZATIONS",
    "RECIPES",
    "RECIPE_PLAN",
    "TEACHER_SOURCES",
    "TOPK_BIN_TENSORS",
    "TOPK_STUDENT_TILES",
    "ConfigError",
    "Fix",
    "LiveTensorMeter",
    "MemoryEstimate",
    "ModelShape",
    "TrainingPlan",
    "activation_bytes",
    "adapter_bytes_per_param",
    "backward_workspace_bytes_per_token",
    "config_dir",
    "dequant_buffer_bytes",
    "fix_candidates",
    "generation_workspace_bytes",
    "kv_cache_bytes",
    "layer_activation_bytes_per_token",
    "lora_parameters",
    "loss_chunk_bytes",
    "nf4_linear_bytes",
    "no_grad_forward_bytes_per_token",
    "optimizer_state_bytes",
    "packaged_configs",
    "predict",
    "recipe",
    "storage_bytes",
    "teacher_cache_bytes_per_token",
    "teacher_cache_read_bytes",
    "teacher_forward_bytes",
    "tile_rows",
    "trainable_parameters",
    "weight_bytes",
]
