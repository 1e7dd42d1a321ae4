"""``trl-opd pipeline recipe.yaml``: the staged OPD pipeline (:mod:`trl_opd.pipeline.runner`) as one command."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pipeline",
        help="run a staged recipe (warm-up -> GKD ramp -> on-policy -> MiniLLM); a rerun resumes it",
        description=(
            "Run the stages of a recipe in order, each starting from the previous stage's model (the same adapter "
            "under PEFT). Top-level keys are defaults for every stage; max_steps is the total budget and each stage "
            "gets its `budget` fraction of it. Each stage writes OUTPUT_DIR/<name>/; after each one the held-out "
            "guards and task scores are measured and summary.json / summary.md are written. Rerunning the same "
            "command skips finished stages and resumes the interrupted one from its last checkpoint. See docs/cli.md."
        ),
    )
    parser.add_argument("recipe", help="the recipe YAML file (`trl-opd recipes` lists the packaged ones)")
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", help="override the recipe's output_dir")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the recipe, parse every stage and read its inputs as the run will, print the stages; train nothing",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train again the stages whose keys changed since they were started (their checkpoints are deleted)",
    )
    parser.set_defaults(func=run_pipeline_command)


def run_pipeline_command(args: argparse.Namespace) -> int:
    from ..pipeline.recipe import load_recipe

    recipe = load_recipe(args.recipe, output_dir=args.output_dir)
    if args.check:
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from ..pipeline.validate import check_recipe_stages

        check_recipe_stages(recipe)  # every stage parsed and its inputs read, as the run will
        print(recipe.describe())
        return 0
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from ..pipeline.runner import run_pipeline

    run_pipeline(recipe, overwrite=args.overwrite)
    return 0
