"""Test-harness shim: let accelerate 1.16 run an FSDP config on CPU processes (gloo), for the engine matrix only.

accelerate turns an FSDP config into ``DistributedType.FSDP`` only on accelerator backends (``MULTI_GPU``, ``MULTI_XPU``
...; ``accelerate/state.py``, ``AcceleratorState.__init__``). On CPU (``use_cpu: true``) the same config launches as
``MULTI_CPU`` and the student is silently wrapped in DDP. This shim re-runs that one branch for ``MULTI_CPU``: when
``ACCELERATE_USE_FSDP=true`` (set by ``accelerate launch`` from the config) it sets the state to ``FSDP`` with the
plugin the ``Accelerator`` built from the config, so ``prepare`` calls ``fully_shard`` on a gloo CPU mesh. Everything
after that (wrapping, the forward/backward hooks, the optimizer on DTensor shards) is accelerate's and torch's own code.

Not in the package: on GPUs accelerate reaches the same branch by itself.
"""

import os

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


def install() -> None:
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    original = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = __init__
