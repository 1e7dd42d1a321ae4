"""One float path for every x86-64 CPU: pin the kernels torch and MKL pick, before torch loads.

PyTorch chooses its vectorised CPU kernels by processor (AVX-512, AVX2 or none), MKL chooses its matmul code path the
same way, and oneDNN its ISA. Each choice sums in its own order, so softmax, log_softmax, layer_norm, reductions and
matmuls differ in their last bits between an AVX-512 Intel and an AVX2-only AMD, and a tiny training run ends
elsewhere. All three read an environment variable once, when torch loads:

    ATEN_CPU_CAPABILITY=avx2   MKL_CBWR=AVX2   ONEDNN_MAX_CPU_ISA=AVX2   (and OMP_NUM_THREADS=1)

Every x86-64 CPU with AVX2 (Intel since 2013, AMD since 2015) runs that path, so with the pin a run computes the
same bits on all of them. :func:`pin_float_path` sets these with ``setdefault`` (a variable already set is kept,
so a run on another path stays possible on purpose). The test suite and ``trl-opd lab`` call it before they import
torch; :func:`float_path` reports the path actually in effect (for provenance and for the suite's guard).

This module imports no torch: it must run before torch does.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import MutableMapping


#: The pinned path: the variables and the values that every AVX2 x86-64 CPU can run.
PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": "1",
}
#: What ``torch.backends.cpu.get_cpu_capability()`` answers for each ``ATEN_CPU_CAPABILITY`` value.
CAPABILITY_NAMES = {"default": "DEFAULT", "avx2": "AVX2", "avx512": "AVX512", "zvector": "ZVECTOR"}


class FloatPathError(RuntimeError):
    """The pin cannot take effect (torch was imported first), or the path in effect is not the one asked for."""


def cpu_has_avx2() -> bool:
    """Whether this processor runs AVX2 code: an x86-64 CPU whose /proc/cpuinfo lists ``avx2`` (assumed on x86-64
    where /proc/cpuinfo cannot be read, as on macOS and Windows: every x86-64 Mac since 2013 has it)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx2" in line.split()
    except OSError:
        return True
    return False


def pin_float_path(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`PINNED` in ``environ`` (default ``os.environ``) where unset; returns the variables this call set.

    On a processor without AVX2 (ARM, or an x86 CPU older than 2013) only ``OMP_NUM_THREADS`` is pinned: there is
    no common path to pin, and :func:`float_path` reports the native one.

    Raises :class:`FloatPathError` when a variable is still unset and torch is already imported, since torch, MKL and
    oneDNN read these variables when they load: whatever imported torch first must come after the pin. (Where every
    variable is already set, as in the test suite, there is nothing to do and nothing to refuse.)
    """
    environ = os.environ if environ is None else environ
    wanted = PINNED if cpu_has_avx2() else {"OMP_NUM_THREADS": PINNED["OMP_NUM_THREADS"]}
    missing = {key: value for key, value in wanted.items() if key not in environ}
    if missing and environ is os.environ and "torch" in sys.modules:
        raise FloatPathError(
            "torch was imported before the float path was pinned, so the pin cannot take effect. Call "
            "trl_opd.float_path.pin_float_path() before anything imports torch (a pytest plugin or a module imported "
            "earlier may be the cause), or export " + " ".join(f"{k}={v}" for k, v in missing.items()) + " yourself."
        )
    environ.update(missing)
    return missing


def is_pinned(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether ``environ`` asks for exactly the pinned path (every variable of :data:`PINNED` at its value)."""
    environ = os.environ if environ is None else environ
    return all(environ.get(key) == value for key, value in PINNED.items())


def float_path() -> dict:
    """The float path in effect in this process (imports torch): the variables as set, the kernel capability torch
    dispatches to, and whether that is the pinned path. Stored in the lab's ``results.json``."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    variables = {key: os.environ.get(key) for key in PINNED}
    return {
        "variables": variables,
        "torch_cpu_capability": capability,
        "mkl": torch.backends.mkl.is_available(),
        "pinned": is_pinned() and capability == CAPABILITY_NAMES[PINNED["ATEN_CPU_CAPABILITY"]],
    }


def check_float_path() -> dict:
    """:func:`float_path`, raising :class:`FloatPathError` when torch dispatches to another capability than
    ``ATEN_CPU_CAPABILITY`` asks for (the variable was set after torch had chosen, or names a path this CPU lacks)."""
    path = float_path()
    asked = (os.environ.get("ATEN_CPU_CAPABILITY") or "").lower()
    if asked in CAPABILITY_NAMES and path["torch_cpu_capability"] != CAPABILITY_NAMES[asked]:
        raise FloatPathError(
            f"ATEN_CPU_CAPABILITY={asked} asks for the {CAPABILITY_NAMES[asked]} kernels, but torch dispatches to "
            f"{path['torch_cpu_capability']}: torch chose its kernels before the variable was set (it was imported "
            "first), or this CPU cannot run that path."
        )
    return path


def describe(path: dict | None) -> str:
    """One phrase for a report: ``pinned float path (AVX2 kernels, MKL_CBWR=AVX2, ...)`` or the native one."""
    if not path:
        return "float path not recorded"
    variables = ", ".join(f"{k}={v}" for k, v in path["variables"].items() if v is not None) or "no variables set"
    kind = "pinned float path" if path.get("pinned") else "native float path"
    return f"{kind} ({path['torch_cpu_capability']} kernels; {variables})"
