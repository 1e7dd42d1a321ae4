"""The arguments of ``trl-opd gkd|minillm|spin``: TRL's CLI conventions (``TrlParser`` + YAML) over our dataclasses.

A command's keys are the fields of its dataclasses, in this order (:data:`COMMANDS`):

* :class:`OPDScriptArguments`: the dataset, the hooks and the verifiers (TRL's ``ScriptArguments`` names for the data);
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
import json
import os
from dataclasses import dataclass, field


#: The trainers the command line and the pipeline know, and the dataclass groups of each (names in keys.json).
COMMANDS: dict[str, tuple[str, ...]] = {
    "gkd": ("OPDScriptArguments", "GKDConfig", "ModelConfig"),
    "minillm": ("OPDScriptArguments", "TeacherPathArguments", "MiniLLMConfig", "ModelConfig"),
    "spin": ("OPDScriptArguments", "TeacherPathArguments", "SPINConfig", "ModelConfig"),
}

#: The hooks each trainer takes (the others are refused when set for it, and skipped as recipe-wide defaults).
HOOKS_BY_TRAINER = {
    "gkd": ("token_importance", "prefix_filter", "curriculum"),
    "minillm": ("token_importance", "prefix_filter"),
    "spin": ("prefix_filter",),
}
HOOKS = ("token_importance", "prefix_filter", "curriculum")

#: Defaults on a machine without CUDA (TRL's configs default to bf16 and gradient checkpointing, the examples' way).
CPU_DEFAULTS = {"bf16": False, "use_cpu": True, "gradient_checkpointing": False}

#: Keys a YAML file may hold besides the fields: TRL's ``env:`` (environment variables set before the run).
EXTRA_YAML_KEYS = ("env",)


@dataclass
class OPDScriptArguments:
    """The data, the hooks and the verifiers of a ``trl-opd gkd|minillm|spin`` run.

    Parameters:
        dataset_name (`str`):
            A folder written by `datasets.save_to_disk` (a `DatasetDict` folder, or one split), a `.json` / `.jsonl` /
            `.parquet` file (its rows are the `train` split), or `reasoning_gym:<task>` (generated offline; the
            `test` split is drawn with another seed). See [`trl_opd.data.load_dataset_spec`].
        dataset_config (`dict`, *optional*):
            Settings of a reasoning-gym task (`reasoning_gym.create_dataset` keywords), e.g. `{max_terms: 2}`.
        dataset_train_split, dataset_test_split (`str`):
            The splits to train on and to evaluate on (TRL's names). A dataset without the test split is trained on
            and the held-out guards are not measured (the run says so).
        dataset_train_size, dataset_test_size (`int`, *optional*):
            Rows used: the first N rows of a split (all of them by default), or the number of reasoning-gym items
            (default 64 and 16).
        token_importance, prefix_filter, curriculum (`dict`, *optional*):
            The stability hooks, as the keyword arguments of [`trl_opd.hooks.TokenImportance`],
            [`~trl_opd.hooks.FlawedPrefixFilter`] and [`~trl_opd.hooks.PacedCurriculum`]; `{}` or `true` turns one on
            with its defaults. `token_importance: {top_fraction: 0.5}` is short for `{mode: top_fraction,
            keep_fraction: 0.5}`. On the command line, pass JSON: `--token_importance '{"top_fraction": 0.5}'`.
        reward_funcs (`list[str]`, *optional*):
            Verifiers: `pkg.module:function` (called like a GRPO reward function) or `reasoning_gym:<task>` (the task's
            own checker). MiniLLM trains on them (R = log p_T + β R_ext); every trainer reports their held-out score;
            GKD's curriculum uses the first one as its success signal.
        eval_num_samples (`int`, *optional*, defaults to `4`):
            Sampled completions per held-out prompt for the sampled task score (pass@1 averaged over samples).
    """

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "save_to_disk folder, .json/.jsonl/.parquet file, or reasoning_gym:<task>."},
    )
    dataset_config: dict | str | None = field(
        default=None, metadata={"help": "reasoning-gym task settings (JSON on the command line)."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Dataset split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Held-out split for the guards and the score."})
    dataset_train_size: int | None = field(
        default=None, metadata={"help": "Rows of the train split used (reasoning-gym items; default all / 64)."}
    )
    dataset_test_size: int | None = field(
        default=None, metadata={"help": "Rows of the test split used (reasoning-gym items; default all / 16)."}
    )
    token_importance: dict | str | None = field(
        default=None, metadata={"help": 'TIP hook: TokenImportance keywords, e.g. {"top_fraction": 0.5}.'}
    )
    prefix_filter: dict | str | None = field(
        default=None, metadata={"help": "Flawed-prefix rejection: FlawedPrefixFilter keywords ({} for defaults)."}
    )
    curriculum: dict | str | None = field(
        default=None, metadata={"help": "PACED curriculum: PacedCurriculum keywords ({} for defaults)."}
    )
    reward_funcs: list[str] | None = field(
        default=None, metadata={"help": "Verifiers: pkg.module:function or reasoning_gym:<task>."}
    )
    eval_num_samples: int = field(
        default=4, metadata={"help": "Sampled completions per held-out prompt for the sampled task score."}
    )

    def __post_init__(self):
        for name in ("dataset_config", "token_importance", "prefix_filter", "curriculum"):
            setattr(self, name, parse_mapping(name, getattr(self, name)))
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
        if self.eval_num_samples < 0:
            raise ValueError(f"eval_num_samples must be >= 0, got {self.eval_num_samples}.")


@dataclass
class TeacherPathArguments:
    """The teacher of MiniLLM (and of SPIN's held-out guards; SPIN trains without one)."""

    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The teacher's folder (MiniLLM: the reward; SPIN: the held-out guards only)."}
    )


def parse_mapping(name: str, value):
    """A hook's or a task's settings: a dict (YAML), a JSON object string (command line), ``true`` ({}), or off."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "none", "false")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            example = '{"key": 1}'
            raise ValueError(f"{name} must be a JSON object such as '{example}', got {value!r} ({error}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of settings (or true/false), got {type(value).__name__}.")
    return value


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
    from .keys import command_fields

    valid = set(command_fields(command)) | set(EXTRA_YAML_KEYS)
    for key in config:
        if key not in valid:
            raise ValueError(unknown_key_message(key, valid, where))


def check_flags(command: str, argv: list[str]) -> None:
    """Refuse a ``--flag`` that is no field of ``command`` (``--flag=value`` too), naming the closest valid one."""
    from .keys import command_fields

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


def dataclass_types(command: str) -> tuple:
    """The dataclasses of ``command`` (imports TRL: seconds)."""
    from trl import ModelConfig

    from ..trainers import GKDConfig, MiniLLMConfig, SPINConfig

    classes = {
        "OPDScriptArguments": OPDScriptArguments,
        "TeacherPathArguments": TeacherPathArguments,
        "GKDConfig": GKDConfig,
        "MiniLLMConfig": MiniLLMConfig,
        "SPINConfig": SPINConfig,
        "ModelConfig": ModelConfig,
    }
    return tuple(classes[name] for name in COMMANDS[command])


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


def read_yaml_mapping(path: str, missing: str, not_mapping: str, error: type[Exception] = ValueError) -> dict:
    """The top-level mapping of the YAML file ``path``; ``missing`` / ``not_mapping`` end the errors (the fix)."""
    import yaml

    if not os.path.isfile(path):
        raise error(f"{path}: {missing}")
    with open(path) as handle:
        loaded = yaml.safe_load(handle) or {}
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
    teacher = middle[0].teacher_model_name_or_path if len(middle) == 2 else training.teacher_model_name_or_path
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
