"""Where a lab run's numbers came from: package versions, torch threads, the processor, seeds, command, wall time.

The chain-task numbers depend on the float path: the kernels torch and MKL pick for the processor (the trained chain
teacher differs between, e.g., Intel with AVX-512 and AMD without it: float reductions run in another order).
``trl-opd lab`` pins one path that every x86-64 CPU with AVX2 runs (:mod:`trl_opd.float_path`), so its numbers are
the same bits on all of them; every results.json records the path in effect and the machine it ran on.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from trl_opd.float_path import describe as float_path_phrase


PACKAGES = ("trl-opd", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "numpy")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # the instruction sets that change float kernels


def cpu() -> dict:
    """The processor's model name and the float-kernel flags it has, from /proc/cpuinfo (platform's answer
    elsewhere)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model or platform.processor() or platform.machine(),
        "flags": [f for f in CPU_FLAGS if f in flags],
        "machine": platform.machine(),
    }


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(size, command: str | None = None, base_seed: int = 0, teacher_seeds=None) -> dict:
    """The record stored under ``results["provenance"]`` (the wall time is added when the run ends)."""
    import os

    import torch

    from trl_opd.float_path import float_path

    return {
        "command": command,
        "float_path": float_path(),
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": cpu(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "base_seed": base_seed,
        "student_seeds": list(size.seeds),
        "cheap_seeds": list(size.cheap_seeds),
        "teacher_seeds": list(teacher_seeds if teacher_seeds is not None else [base_seed]),
    }


def describe(prov: dict) -> str:
    """One sentence for the report."""
    v, c = prov.get("versions", {}), prov.get("cpu", {})
    flags = ", ".join(c.get("flags") or []) or "none of " + "/".join(CPU_FLAGS)
    pk = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    wall = prov.get("wall_seconds")
    path = prov.get("float_path")
    if path and path.get("pinned"):
        reproduce = (
            "On this pinned path every x86-64 CPU with AVX2 computes the same numbers bit for bit; `--native-float` "
            "runs on the processor's own kernels instead, where chain-task numbers differ between instruction sets."
        )
    else:
        reproduce = (
            "Chain-task numbers depend on the float path (the trained chain teacher differs between instruction "
            "sets); run without `--native-float` to get the pinned path that every AVX2 x86-64 CPU reproduces."
        )
    return (
        f"Ran on {c.get('model', '?')} ({prov.get('cores', '?')} cores; float-kernel flags: {flags}), "
        f"{prov.get('torch_threads', '?')} torch thread(s) per process, {float_path_phrase(path)}; {pk}"
        + (f"; wall time {wall:.0f} s" if wall is not None else "")
        + ". "
        + reproduce
    )
