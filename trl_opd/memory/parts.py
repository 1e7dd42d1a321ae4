"""The vocabulary of an estimate: its parts and their labels, the phases of a step, the overheads and GPU sizes.

Torch-free constants shared by :mod:`.estimate` (which computes the parts), :mod:`.render` (which prints them) and
:mod:`.fixes`.
"""

from __future__ import annotations


GIB = 2**30
#: CUDA context, cuBLAS/cuDNN handles and loaded kernels: memory the GPU holds that ``torch.cuda.max_memory_allocated``
#: does not see (typically 0.4-0.8 GiB with PyTorch 2.x on Ampere/Hopper). A stated constant, not measured here.
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
#: The caching allocator's rounding and fragmentation, as a fraction of the peak allocated bytes (reserved/allocated
#: is typically 1.02-1.10 for training loops with steady shapes). A stated constant, not measured here.
ALLOCATOR_OVERHEAD = 0.05
#: Nominal GPU sizes the planner reports on. "N GB" is taken as N GiB of device memory (A100 40/80 GB, A6000 48 GB,
#: RTX 4090 24 GB report that much; an L40S reports ~45 GiB and an A10G ~22 GiB: read the headroom column).
GPU_SIZES_GB = (24, 40, 48, 80)

PART_LABELS = {
    "student_weights": "student weights",
    "adapters": "LoRA adapters",
    "optimizer_states": "optimizer states",
    "gradients": "gradients",
    "activations": "activations (saved)",
    "backward_workspace": "backward workspace",
    "loss_chunks": "loss chunks",
    "kv_cache": "KV cache (generation)",
    "generation_workspace": "generation workspace",
    "vllm_reserved": "vLLM reserved",
    "teacher_weights": "teacher weights",
    "teacher_forward": "teacher forward",
    "teacher_cache_read": "teacher cache read",
    "gathered_layers": "gathered layers",  # multi-GPU (.multi_gpu): a sharded model's layers, materialized
    "gathered_heads": "gathered heads",
}
PHASES = ("generation", "training", "optimizer")
PERSISTENT = ("student_weights", "adapters", "optimizer_states", "teacher_weights")
ONE_AT_A_TIME = ("teacher_forward", "loss_chunks", "backward_workspace")  # sequential within the training phase
