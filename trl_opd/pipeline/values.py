"""The values of a run's keys checked against their fields' types, before the parser sees them.

``TrlParser`` takes YAML values as parser defaults: a string is converted by the flag's type (an ``argparse`` exit
with a usage text when it does not convert), anything else reaches the dataclass as it is (``max_completion_length:
[3]`` became a raw ``TypeError`` deep in the trainer). :func:`check_values` refuses, naming the key, its type and the
value, every value that does not have its field's type (from the committed field list, :mod:`.keys`): an ``int``
field takes an integer (or its text), a ``float`` field a finite number (or its text, as YAML 1.1 reads ``1e-3``), a
``bool`` field ``true``/``false``, a ``str`` field text, a ``list`` field a list (or one text), a ``dict`` field a
mapping; ``None`` where the field's default is ``None``. Ranges are the configs' own ``__post_init__`` checks.
"""

from __future__ import annotations

import math


def _is_number_text(value, kind) -> bool:
    try:
        number = kind(value.strip())
    except (ValueError, AttributeError):
        return False
    return kind is int or math.isfinite(number)


#: The texts transformers' ``string_to_bool`` accepts.
_BOOL_TEXTS = ("true", "false", "yes", "no", "t", "f", "y", "n", "1", "0")
#: One checker per type name of keys.json.
_CHECKS = {
    "bool": lambda v: isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in _BOOL_TEXTS),
    "int": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and _is_number_text(v, int))
    ),
    "float": lambda v: (
        (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        or (isinstance(v, str) and _is_number_text(v, float))
    ),
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, (list, str)),
    "dict": lambda v: isinstance(v, dict),
}
#: Field types whose values are objects the parser builds itself: not checked here.
_UNCHECKED = ("ParallelismConfig",)
_NAMES = {"bool": "true or false", "int": "an integer", "float": "a finite number", "str": "a text", "list": "a list",
          "dict": "a mapping"}  # fmt: skip


def value_problem(field: dict, value) -> str | None:
    """Why ``value`` does not fit the field (``{"type", "default"}`` of keys.json); ``None`` when it does."""
    if value is None:
        return None if field.get("default") is None else "null (the key has a default; remove the line instead)"
    parts = [part.strip() for part in field["type"].split("|")]
    if any(part in _UNCHECKED for part in parts):
        return None
    known = [part if part in _CHECKS else "str" for part in parts]  # an enum or a Literal takes text values
    if any(_CHECKS[kind](value) for kind in known):
        return None
    wanted = " or ".join(dict.fromkeys(_NAMES[kind] for kind in known))
    return f"must be {wanted}, got {value!r} ({type(value).__name__})"


def check_values(command: str, config: dict, where: str) -> None:
    """Refuse the first value of ``config`` that does not have its field's type, naming the key.

    Raises:
        ValueError: ``"lmbda in FILE must be a finite number, got 'abc' (str)"``.
    """
    from .keys import command_fields

    fields = command_fields(command)
    for key, value in config.items():
        if key in fields:
            problem = value_problem(fields[key], value)
            if problem:
                raise ValueError(f"{key} in {where} {problem}.")
