"""``report.md``, ``results.json`` and one PNG per experiment from :func:`trl_opd_lab.run_lab`'s results.

Every verdict is computed from the numbers (by each experiment's ``verdict``), never written in advance. The report is
a pure function of the results: :func:`load_results` reads a ``results.json`` back (older layouts included) so that
a report can be re-rendered without rerunning anything (``trl-opd lab --from-results FILE``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .advice import what_to_do
from .experiments import EXPERIMENTS
from .provenance import describe
from .settings import RESULTS_SCHEMA


def upgrade_results(results: dict) -> dict:
    """A copy of ``results`` in the current layout. Layout 0 stored the compounding errors as ``{str(T): value}`` and
    the exponents computed from them (now lists aligned with ``horizons``, exponents recomputed by the report), TIP
    runs possibly without ``selection``, and the report's verdicts."""
    results = json.loads(json.dumps(results, default=float))  # a deep copy of plain JSON data
    results.pop("verdicts", None)
    if results.get("schema", 0) == 0:
        if "compounding" in results:
            comp = results["compounding"]
            comp.pop("exponents", None)
            for r in comp["runs"]:
                for key in ("total_errors", "sequence_error"):
                    if isinstance(r[key], dict):
                        r[key] = [r[key][str(h)] for h in comp["horizons"]]
        for r in (results.get("tip") or {}).get("runs", []):
            r.setdefault("selection", "all" if r["keep_fraction"] >= 1.0 else "top")
    results["schema"] = RESULTS_SCHEMA
    return results


def load_results(path: str | Path) -> dict:
    """``results.json`` (any layout) in the current layout."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the results.json a lab run wrote (DIR/results.json).")
    return upgrade_results(json.loads(path.read_text()))


def merge_results(parts: list[dict]) -> dict:
    """One results dict from several runs of the same size with different experiments (e.g. run side by side with
    ``--experiments``): the experiments, their seconds and teachers together; ``wall_seconds`` is the longest part's
    (the parts ran at the same time) and ``provenance["parts"]`` keeps each part's provenance."""
    if len(parts) == 1:
        return parts[0]
    sizes = {p["size"]["name"] for p in parts}
    if len(sizes) > 1:
        raise ValueError(f"results of different sizes ({', '.join(sorted(sizes))}) cannot be merged; pass one size.")
    merged = json.loads(json.dumps(parts[0]))
    merged["experiments"] = []
    for part in parts:
        for name in part["experiments"]:
            if name in merged["experiments"]:
                raise ValueError(f"experiment {name!r} is in more than one of the results; pass each once.")
            merged["experiments"].append(name)
            merged[name] = part[name]
        merged["seconds"].update(part.get("seconds", {}))
        for key, value in part.get("teachers", {}).items():
            merged.setdefault("teachers", {}).setdefault(key, value)
    walls = [p.get("wall_seconds") for p in parts if p.get("wall_seconds") is not None]
    if walls:
        merged["wall_seconds"] = max(walls)
    if all("provenance" in p for p in parts):
        merged["provenance"] = {**parts[0]["provenance"], "parts": [p["provenance"] for p in parts]}
        merged["provenance"]["wall_seconds"] = merged.get("wall_seconds")
        merged["provenance"]["command"] = " + ".join(p["provenance"].get("command") or "?" for p in parts)
    merged.pop("command", None)
    return merged


def default_command(results: dict) -> str:
    """The command that produced ``results`` (stored since layout 1; rebuilt from the size before)."""
    return (
        results.get("command")
        or (results.get("provenance") or {}).get("command")
        or "trl-opd lab --" + results["size"]["name"]
    )


def render(results: dict, out: Path, command: str) -> tuple[list[str], dict]:
    """The report's lines and each experiment's summary (its verdict first); writes the PNGs into ``out``."""
    size = results["size"]
    seeds = size["seeds"]
    cheap = [s for s in size.get("cheap_seeds", []) if s not in seeds]
    lines = [
        "# OPD lab report",
        "",
        f"Command: `{command}` — size `{size['name']}`; seeds {seeds} (modes, SPIN and OPSD also "
        f"{cheap}); experiments took {sum(results['seconds'].values()):.0f} s"
        + (
            f" of compute, {results['wall_seconds']:.0f} s of wall time with the teachers (compounding runs in a"
            " second process when there are two cores)"
            if "wall_seconds" in results
            else ""
        )
        + ". Every table: mean [90 % bootstrap interval of the mean] over the runs (n is stated in each section; "
        "a run = one student seed with one teacher seed); plots show each run's point.",
        "",
    ]
    if "provenance" in results:
        lines += [describe(results["provenance"]), ""]
    teachers = results.get("teachers", {})
    for key, c in teachers.items():
        if key.split("@")[0] != "chain":
            continue
        lines += [
            f"Chain teacher{' (seed ' + str(c['seed']) + ')' if 'seed' in c else ''} (2 layers, hidden 64, "
            f"{c['params']} parameters, {c['steps']} steps on {c['T']}-digit sequences with 15 % corrupted digits, "
            f"{c.get('seconds', 0):.0f} s): own total errors "
            + ", ".join(f"{k} {v['total_errors']:.3f}" for k, v in c.items() if k.startswith("T="))
            + ".",
            "",
        ]
    summaries, sections = {}, []
    for name, experiment in EXPERIMENTS.items():
        if name in results:
            section, summaries[name] = experiment.section(results[name], out, results)
            sections += section
    if summaries:
        lines += ["| experiment | verdict |", "|---|---|"]
        lines += [f"| {name} | {s.get('short') or s['verdict'].split(':')[0]} |" for name, s in summaries.items()]
        lines.append("")
    return lines + sections + what_to_do(results), summaries


def write_report(results: dict, out: str | Path, command: str | None = None) -> Path:
    """Write ``out/report.md``, the PNGs and ``out/results.json`` (the results with the verdicts); ``results`` is not
    modified. Returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = upgrade_results(results)
    command = command or default_command(results)
    lines, summaries = render(results, out, command)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    saved = {**results, "command": command, "verdicts": summaries}
    (out / "results.json").write_text(json.dumps(saved, indent=2, default=float))
    return out / "report.md"
