"""The staged OPD pipeline and the runs of ``trl-opd gkd|minillm|spin`` (docs/cli.md).

Python entry points::

    from trl_opd.pipeline import run_pipeline, load_recipe, parse_run, run_training

    entries = run_pipeline("recipes/smollm2-cpu.yaml")            # or a dict of the same keys; output_dir= overrides
    # -> [{"name", "trainer", "budget", "steps", "metrics", "seconds", "seconds_per_step", "resumed_from", ...}, ...]

    result = run_training(parse_run("gkd", {"model_name_or_path": ..., "lmbda": 0.5, ...}))   # one run

Nothing heavy is imported until one of them is called.
"""


def __getattr__(name):
    import importlib

    where = {"run_pipeline": ".runner", "load_recipe": ".recipe", "Recipe": ".recipe", "RecipeError": ".recipe",
             "parse_run": ".arguments", "run_training": ".run"}  # fmt: skip
    if name in where:
        return getattr(importlib.import_module(where[name], __name__), name)
    raise AttributeError(f"module 'trl_opd.pipeline' has no attribute {name!r}")
