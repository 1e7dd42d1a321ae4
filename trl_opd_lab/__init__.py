"""The OPD lab (``trl-opd lab``): the tutorial's experiments run for real with the package's trainers on tiny tasks.

Layout: :mod:`.settings` (sizes and shared factor levels), :mod:`.tasks` (the synthetic tasks and their exact
metrics), :mod:`.context` (:class:`Lab`: teachers, GKD on the chain, evaluation), :mod:`.experiments` (one module per
experiment and the registry), :mod:`.stats` and :mod:`.plots` (shared by the sections), :mod:`.runner`
(:func:`run_lab`) and :mod:`.report` (:func:`write_report`, :func:`load_results`). Names load on first use: importing
the package loads no torch.
"""

import importlib


_LAZY = {
    "EXPERIMENTS": ".experiments",
    "count_runs": ".experiments",
    "Lab": ".context",
    "load_results": ".report",
    "write_report": ".report",
    "run_lab": ".runner",
    "SIZES": ".settings",
    "LabSize": ".settings",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = sorted(_LAZY)
