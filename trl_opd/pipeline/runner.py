"""``run_pipeline``: the stages of a recipe in order, each from the previous stage's model, resumable.

For each stage (:class:`~trl_opd.pipeline.recipe.Stage`), in ``output_dir/<name>/``:

1. a finished stage (``stage.json`` written, with the same keys) is skipped and its entry reused;
2. the model: stage 1 loads ``model_name_or_path`` (+ a fresh LoRA adapter with ``use_peft``); a later stage loads
   the previous stage's folder: the same adapter continues on the same base under PEFT, the full weights otherwise;
3. an interrupted stage (a ``checkpoint-N`` in its folder; SPIN: a saved round) resumes from its last checkpoint with
   ``transformers.Trainer``'s ``resume_from_checkpoint`` (the trainers restore their random state exactly there,
   :class:`trl_opd.trainers.resume.ExactResumeMixin`); without a checkpoint it starts again;
4. train, measure the held-out guards and task scores (:mod:`trl_opd.pipeline.measure`), save the model + card,
   write ``stage.json`` (then delete the stage's ``checkpoint-N`` folders unless ``keep_checkpoints: true``), then
   ``summary.json`` (the list of entries) and ``summary.md``, and print the table.

An entry: ``{name, trainer, budget, steps, metrics, seconds, seconds_per_step, resumed_from, output_dir}``. With
``measure_start: true`` the first entry is ``start``: the student measured before stage 1 (``steps`` 0).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os

from .arguments import parse_run
from .recipe import Recipe, Stage, load_recipe
from .run import last_checkpoint, model_init_kwargs, resolve_model_paths, run_training


logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
#: The metrics shown in the table, in this order (task scores follow); all metrics are in summary.json.
TABLE_METRICS = ("fkl_on_teacher_samples", "rkl_on_student_samples", "student_eos_rate", "student_distinct_2")


def keys_digest(stage: Stage) -> str:
    """A hash of a stage's trainer and keys: a finished stage is reused only when its recipe did not change."""
    text = json.dumps({"trainer": stage.trainer, "keys": stage.keys}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resume_point(stage: Stage, stage_dir: str) -> str | None:
    """What an interrupted stage resumes from: its last complete ``checkpoint-N`` (SPIN: ``"rounds"``, a saved round or
    its pairs); ``None`` when there is nothing to resume."""
    if not os.path.isdir(stage_dir):
        return None
    if stage.trainer == "spin":
        names = os.listdir(stage_dir)
        return "rounds" if any(n == "rounds.json" or n.startswith("round-") for n in names) else None
    return last_checkpoint(stage_dir)


def previous_model(run, previous_dir: str):
    """The model a later stage starts from: the previous stage's adapter on the base (PEFT; returned), or its full
    weights (``run``'s ``model_name_or_path`` becomes ``previous_dir``; returns ``None``)."""
    if not os.path.isfile(os.path.join(previous_dir, "adapter_config.json")):
        if run.model.use_peft:
            raise ValueError(f"{previous_dir} holds no adapter, but use_peft is set; the stages must share the model.")
        run.model.model_name_or_path = previous_dir
        return None
    if not run.model.use_peft:
        raise ValueError(f"{previous_dir} holds an adapter, but use_peft is not set; the stages must share the model.")
    from peft import PeftModel
    from trl import get_quantization_config

    from ..models import load_model

    resolve_model_paths(run)
    kwargs = model_init_kwargs(run.model, run.training)
    base = load_model(run.model.model_name_or_path, kwargs, run.training,
                      quantization_config=get_quantization_config(run.model))  # fmt: skip
    return PeftModel.from_pretrained(base, previous_dir, is_trainable=True)


START_FILE = "start.json"


def run_stage(recipe: Recipe, stage: Stage, previous_dir: str | None, callbacks=None, measure_before=False) -> dict:
    """Train one stage (resuming it when interrupted); returns its summary entry (with ``metrics_before`` when
    ``measure_before``)."""
    stage_dir = recipe.stage_dir(stage)
    run = parse_run(stage.trainer, stage.keys, where=f"{recipe.path}, stage {stage.name!r}")
    model = previous_model(run, previous_dir) if previous_dir else None
    point = resume_point(stage, stage_dir)
    resume = point is not None
    if resume:
        print(f"[pipeline] {stage.name}: resuming from {point}")
    elif os.path.isdir(stage_dir):
        logger.warning("%s exists without a complete checkpoint: stage %s starts again.", stage_dir, stage.name)
    result = run_training(run, model=model, callbacks=callbacks, resume=resume or None, measure_before=measure_before,
                          card_extra=dict(stage=stage.name, pipeline=recipe.path))  # fmt: skip
    entry = {
        "name": stage.name,
        "trainer": stage.trainer,
        "budget": stage.budget,
        "steps": result["steps"],
        "metrics": result["metrics"],
        "seconds": result["seconds"],
        "seconds_per_step": result["seconds_per_step"],
        "resumed_from": result["resumed_from"],
        "output_dir": stage_dir,
        "keys_digest": keys_digest(stage),
    }
    if result["metrics_before"] is not None:
        start = {"name": "start", "trainer": "-", "budget": 0.0, "steps": 0, "metrics": result["metrics_before"],
                 "seconds": 0.0, "seconds_per_step": 0.0, "resumed_from": None, "output_dir": None}  # fmt: skip
        _write_json(os.path.join(recipe.output_dir, START_FILE), start)
    del result["trainer"], result, model
    gc.collect()
    _empty_cuda_cache()
    _write_json(os.path.join(stage_dir, STAGE_FILE), entry)
    if not recipe.keep_checkpoints:
        remove_checkpoints(stage_dir)
    return entry


def remove_checkpoints(stage_dir: str) -> None:
    """Delete a finished stage's ``checkpoint-N`` folders (SPIN: also its rounds'); a rerun never needs them."""
    import glob
    import shutil

    folders = glob.glob(os.path.join(stage_dir, "checkpoint-*")) + glob.glob(
        os.path.join(stage_dir, "round-*", "checkpoint-*")
    )
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    if folders:
        logger.info("%s: removed %d checkpoint folder(s) of the finished stage (keep_checkpoints: true keeps them).",
                    stage_dir, len(folders))  # fmt: skip


def _empty_cuda_cache():
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(value, handle, indent=2, default=str)
    os.replace(tmp, path)  # a kill mid-write leaves the old file or none, never half a file


def finished_entry(recipe: Recipe, stage: Stage) -> dict | None:
    """The entry of a finished stage (``None`` when it has not finished); a stage finished with other keys is
    refused (its folder would not be what the recipe says)."""
    path = os.path.join(recipe.stage_dir(stage), STAGE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        entry = json.load(handle)
    if entry.get("keys_digest") != keys_digest(stage):
        raise ValueError(
            f"stage {stage.name!r} in {recipe.stage_dir(stage)} was finished with other keys than the recipe's; "
            "restore the recipe, or delete that folder (and the later stages') to retrain it."
        )
    return entry


def summary_table(entries: list[dict]) -> str:
    """A markdown table: one row per stage, the guards and every task score."""
    scores = sorted({k for e in entries for k in e["metrics"] if k.endswith(("_greedy", "_sampled"))})
    columns = [c for c in TABLE_METRICS if any(c in e["metrics"] for e in entries)] + scores
    head = ["stage", "trainer", "steps", "s/step", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = [e["name"], e["trainer"], str(e["steps"]), f"{e['seconds_per_step']:.2f}"]
        cells += [f"{e['metrics'][c]:.4f}" if c in e["metrics"] else "-" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(recipe: Recipe, entries: list[dict]) -> None:
    """``summary.json`` (the entries) and ``summary.md`` (the table and what each column means)."""
    _write_json(os.path.join(recipe.output_dir, "summary.json"), entries)
    total = sum(e["seconds"] for e in entries)
    done = sum(e["name"] != "start" for e in entries)
    text = [
        f"# Pipeline summary: {recipe.path}",
        "",
        f"{done} of {len(recipe.stages)} stages done, {sum(e['steps'] for e in entries)} optimizer steps, "
        f"{total:.0f} s of stage wall time. Metrics are measured on the held-out split after each stage: the "
        "divergences on the teacher's and on the student's own samples (nats per token), the student's EOS rate and "
        "distinct-2, and each verifier's greedy and sampled (pass@1) score"
        + (" (`start`: the student before stage 1)." if entries and entries[0]["name"] == "start" else "."),
        "",
        summary_table(entries),
        "",
    ]
    with open(os.path.join(recipe.output_dir, "summary.md"), "w") as handle:
        handle.write("\n".join(text))


def run_pipeline(
    recipe: str | os.PathLike | dict | Recipe, output_dir: str | None = None, callbacks=None
) -> list[dict]:
    """Run (or resume) a pipeline recipe; returns the summary entries, one per stage (see the module docstring).

    ``recipe``: a YAML path, a dict of the same keys, or a loaded :class:`Recipe`; ``output_dir`` overrides the
    recipe's; ``callbacks``: ``transformers.TrainerCallback`` objects given to every stage's trainer.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, output_dir=output_dir)
    os.makedirs(recipe.output_dir, exist_ok=True)
    entries: list[dict] = []
    start_path = os.path.join(recipe.output_dir, START_FILE)
    previous_dir = None
    for i, stage in enumerate(recipe.stages, 1):
        measure_before = i == 1 and recipe.measure_start and not os.path.isfile(start_path)
        entry = finished_entry(recipe, stage)
        if entry is not None:
            print(f"[pipeline] stage {i}/{len(recipe.stages)} {stage.name}: finished earlier, skipped")
        else:
            print(f"[pipeline] stage {i}/{len(recipe.stages)} {stage.name}: {stage.trainer}, {stage.steps} steps")
            entry = run_stage(recipe, stage, previous_dir, callbacks, measure_before)
        if i == 1 and recipe.measure_start and os.path.isfile(start_path):
            with open(start_path) as handle:
                entries.append(json.load(handle))
        entries.append(entry)
        previous_dir = recipe.stage_dir(stage)
        write_summary(recipe, entries)
        print("\n" + summary_table(entries) + "\n", flush=True)
    return entries
