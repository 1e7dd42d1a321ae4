"""The ``args`` every trainer takes: its own config class, or a default one."""

from __future__ import annotations


def resolve_args(args, config_class, default_output_dir: str, default_class=None):
    """``args``, or ``(default_class or config_class)(default_output_dir)`` when it is ``None``; an ``args`` that is no
    ``config_class`` (subclasses included) is refused, naming it."""
    if args is None:
        return (default_class or config_class)(default_output_dir)
    if not isinstance(args, config_class):
        got = f"{type(args).__module__}.{type(args).__qualname__}"
        raise TypeError(f"args must be a trl_opd.{config_class.__name__} (or a subclass), got {got}.")
    return args
