"""The record by which an experiment plugs into the lab: how it runs, how many runs it counts, how it reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Experiment:
    """One lab experiment.

    Args:
        name: its name on the command line and its key in ``results.json``.
        run: ``run(lab, earlier)`` -> its results (a JSON-ready dict); ``earlier`` holds the results of the experiments
            that ran before it in this lab run (TIP reuses the ablation's all-tokens run).
        section: ``section(res, out, results)`` -> ``(markdown lines, summary)``: its report section, with its PNG
            written to ``out``; ``summary["verdict"]`` is the verdict computed from the numbers.
        count_runs: ``count_runs(size, experiments)`` -> the number of progress ticks ``run`` makes at that size when
            ``experiments`` run together.
    """

    name: str
    run: Callable[..., dict]
    section: Callable[[dict, Path, dict], tuple[list[str], dict]]
    count_runs: Callable[..., int]
