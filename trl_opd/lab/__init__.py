"""The OPD lab (``trl-opd lab``): the tutorial's experiments run for real with the package's trainers on tiny tasks."""

from .experiments import EXPERIMENTS, SIZES, Lab, LabSize, count_runs, run_lab
from .report import write_report


__all__ = [
    "EXPERIMENTS",
    "SIZES",
    "Lab",
    "LabSize",
    "count_runs",
    "run_lab",
    "write_report",
]
