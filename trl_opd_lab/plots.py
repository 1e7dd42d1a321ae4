"""Matplotlib without a display, and the figure saving every section shares."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: Path, name: str) -> None:
    """Write ``fig`` to ``out/name.png`` and close it."""
    fig.tight_layout()
    fig.savefig(Path(out) / f"{name}.png", dpi=90)
    pyplot().close(fig)


def verdict_lines(verdict: str, name: str) -> list[str]:
    """The closing lines of a section: the verdict and the section's plot."""
    return [f"**Verdict:** {verdict}.", "", f"![{name}]({name}.png)", ""]
