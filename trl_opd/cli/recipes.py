"""``trl-opd recipes``: the YAML recipes shipped in the package (``trl_opd/recipes/``), so a ``pip install`` has them.

    trl-opd recipes                        # one line per recipe: name, the command that runs it, what it does
    trl-opd recipes gkd-smollm2-cpu        # print the YAML (redirect it to a file to edit a copy)
    trl-opd recipes --path gkd-smollm2-cpu # print its path: trl-opd gkd --config "$(trl-opd recipes --path ...)"

A recipe with ``stages:`` runs with ``trl-opd pipeline``; any other recipe is one trainer's keys and its file name
starts with the trainer (``gkd-``, ``minillm-``, ``spin-``) that ``trl-opd <trainer> --config`` runs.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from . import UsageError


TRAINERS = ("gkd", "minillm", "spin")


def recipes_dir() -> Path:
    """The folder of the packaged recipes (inside the installed package)."""
    return Path(str(resources.files("trl_opd") / "recipes"))


def recipe_paths() -> dict[str, Path]:
    """Packaged recipe name (the file's stem) -> its path, sorted by name."""
    return {path.stem: path for path in sorted(recipes_dir().glob("*.yaml"))}


def recipe_command(path: Path) -> str:
    """The command that runs a recipe: ``trl-opd pipeline FILE`` or ``trl-opd <trainer> --config FILE``."""
    import yaml

    with open(path) as handle:
        keys = yaml.safe_load(handle) or {}
    if "stages" in keys:
        return "pipeline"
    trainer = path.stem.split("-")[0]
    if trainer not in TRAINERS:
        raise UsageError(f"{path.name}: a recipe without `stages:` must be named after its trainer ({TRAINERS})")
    return trainer


def recipe_summary(path: Path) -> str:
    """The recipe's first comment paragraph, joined into one line (what it does)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text:
            if lines:
                break
            continue
        lines.append(text)
    return " ".join(lines)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "recipes",
        help="list the packaged YAML recipes, print one, or print its path",
        description="The recipes shipped in the package: single-trainer YAMLs for `trl-opd gkd|minillm|spin --config` "
        "and pipeline recipes for `trl-opd pipeline`. With NAME, print that recipe.",
    )
    parser.add_argument("name", nargs="?", help="a recipe's name (without .yaml): print its YAML")
    parser.add_argument("--path", action="store_true", help="print the recipe's path instead of its YAML")
    parser.set_defaults(func=run_recipes_command)


def run_recipes_command(args: argparse.Namespace) -> int:
    paths = recipe_paths()
    if args.name is None:
        if args.path:
            print(recipes_dir())
            return 0
        for name, path in paths.items():
            command = recipe_command(path)
            file = f'"$(trl-opd recipes --path {name})"'
            run = f"trl-opd pipeline {file}" if command == "pipeline" else f"trl-opd {command} --config {file}"
            print(f"{name}\n    run:  {run}\n    what: {recipe_summary(path)}")
        print(f"\nfolder: {recipes_dir()}  (`trl-opd recipes NAME > NAME.yaml` writes a copy to edit)")
        return 0
    name = args.name.removesuffix(".yaml")
    if name not in paths:
        raise UsageError(f"no packaged recipe {name!r}; `trl-opd recipes` lists them: {', '.join(paths)}")
    print(paths[name] if args.path else paths[name].read_text(), end="\n" if args.path else "")
    return 0
