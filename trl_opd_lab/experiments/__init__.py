"""The lab's experiments, one module each, and the registry that drives both the run and the report.

Each module owns its ``run``, its ``verdict``, its report ``section`` (tables and plot) and its run count, and exports
them as an :class:`~trl_opd_lab.experiments.base.Experiment`. ``EXPERIMENTS`` maps each name to its record, in the
order the lab runs and reports them. Importing the registry loads no torch (each ``run`` imports what it needs), so
the command line lists the experiments at once.
"""

from __future__ import annotations

from . import ablation, compounding, modes, opsd, schedules, spin, tip
from .base import Experiment


EXPERIMENTS: dict[str, Experiment] = {
    module.EXPERIMENT.name: module.EXPERIMENT for module in (compounding, modes, ablation, spin, tip, schedules, opsd)
}


CHAIN_EXPERIMENTS = ("compounding", "ablation", "tip", "schedules")  # run once per teacher seed (the chain teacher)


def count_runs(size, experiments) -> int:
    """Progress ticks of a lab run of ``experiments`` at ``size``, from each experiment's own settings (the chain
    experiments once per teacher seed)."""
    return sum(
        EXPERIMENTS[name].count_runs(size, experiments) * (len(size.teacher_seeds) if name in CHAIN_EXPERIMENTS else 1)
        for name in EXPERIMENTS
        if name in experiments
    )


def __getattr__(name):
    if name == "RandomTokenImportance":  # it lives in trl_opd_lab.controls (imports torch)
        from ..controls import RandomTokenImportance

        return RandomTokenImportance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CHAIN_EXPERIMENTS", "EXPERIMENTS", "Experiment", "RandomTokenImportance", "count_runs"]
