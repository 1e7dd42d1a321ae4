"""The commands ``trl-opd gkd|minillm|spin``: the dataclass groups of each (:data:`COMMANDS`), the hooks each takes,
and the script's own dataclasses.

:mod:`.keys` (the committed field list) and :mod:`.arguments` (the parser) both read this module; it imports neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


#: The trainers the command line and the pipeline know, and the dataclass groups of each (names in keys.json).
COMMANDS: dict[str, tuple[str, ...]] = {
    "gkd": ("OPDScriptArguments", "GKDConfig", "ModelConfig"),
    "minillm": ("OPDScriptArguments", "TeacherPathArguments", "MiniLLMConfig", "ModelConfig"),
    "spin": ("OPDScriptArguments", "TeacherPathArguments", "SPINConfig", "ModelConfig"),
    # TRL's own GRPOTrainer on the verifiers alone: the RL stage of a pipeline (no teacher).
    "grpo": ("OPDScriptArguments", "GRPOConfig", "ModelConfig"),
}

#: The hooks each trainer takes (the others are refused when set for it, and skipped as recipe-wide defaults).
HOOKS_BY_TRAINER = {
    "gkd": ("token_importance", "prefix_filter", "curriculum"),
    "minillm": ("token_importance", "prefix_filter"),
    "spin": ("prefix_filter",),
    "grpo": (),
}
HOOKS = ("token_importance", "prefix_filter", "curriculum")

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
        privileged_context_format (`str`, *optional*):
            Builds each row's `privileged_context` (the hint a `privileged_teacher` sees), in the train and test
            splits, from its other columns, e.g. `"The correct answer is {answer}."`; a dataset's own
            `privileged_context` column is replaced. Unset: the column is used as the dataset has it.
        eval_num_samples (`int`, *optional*, defaults to `4`):
            Sampled completions per held-out prompt for the sampled task score (pass@1 averaged over samples).
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Replace the earlier trl-opd run in `output_dir` (its `checkpoint-N` folders are deleted; nothing else is).
            Without it, a folder holding an earlier run is refused unless `resume_from_checkpoint` continues it with
            the same keys, and a folder trl-opd did not create is always refused (docs/cli.md, "Failure behaviour").
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
    privileged_context_format: str | None = field(
        default=None,
        metadata={"help": "Each row's privileged_context from its columns, e.g. 'The answer is {answer}.'"},
    )
    eval_num_samples: int = field(
        default=4, metadata={"help": "Sampled completions per held-out prompt for the sampled task score."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the earlier trl-opd run in output_dir (its checkpoints are deleted)."}
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


def dataclass_types(command: str) -> tuple:
    """The dataclasses of ``command`` (imports TRL: seconds)."""
    from trl import GRPOConfig, ModelConfig

    from ..trainers import GKDConfig, MiniLLMConfig, SPINConfig

    classes = {
        "OPDScriptArguments": OPDScriptArguments,
        "TeacherPathArguments": TeacherPathArguments,
        "GKDConfig": GKDConfig,
        "MiniLLMConfig": MiniLLMConfig,
        "SPINConfig": SPINConfig,
        "GRPOConfig": GRPOConfig,
        "ModelConfig": ModelConfig,
    }
    return tuple(classes[name] for name in COMMANDS[command])
