"""``run_lab``: the chosen experiments in registry order, the longest (compounding) in a second process."""

from __future__ import annotations

import concurrent.futures
import copy
import multiprocessing
import os
import time
from dataclasses import asdict

from .context import Lab
from .experiments import EXPERIMENTS, count_runs
from .settings import RESULTS_SCHEMA, LabSize


BACKGROUND = "compounding"  # the experiment that runs in a second process (the longest; it reuses no other's runs)


def _experiment_in_child(size: LabSize, seed: int, name: str) -> tuple[dict, float, dict]:
    """Run one experiment in a fresh process (its own Lab and teachers, trained from the same seeds); returns its
    results, its seconds and the teachers it trained."""
    lab = Lab(size, seed=seed)
    start = time.perf_counter()
    return EXPERIMENTS[name].run(lab, {}), time.perf_counter() - start, lab.teachers


def run_lab(
    size: LabSize,
    experiments=tuple(EXPERIMENTS),
    seed: int = 0,
    progress=None,
    parallel: bool | None = None,
) -> dict:
    """Run the chosen experiments; returns every raw number (``write_report`` turns it into report.md and PNGs).

    With ``parallel`` (the default on a machine with 2 or more cores) the compounding experiment, the longest,
    runs in a second process while the others run in this one: each process uses one thread, and the second trains
    its own copy of the chain teacher from the same seed, so the numbers are those of a sequential run.
    """
    if seed:
        size = copy.deepcopy(size)
        size.seeds = [seed + s for s in size.seeds]
        size.cheap_seeds = [seed + s for s in size.cheap_seeds]
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2
    wall = time.perf_counter()
    lab = Lab(size, seed=seed, progress=progress)
    results: dict = {"schema": RESULTS_SCHEMA, "size": asdict(size), "experiments": list(experiments), "seconds": {}}
    background = pool = None
    if parallel and BACKGROUND in experiments and len(set(experiments)) > 1:
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        background = pool.submit(_experiment_in_child, size, seed, BACKGROUND)
    try:
        for name, experiment in EXPERIMENTS.items():
            if name not in experiments or (name == BACKGROUND and background):
                continue
            start = time.perf_counter()
            results[name] = experiment.run(lab, results)
            results["seconds"][name] = time.perf_counter() - start
        if background is not None:
            results[BACKGROUND], results["seconds"][BACKGROUND], teachers = background.result()
            for key, value in teachers.items():
                lab.teachers.setdefault(key, value)
            if progress is not None:
                progress.set_postfix_str(f"{BACKGROUND} (second process)")
                progress.update(count_runs(size, (BACKGROUND,)))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    results["teachers"] = lab.teachers
    results["wall_seconds"] = time.perf_counter() - wall
    return results
