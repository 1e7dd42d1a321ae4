"""``run_lab``: the chosen experiments in registry order, the longest (compounding) in a second process; the chain
experiments once per teacher seed."""

from __future__ import annotations

import concurrent.futures
import copy
import multiprocessing
import os
import time
from dataclasses import asdict

from .context import Lab
from .experiments import CHAIN_EXPERIMENTS, EXPERIMENTS, count_runs
from .provenance import provenance
from .settings import RESULTS_SCHEMA, LabSize


def merge_teachers(per_teacher: dict[int, dict]) -> dict:
    """One experiment's results over several teacher seeds: the first teacher's fields, every run tagged with its
    ``teacher_seed``, and each teacher's other fields under ``by_teacher`` (one teacher: its results unchanged)."""
    if len(per_teacher) == 1:
        return next(iter(per_teacher.values()))
    first = next(iter(per_teacher.values()))
    merged = {key: value for key, value in first.items() if key != "runs"}
    merged["runs"] = [{**r, "teacher_seed": t} for t, res in per_teacher.items() for r in res["runs"]]
    merged["by_teacher"] = {str(t): {k: v for k, v in res.items() if k != "runs"} for t, res in per_teacher.items()}
    return merged


def _run_experiment(name: str, labs: dict[int, Lab], earlier: dict[int, dict]) -> dict:
    """``name`` on every teacher's lab (chain experiments) or on the first one; ``earlier[t]``: teacher t's results
    so far (TIP reuses its ablation's runs)."""
    experiment = EXPERIMENTS[name]
    teachers = list(labs) if name in CHAIN_EXPERIMENTS else list(labs)[:1]
    per_teacher = {}
    for t in teachers:
        per_teacher[t] = experiment.run(labs[t], earlier.setdefault(t, {}))
        earlier[t][name] = per_teacher[t]
    return merge_teachers(per_teacher)


def _labs(size: LabSize, teacher_seeds: list[int], progress=None) -> dict[int, Lab]:
    return {t: Lab(size, seed=t, progress=progress) for t in teacher_seeds}


def _teachers(labs: dict[int, Lab]) -> dict:
    """Every lab's trained teachers; with several teacher seeds, keyed ``chain@SEED`` after the first."""
    out = {}
    for i, (t, lab) in enumerate(labs.items()):
        for key, value in lab.teachers.items():
            out[key if i == 0 else f"{key}@{t}"] = {**value, "seed": t}
    return out


def _experiments_in_child(size: LabSize, teacher_seeds: list[int], names: list[str]) -> tuple[dict, dict, dict]:
    """Run experiments in a fresh process (its own Labs and teachers, trained from the same seeds); returns their
    results, their seconds and the teachers it trained."""
    labs = _labs(size, teacher_seeds)
    results, seconds, earlier = {}, {}, {}
    for name in names:
        start = time.perf_counter()
        results[name] = _run_experiment(name, labs, earlier)
        seconds[name] = time.perf_counter() - start
    return results, seconds, _teachers(labs)


def run_lab(
    size: LabSize,
    experiments=tuple(EXPERIMENTS),
    seed: int = 0,
    progress=None,
    parallel: bool | None = None,
    command: str | None = None,
) -> dict:
    """Run the chosen experiments; returns every raw number (``write_report`` turns it into report.md and PNGs).

    The chain experiments (:data:`~trl_opd_lab.experiments.CHAIN_EXPERIMENTS`) run once per teacher seed
    (``seed + t`` for t in ``size.teacher_seeds``; each run carries its ``teacher_seed``), the others once. With
    ``parallel`` (the default on a machine with 2 or more cores) the experiments in ``size.background`` (compounding,
    the longest; with --full also SPIN and TIP, to balance the two) run in a second process while the others run in
    this one: each process uses one thread, and the second trains its own copy of the chain teachers from the same
    seeds, so the numbers are those of a sequential run.
    """
    if seed:
        size = copy.deepcopy(size)
        size.seeds = [seed + s for s in size.seeds]
        size.cheap_seeds = [seed + s for s in size.cheap_seeds]
    teacher_seeds = [seed + t for t in size.teacher_seeds]
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2
    wall = time.perf_counter()
    labs = _labs(size, teacher_seeds, progress)
    results: dict = {
        "schema": RESULTS_SCHEMA,
        "size": asdict(size),
        "experiments": list(experiments),
        "seconds": {},
        "provenance": provenance(size, command, base_seed=seed, teacher_seeds=teacher_seeds),
    }
    background = pool = None
    second = [name for name in EXPERIMENTS if name in experiments and name in size.background]
    if parallel and second and len(set(experiments) - set(second)) > 0:
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        background = pool.submit(_experiments_in_child, size, teacher_seeds, second)
    else:
        second = []
    earlier: dict[int, dict] = {}
    try:
        for name in EXPERIMENTS:
            if name not in experiments or name in second:
                continue
            start = time.perf_counter()
            results[name] = _run_experiment(name, labs, earlier)
            results["seconds"][name] = time.perf_counter() - start
        teachers = _teachers(labs)
        if background is not None:
            child_results, child_seconds, child_teachers = background.result()
            results.update(child_results)
            results["seconds"].update(child_seconds)
            for key, value in child_teachers.items():
                teachers.setdefault(key, value)
            if progress is not None:
                progress.set_postfix_str(f"{', '.join(second)} (second process)")
                progress.update(count_runs(size, second))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    results["teachers"] = teachers
    results["wall_seconds"] = results["provenance"]["wall_seconds"] = time.perf_counter() - wall
    return results
