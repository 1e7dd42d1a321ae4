"""``trl-opd gkd|minillm|spin --config FILE.yaml [--key value ...]``: train from the shell, TRL's CLI conventions.

The keys are the fields of the command's dataclasses (:mod:`trl_opd.pipeline.arguments`): the trainer's config, TRL's
``ModelConfig``, and the script arguments (data, hooks, verifiers, ``teacher_model_name_or_path``). Flags override the
YAML. ``--help`` is printed from the committed field list, without importing TRL.
"""

from __future__ import annotations

import argparse
import sys


DESCRIPTIONS = {
    "gkd": "Train with trl_opd.GKDTrainer: λ-mixed generalized knowledge distillation (on- and off-policy rows, "
    "λ schedules, FKL / RKL / JSD(β) / TVD).",
    "minillm": "Train with trl_opd.MiniLLMTrainer: reverse-KL distillation by policy gradient, verifiers as rewards.",
    "spin": "Train with trl_opd.SPINTrainer: self-play fine-tuning, rounds of DPO against the previous iterate.",
}
EPILOG = (
    "Keys are the config's field names (YAML: `lmbda: 0.5`; flags: `--lmbda 0.5`; flags override the YAML). Datasets: "
    "dataset_name is a save_to_disk folder, a .json/.jsonl/.parquet file, or reasoning_gym:<task>. Hooks: "
    "token_importance / prefix_filter / curriculum take a mapping of settings. The run saves the model (or adapter), "
    "the tokenizer and a model card (README.md) into output_dir. See docs/cli.md."
)


def register(subparsers) -> None:
    for command, description in DESCRIPTIONS.items():
        parser = subparsers.add_parser(command, help=description.split(":")[0].replace("Train with ", "train with "),
                                       add_help=False)  # fmt: skip
        parser.set_defaults(func=run_train_command, takes_raw_arguments=True)


def run_train_command(args: argparse.Namespace) -> int:
    from ..pipeline.arguments import check_flags

    command, argv = args.command, list(args.raw_arguments)
    if "-h" in argv or "--help" in argv:
        from ..pipeline.keys import print_help

        print_help(command, DESCRIPTIONS[command] + " " + EPILOG)
        return 0
    check_flags(command, argv)  # fast: before TRL is imported

    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from ..pipeline.arguments import parse_run
    from ..pipeline.folders import claim_run_dir
    from ..pipeline.run import run_training

    run = parse_run(command, argv=argv)
    claim_run_dir(run)  # an owned output_dir, not another run's, before anything is loaded
    result = run_training(run)
    print(f"\n{command}: {result['steps']} steps in {result['seconds']:.0f} s; saved to {result['output_dir']}")
    for key, value in sorted(result["metrics"].items()):
        print(f"  {key:<36} {value:.4f}" if isinstance(value, float) else f"  {key:<36} {value}")
    sys.stdout.flush()
    return 0
