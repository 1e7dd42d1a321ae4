"""The folders of ``trl-opd gkd|minillm|spin`` and of the pipeline: owned, fingerprinted, never shared unnoticed.

A run's ``output_dir`` and a pipeline's folder and stage folders carry the package's marker
(:mod:`trl_opd.ownership`) with the fingerprint of the keys that train into them (:mod:`trl_opd.fingerprint`). Before
anything is loaded:

* a new or empty folder is created and marked; a non-empty folder trl-opd did not create is refused;
* a folder holding an earlier run is continued only by ``resume_from_checkpoint`` with the same keys (a difference is
  refused naming each key on both sides), or replaced with ``overwrite_output_dir: true`` (``trl-opd pipeline
  --overwrite``), which deletes the earlier run's checkpoints and nothing else;
* a folder that holds only the marker (a run refused before it trained) is reused.
"""

from __future__ import annotations

import os
import re

from ..fingerprint import changed_keys, digest, keys_fingerprint, training_keys
from ..ownership import LOCK_NAME, MARKER_NAME, OwnershipError, claim, read_marker, remove_owned, write_marker


RUN_KIND = "run"
STAGE_KIND = "pipeline stage"
PIPELINE_KIND = "pipeline"
#: What a run writes that a later run resumes from: transformers' checkpoints, SPIN's rounds.
RESUMABLE = re.compile(r"checkpoint-\d+|round-\d+|rounds\.json")


def resumable_entries(folder: str) -> list[str]:
    """The ``checkpoint-N`` / ``round-N`` / ``rounds.json`` entries of ``folder``, sorted."""
    return sorted(name for name in os.listdir(folder) if RESUMABLE.fullmatch(name)) if os.path.isdir(folder) else []


def _run_is_resumed(resume) -> bool:
    return resume not in (None, False) and not (isinstance(resume, str) and resume.lower() in ("", "false", "none"))


def claim_run_dir(run) -> None:
    """Make sure ``run`` may train into its ``output_dir`` (see the module docstring).

    Raises:
        OwnershipError: naming the folder, what it holds and the fix.
    """
    folder = run.training.output_dir
    resume = run.training.resume_from_checkpoint
    if run.script.overwrite_output_dir and (resume is True or str(resume).lower() in ("true", "last")):
        raise OwnershipError(
            "overwrite_output_dir: true deletes the checkpoints that resume_from_checkpoint: true would continue; "
            "pass one of them."
        )
    keys = {"trainer": run.command, **run.given}
    fields = {"trainer": run.command, "fingerprint": keys_fingerprint(keys), "keys": training_keys(keys)}
    _check_resumed_checkpoint(resume, keys, fields["fingerprint"])
    marker, created = claim(folder, RUN_KIND, "output_dir", **fields)
    if created:
        return
    earlier = sorted(set(os.listdir(folder)) - {MARKER_NAME, LOCK_NAME})
    held = resumable_entries(folder)
    if not earlier or run.script.overwrite_output_dir:
        if held:
            remove_owned(folder, held)
        write_marker(folder, {"kind": RUN_KIND, **fields})
        return
    trainer = " ".join(filter(None, ["trl-opd", str(marker.get("trainer") or "")]))
    what = f"an earlier {trainer} run ({', '.join(held) or 'no checkpoint'})"
    if not _run_is_resumed(run.training.resume_from_checkpoint):
        raise OwnershipError(
            f"output_dir {folder} holds {what}. Pass resume_from_checkpoint: true to continue it, "
            "overwrite_output_dir: true to replace it (its checkpoints are deleted), or choose another output_dir."
        )
    if marker.get("fingerprint") != fields["fingerprint"]:
        changes = changed_keys(marker.get("keys") or {}, keys)
        raise OwnershipError(
            f"output_dir {folder} holds {what} started with other keys: {'; '.join(changes)}. Resume it with the "
            "keys it was started with, or pass overwrite_output_dir: true to start again (its checkpoints are deleted)."
        )


def _check_resumed_checkpoint(resume, keys: dict, fingerprint: str) -> None:
    """A ``resume_from_checkpoint`` path inside another trl-opd run's folder is resumed only with that run's keys."""
    if not isinstance(resume, str) or not os.path.isdir(resume):
        return
    parent = os.path.dirname(os.path.abspath(resume))
    marker = read_marker(parent)
    if marker is None or marker["kind"] != RUN_KIND or marker.get("fingerprint") == fingerprint:
        return
    changes = changed_keys(marker.get("keys") or {}, keys)
    raise OwnershipError(
        f"resume_from_checkpoint {resume} belongs to a run started with other keys: {'; '.join(changes)}. Resume it "
        "with those keys, or start from its weights instead (model_name_or_path: that checkpoint)."
    )


def stage_fingerprint(trainer: str, keys: dict, previous: str | None) -> str:
    """A stage's fingerprint: its trainer, its keys (without the operational ones) and the previous stage's
    fingerprint (a stage trained on another predecessor is another stage)."""
    value = {"trainer": trainer, "keys": training_keys(keys)}
    if previous is not None:
        value["previous"] = previous
    return digest(value)


def claim_pipeline_dir(folder: str) -> None:
    """Make sure a pipeline may write into ``folder`` (its own folder, or a new or empty one)."""
    claim(folder, PIPELINE_KIND, "the pipeline's output_dir")


def check_stage_dir(stage_dir: str, name: str) -> None:
    """Refuse, before the first stage trains, a stage folder that exists and is not a stage folder of trl-opd (a
    user's folder, or another kind's)."""
    if not os.path.exists(stage_dir):
        return
    what = f"the folder of stage {name!r}"
    if not os.path.isdir(stage_dir):
        raise OwnershipError(f"{what} {stage_dir} is a file, not a folder; move it away or rename the stage.")
    marker = read_marker(stage_dir)
    if marker is None and set(os.listdir(stage_dir)) - {LOCK_NAME}:
        raise OwnershipError(f"{what} {stage_dir} is not empty and was not created by trl-opd (it has no "
                             f"{MARKER_NAME}); move it away or rename the stage.")  # fmt: skip
    if marker is not None and marker["kind"] != STAGE_KIND:
        raise OwnershipError(f"{what} {stage_dir} holds a trl-opd {marker['kind']}; move it away or rename the stage.")


def claim_stage_dir(stage_dir: str, name: str, trainer: str, keys: dict, fingerprint: str, overwrite: bool) -> None:
    """Make sure stage ``name`` may train into ``stage_dir``: a stage folder started with another fingerprint is
    refused naming the changed keys (or, with ``overwrite``, emptied of what the stage wrote: checkpoints, rounds,
    ``stage.json``)."""
    fields = {"trainer": trainer, "fingerprint": fingerprint, "keys": training_keys({"trainer": trainer, **keys})}
    marker, created = claim(stage_dir, STAGE_KIND, f"the folder of stage {name!r}", **fields)
    if created or marker.get("fingerprint") == fingerprint:
        return
    if not overwrite:
        changes = changed_keys(marker.get("keys") or {}, fields["keys"]) or ["an earlier stage changed"]
        raise OwnershipError(
            f"stage {name!r} in {stage_dir} was started with other keys: {'; '.join(changes)}. Restore the recipe to "
            "resume it, or rerun with --overwrite to train this stage (and the later ones) again (their checkpoints "
            "are deleted)."
        )
    remove_owned(stage_dir, [*resumable_entries(stage_dir), *(["stage.json"] if os.path.exists(
        os.path.join(stage_dir, "stage.json")) else [])])  # fmt: skip
    write_marker(stage_dir, {"kind": STAGE_KIND, **fields})
