"""The ``trl-opd`` command line: one module per subcommand.

    trl-opd demo                                            # a few minutes of on-policy distillation on CPU, offline
    trl-opd gkd|minillm|spin --config FILE.yaml [--key value ...]   # train (TRL's CLI conventions, docs/cli.md)
    trl-opd pipeline recipe.yaml                            # the staged pipeline: warm-up -> GKD -> on-policy -> RL
    trl-opd recipes [NAME] [--path]                         # the packaged YAML recipes: list, print one, its path
    trl-opd plan --student DIR --teacher DIR [options]     # will it fit? peak GPU memory per part, per GPU size
    trl-opd plan --recipe 7b-nf4-14b-bf16                    # a packaged recipe (see --list-recipes)
    trl-opd lab [--quick | --full | --smoke]                 # the tutorial's experiments on tiny tasks
    python -m trl_opd.cli plan ...                          # the same without the console script

Each subcommand is a module of this package with a ``register(subparsers)`` function that adds its parser and sets
``func`` to the function that runs it (``func(args) -> int``, the exit code); add a new one to :data:`SUBCOMMANDS`.
A subcommand that parses its own arguments (the training commands, like TRL's ``trl sft``) sets
``takes_raw_arguments=True`` and reads everything after its name from ``args.raw_arguments``.
Registering imports nothing heavy (no torch, transformers or TRL), so ``--help`` answers at once; each ``func``
imports what it needs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence


#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS: tuple[str, ...] = ("demo", "train", "pipeline", "recipes", "plan", "lab", "check", "cache-teacher")


class UsageError(Exception):
    """A command-line mistake: printed as ``trl-opd <cmd>: error: ...`` with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-opd", description="On-policy distillation for Hugging Face TRL.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``trl-opd``; returns the exit code (0 ok, 2 usage or config error)."""
    from ..memory import ConfigError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "takes_raw_arguments", False):
        args.raw_arguments = argv[argv.index(args.command) + 1 :]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except (UsageError, ConfigError, ValueError) as error:
        print(f"trl-opd {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `trl-opd plan | head`: the reader left; exit quietly like a Unix tool (and keep Python's flush at exit from
        # raising the same error again on the closed stdout).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
