"""The committed field list of the ``trl-opd gkd|minillm|spin`` dataclasses (``keys.json``), for a fast ``--help``.

Importing TRL takes seconds (20 s on a cold 2-core machine), so ``--help`` and the unknown-key check read the fields'
names, types, defaults and help texts from ``keys.json`` instead of the dataclasses. ``tests/test_cli_train.py``
checks that the file equals :func:`collect` of the real dataclasses; after changing a config, regenerate it::

    python -m trl_opd.pipeline.keys --write
"""

from __future__ import annotations

import argparse
import enum
import functools
import json
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from .commands import COMMANDS, dataclass_types


KEYS_FILE = Path(__file__).with_name("keys.json")


def _default(f):
    value = f.default
    if value is MISSING:
        value = f.default_factory() if f.default_factory is not MISSING else None
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except TypeError:
        value = str(value)
    return value


def _type_name(hint) -> str:
    """A short name of an annotation: ``str``, ``int``, ``list``, ``dict | str`` (``None`` left out)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(hint) if arg is not type(None))
    hint = typing.get_origin(hint) or hint
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _hints(cls) -> dict:
    """The classes' annotations (``HfArgumentParser`` rewrites ``Field.type`` in place, so it is not read)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: its text
        return {k: v for c in reversed(cls.__mro__) for k, v in getattr(c, "__annotations__", {}).items()}


def collect() -> dict:
    """``{"groups": {class name: [{name, type, default, help}, ...]}, "commands": {command: [class names]}}``."""
    groups = {}
    for command in COMMANDS:
        for cls in dataclass_types(command):
            hints = _hints(cls)
            groups[cls.__name__] = [
                {
                    "name": f.name,
                    "type": _type_name(hints[f.name]),
                    "default": _default(f),
                    "help": f.metadata.get("help", ""),
                }  # fmt: skip
                for f in fields(cls)
                if f.init
            ]
    return {"groups": groups, "commands": {command: list(names) for command, names in COMMANDS.items()}}


@functools.lru_cache(maxsize=1)
def load() -> dict:
    return json.loads(KEYS_FILE.read_text())


def command_fields(command: str) -> dict[str, dict]:
    """``{field name: its record}`` of every dataclass of ``command`` (from keys.json: no TRL import)."""
    data = load()
    return {record["name"]: record for group in data["commands"][command] for record in data["groups"][group]}


def print_help(command: str, description: str) -> None:
    """``trl-opd <command> --help`` from keys.json: one argument group per dataclass, TRL's flags."""
    data = load()
    parser = argparse.ArgumentParser(
        prog=f"trl-opd {command}",
        usage=f"trl-opd {command} [--config FILE.yaml] [--<key> VALUE ...]",
        description=description,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of keys (flags override it)")
    for group in data["commands"][command]:
        arguments = parser.add_argument_group(group)
        for record in data["groups"][group]:
            shown = "" if record["default"] in (None, "", []) else f" (default: {record['default']})"
            text = (record["help"] or "") + shown
            arguments.add_argument(f"--{record['name']}", metavar=record["type"], help=text.replace("%", "%%"))
    parser.print_help()


def main() -> None:
    parser = argparse.ArgumentParser(description="Write (or check) trl_opd/pipeline/keys.json.")
    parser.add_argument("--write", action="store_true", help="rewrite the file from the dataclasses")
    args = parser.parse_args()
    data = collect()
    if args.write:
        KEYS_FILE.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {KEYS_FILE}")
    elif data != load():
        raise SystemExit(f"{KEYS_FILE} is stale: run python -m trl_opd.pipeline.keys --write")


if __name__ == "__main__":
    main()
