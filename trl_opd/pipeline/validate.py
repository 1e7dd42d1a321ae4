"""Everything a run or a recipe reads, checked before any compute is spent.

:func:`check_recipe_stages` parses every stage of a recipe exactly as the run will parse it (the keys' types, the
configs' own range checks) and checks what each stage reads: its datasets and splits, its hooks' settings, its
verifiers, its models (a local folder with a ``config.json``, a packaged model, or a Hub id in the local cache; an
uncached Hub id is refused while the Hub is offline), its teacher cache (opened and verified). ``trl-opd pipeline
--check`` runs it and so does every pipeline run before its first stage: no error can first appear after an earlier
stage has spent its budget. Each error names the stage, the key and the fix.
"""

from __future__ import annotations

import os


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model_source(value: str | None, key: str) -> None:
    """Refuse a model that cannot be loaded here: not a packaged model, not a local folder with a ``config.json``, and
    (while ``HF_HUB_OFFLINE`` is set) not a Hub id in the local cache."""
    from ..assets import ASSET_MODELS

    if not value or value in ASSET_MODELS:
        return
    if os.path.isdir(value):
        if not os.path.isfile(os.path.join(value, "config.json")):
            raise ValueError(f"{key} {value!r} is a folder without a config.json: pass a model's folder.")
        return
    from .recipe import looks_like_hub_id

    if not looks_like_hub_id(value):
        raise ValueError(f"{key} {value!r} does not exist; pass a model's folder, or a Hub id (org/name).")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(value, "config.json"), str) or not _offline():
        return
    raise ValueError(
        f"{key} {value!r} is no local folder and is not in the Hugging Face cache, and the Hub is offline "
        "(HF_HUB_OFFLINE): download it first (huggingface-cli download) or pass a local folder."
    )


def check_run_inputs(run, *, first_stage: bool = True) -> None:
    """Check what ``run`` reads (see the module docstring). ``first_stage``: its ``model_name_or_path`` is loaded (a
    later pipeline stage continues the previous stage's model instead)."""
    from ..teachers.cache import TeacherCache
    from .commands import HOOKS_BY_TRAINER
    from .inputs import build_hooks, load_splits, resolve_verifier

    hooks = build_hooks(run.script)
    unsupported = sorted(set(hooks) - set(HOOKS_BY_TRAINER[run.command]))
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: not a hook of {run.command}; remove it.")
    for name in run.script.reward_funcs or []:
        resolve_verifier(name, run.script, "train")
    if run.command == "grpo" and not run.script.reward_funcs:
        raise ValueError("A grpo stage trains on verifiers alone: set reward_funcs (e.g. ['reasoning_gym:<task>']).")
    if first_stage:
        check_model_source(run.model.model_name_or_path, "model_name_or_path")
    check_model_source(run.teacher, "teacher_model_name_or_path")
    cache = getattr(run.training, "teacher_cache", None)
    if cache:
        TeacherCache(cache)
    try:
        load_splits(run.script)
    except (ValueError, KeyError, FileNotFoundError) as error:
        raise ValueError(f"dataset_name {run.script.dataset_name!r}: {error}") from None


def check_recipe_stages(recipe) -> None:
    """Parse and check every stage of ``recipe`` as its run will (see the module docstring).

    Raises:
        RecipeError: ``"RECIPE, stage 'online': lmbda must be in [0, 1], got 2.0"``: the first problem found.
    """
    from .arguments import parse_run
    from .recipe import RecipeError

    for i, stage in enumerate(recipe.stages):
        where = f"{recipe.path}, stage {stage.name!r}"
        try:
            run = parse_run(stage.trainer, stage.keys, where=where)
            check_run_inputs(run, first_stage=i == 0)
        except RecipeError:
            raise
        except (ValueError, TypeError, FileNotFoundError, ImportError) as error:
            message = str(error)
            raise RecipeError(message if message.startswith(where) else f"{where}: {message}") from None
        except SystemExit as error:  # argparse refused a value (its usage text is printed above)
            raise RecipeError(f"{where}: a value was refused by the parser (exit {error.code}); see above.") from None
