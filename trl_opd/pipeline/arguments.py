"""The arguments of ``trl-opd gkd|minillm|spin``: TRL's CLI conventions (``TrlParser`` + YAML) over our dataclasses.

A command's keys are the fields of its dataclasses, in this order (:data:`.commands.COMMANDS`):

* :class:`~.commands.OPDScriptArguments`: the dataset, the hooks and the verifiers (TRL's ``ScriptArguments`` names
  for the data);
* ``TeacherPathArguments`` (``teacher_model_name_or_path``) for MiniLLM and SPIN; GKD has it in ``GKDConfig`` already
  (inherited from ``trl.DistillationConfig``);
* the trainer's config: :class:`trl_opd.GKDConfig`, :class:`trl_opd.MiniLLMConfig` or :class:`trl_opd.SPINConfig`;
* TRL's ``ModelConfig`` (``model_name_or_path``, ``use_peft``, ``lora_r``, ``load_in_4bit``, ...).

Precedence, lowest first: the dataclass defaults, the CPU defaults of :data:`CPU_DEFAULTS` (only on a machine without
CUDA), the YAML file (or a recipe's stage), the command-line flags. Unknown keys are refused with the closest valid
one (:func:`check_keys`), before anything heavy is imported: the valid names come from the committed field list
(:mod:`trl_opd.pipeline.keys`), which a test keeps equal to the real dataclasses.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

from .commands import COMMANDS, EXTRA_YAML_KEYS, OPDScriptArguments, dataclass_types
from .keys import command_fields
from .values import check_values


#: Defaults on a machine without CUDA (TRL's configs default to bf16 and gradient checkpointing, the examples' way).
CPU_DEFAULTS = {"bf16": False, "use_cpu": True, "gradient_checkpointing": False}


def closest(key: str, valid) -> str | None:
    """The valid name closest to ``key`` (``None`` when none is close)."""
    matches = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_message(key: str, valid, where: str) -> str:
    """``unknown key 'lmdba' in FILE; did you mean 'lmbda'?`` (or the fix when nothing is close)."""
    guess = closest(key, valid)
    hint = f"did you mean {guess!r}?" if guess else "see `trl-opd <trainer> --help` for the keys"
    return f"unknown key {key!r} in {where}; {hint}"


def check_keys(command: str, config: dict, where: str) -> None:
    """Refuse a key that is no field of ``command``'s dataclasses, naming the closest valid one.

    Raises:
        ValueError: for the first unknown key.
    """
    valid = set(command_fields(command)) | set(EXTRA_YAML_KEYS)
    for key in config:
        if key not in valid:
            raise ValueError(unknown_key_message(key, valid, where))


def check_flags(command: str, argv: list[str]) -> None:
    """Refuse a ``--flag`` that is no field of ``command`` (``--flag=value`` too), naming the closest valid one."""
    valid = set(command_fields(command)) | {"config"}
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            if name.startswith("no_") and name[3:] in valid:  # --no_<bool field>, as HfArgumentParser accepts
                continue
            if name not in valid:
                guess = closest(name, valid)
                hint = f"did you mean --{guess}?" if guess else f"see `trl-opd {command} --help`"
                raise ValueError(f"unknown flag --{name}; {hint}")


def make_parser(command: str, prog: str | None = None):
    """TRL's ``TrlParser`` over ``command``'s dataclasses, with the CPU defaults on a machine without CUDA."""
    import torch
    from trl import TrlParser

    parser = TrlParser(dataclass_types(command), prog=prog or f"trl-opd {command}")
    if not torch.cuda.is_available():
        parser.set_defaults(**CPU_DEFAULTS)
    return parser


@dataclass
class RunArguments:
    """One parsed run: the command and its dataclasses (``teacher`` is the teacher's path, wherever it was given)."""

    command: str
    script: OPDScriptArguments
    training: object
    model: object
    teacher: str | None
    given: dict = field(default_factory=dict)

    def values(self) -> dict:
        """Every key of the run and its value (for the model card and the summary)."""
        from dataclasses import fields

        out = {}
        for part in (self.script, self.training, self.model):
            out.update({f.name: getattr(part, f.name) for f in fields(part) if f.init})
        out["teacher_model_name_or_path"] = self.teacher
        return out


def _unique_key_loader():
    """PyYAML's safe loader refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice (the last one would win silently)",
                        key_node.start_mark,
                    )  # fmt: skip
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_yaml_mapping(path: str, missing: str, not_mapping: str, error: type[Exception] = ValueError) -> dict:
    """The top-level mapping of the YAML file ``path``; ``missing`` / ``not_mapping`` end the errors (the fix)."""
    import yaml

    if not os.path.isfile(path):
        raise error(f"{path}: {missing}")
    try:
        with open(path) as handle:
            loaded = yaml.load(handle, Loader=_unique_key_loader()) or {}  # a SafeLoader subclass
    except yaml.MarkedYAMLError as problem:
        mark = problem.problem_mark or problem.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        what = " ".join(str(part) for part in (problem.context, problem.problem) if part)
        raise error(f"{where}: not valid YAML: {what}; fix the file at that line and column.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as problem:
        raise error(f"{path}: not a readable YAML text ({problem}).") from None
    if not isinstance(loaded, dict):
        raise error(f"{path} must hold a YAML mapping {not_mapping}, got {type(loaded).__name__}.")
    return loaded


def parse_run(command: str, config: dict | None = None, argv: list[str] | None = None, where: str = "the config"):
    """Parse ``config`` (YAML keys: defaults) and ``argv`` (flags: override them) into a :class:`RunArguments`.

    ``argv`` may hold ``--config FILE`` (TRL's convention); its keys are checked and set like ``config``'s, after it.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown trainer {command!r}; choose one of {', '.join(COMMANDS)}.")
    config = dict(config or {})
    argv = list(argv or [])
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a YAML file: --config recipe.yaml")
        path = argv[i + 1]
        del argv[i : i + 2]
        loaded = read_yaml_mapping(path, "no such file; pass --config the path of a YAML file.", "of keys to values")
        if "stages" in loaded:
            raise ValueError(f"{path} is a pipeline recipe (it has `stages:`); run it with `trl-opd pipeline {path}`.")
        config.update(loaded)
        where = path
    check_keys(command, config, where)
    check_values(command, config, where)
    check_flags(command, argv)
    for key in [k for k, v in config.items() if v is False and k.endswith("_strategy")]:
        config[key] = "no"  # YAML 1.1 reads an unquoted `save_strategy: no` as false
    for key, value in (config.pop("env", None) or {}).items():
        os.environ[key] = str(value)
    parser = make_parser(command)
    remaining = parser.set_defaults_with_config(**config)
    if remaining:  # check_keys makes this unreachable unless the dataclasses and keys.json disagree
        raise ValueError(f"keys not used by the parser: {remaining[::2]}; regenerate keys.json.")
    parts = parser.parse_args_into_dataclasses(args=argv)
    script, *middle, model = parts
    training = middle[-1]
    teacher = (
        middle[0].teacher_model_name_or_path
        if len(middle) == 2
        else getattr(training, "teacher_model_name_or_path", None)
    )
    run = RunArguments(command=command, script=script, training=training, model=model, teacher=teacher)
    flags = {token[2:].split("=", 1)[0].replace("-", "_") for token in argv if token.startswith("--")}
    flags = {name[3:] if name.startswith("no_") and name not in config else name for name in flags}
    values = run.values()
    run.given = {key: _plain(values[key]) for key in sorted(set(config) | flags) if key in values}
    return run


def _plain(value):
    """A YAML-safe copy of a parsed value (enums by value, other objects as text)."""
    import enum

    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
