"""The rounds on disk and as a table.

```
output_dir/
  rounds.json          {"rounds": [...], "stop_reason": ..., "peft": ..., "max_rounds": ...}: the completed rounds
  round-k/             θ_k (the model, or the adapter alone with PEFT) and the tokenizer, once round k is complete
    pairs.jsonl        the round's {prompt, chosen, rejected}, written before its DPO run starts
    pairs_metrics.json the metrics of those pairs (counts of filtered samples, distinct-2, ...)
    checkpoint-N/      TRL's checkpoints of the round's DPO run (save_strategy)
```

A round listed in ``rounds.json`` is complete; a ``round-k`` folder with ``pairs.jsonl`` but no entry is a round that
was interrupted, which resumes from its saved pairs and its last ``checkpoint-N``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from datasets import Dataset


logger = logging.getLogger(__name__)

ROUNDS_FILE = "rounds.json"
PAIRS_FILE = "pairs.jsonl"
PAIRS_METRICS_FILE = "pairs_metrics.json"

ROUND_TABLE_COLUMNS = (
    ("round", "round", "{}"),
    ("pairs", "num_pairs", "{}"),
    ("filtered", "num_rejected_filtered", "{}"),
    ("rej=chosen", "rejected_equals_chosen", "{:.2f}"),
    ("distinct-2", "rejected_distinct_2", "{:.3f}"),
    ("steps", "steps", "{}"),
    ("loss start", "loss_start", "{:.4f}"),
    ("loss end", "loss_end", "{:.4f}"),
    ("margin", "reward_margin", "{:.4f}"),
    ("reward acc", "reward_accuracy", "{:.2f}"),
    ("KL seq", "kl", "{:.4f}"),
    ("KL/token", "kl_per_token", "{:.5f}"),
    ("seconds", "seconds", "{:.0f}"),
    ("stop", "stop_reason", "{}"),
)


def format_round_table(history: list[dict]) -> str:
    """The per-round metrics as a Markdown table (``None`` / missing values print as ``-``)."""

    def cell(value, fmt):
        if value is None:
            return "-"
        try:
            return fmt.format(value)
        except (TypeError, ValueError):
            return str(value)

    header = "| " + " | ".join(title for title, _, _ in ROUND_TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in ROUND_TABLE_COLUMNS) + "|"
    rows = ["| " + " | ".join(cell(rec.get(key), fmt) for _, key, fmt in ROUND_TABLE_COLUMNS) + " |" for rec in history]
    return "\n".join([header, rule, *rows])


def write_json_atomically(path: Path, payload) -> None:
    """``path`` holds either its previous content or all of ``payload``, never a part of it."""
    from ...atomic import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)


class RoundFiles:
    """The files of a SPIN run under ``output_dir`` (see the module docstring)."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)

    @property
    def rounds_path(self) -> Path:
        return self.output_dir / ROUNDS_FILE

    def round_dir(self, k: int) -> Path:
        return self.output_dir / f"round-{k}"

    # The completed rounds

    def write_history(self, history: list[dict], peft: bool, max_rounds: int) -> None:
        payload = {
            "rounds": history,
            "stop_reason": history[-1]["stop_reason"] if history else None,
            "peft": peft,
            "max_rounds": max_rounds,
        }
        write_json_atomically(self.rounds_path, payload)

    def load_history(self, peft: bool) -> list[dict]:
        """The completed rounds recorded in ``rounds.json`` (none when it does not exist)."""
        if not self.rounds_path.exists():
            return []
        payload = json.loads(self.rounds_path.read_text())
        if payload.get("peft") != peft:
            raise ValueError(
                f"{self.rounds_path} was written by a run {'with' if payload.get('peft') else 'without'} PEFT; resume "
                "it with the same model setup (peft_config) or start a new output_dir."
            )
        return list(payload["rounds"])

    # The pairs of a round, saved before its DPO run

    def save_pairs(self, k: int, pairs: Dataset, metrics: dict) -> None:
        folder = self.round_dir(k)
        folder.mkdir(parents=True, exist_ok=True)
        pairs.to_json(folder / PAIRS_FILE, lines=True, force_ascii=False)
        write_json_atomically(folder / PAIRS_METRICS_FILE, metrics)  # written last: the pairs are complete

    def load_pairs(self, k: int) -> tuple[Dataset, dict] | None:
        """Round k's saved pairs and their metrics, or ``None`` when the round saved none (or not completely)."""
        folder = self.round_dir(k)
        if not (folder / PAIRS_METRICS_FILE).exists():
            return None
        rows = [json.loads(line) for line in (folder / PAIRS_FILE).read_text().splitlines() if line.strip()]
        return Dataset.from_list(rows), json.loads((folder / PAIRS_METRICS_FILE).read_text())

    def last_checkpoint(self, k: int) -> Path | None:
        """Round k's ``checkpoint-N`` of the largest N that holds a ``trainer_state.json`` (a complete checkpoint)."""
        folder = self.round_dir(k)
        if not folder.is_dir():
            return None
        steps = [
            (int(match.group(1)), path)
            for path in folder.iterdir()
            if (match := re.fullmatch(r"checkpoint-(\d+)", path.name)) and (path / "trainer_state.json").exists()
        ]
        return max(steps)[1] if steps else None

    def remove_checkpoints(self, k: int) -> None:
        """Remove the DPO checkpoints an earlier run left in ``round-k`` (a round starting afresh calls it): a later
        resume would otherwise continue from them."""
        folder = self.round_dir(k)
        stale = sorted(folder.glob("checkpoint-*")) if folder.is_dir() else []
        if stale:
            message = "Round %d starts afresh: removing %d checkpoint(s) of an earlier run in %s."
            logger.warning(message, k, len(stale), folder)
            for path in stale:
                shutil.rmtree(path)

    # The weights of a completed round

    def load_round_weights(self, model, k: int) -> None:
        """Load round k's saved weights into ``model`` (the adapter with PEFT)."""
        from accelerate.utils import is_peft_model
        from safetensors.torch import load_file

        folder = self.round_dir(k)
        if is_peft_model(model):
            from peft import set_peft_model_state_dict

            path = folder / "adapter_model.safetensors"
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: round {k} was not saved completely.")
            result = set_peft_model_state_dict(model, load_file(path), adapter_name="default")
            if result.unexpected_keys:
                raise ValueError(f"{path} does not match this adapter: unexpected keys {result.unexpected_keys[:5]}.")
            return
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder} holds no *.safetensors: round {k} was not saved completely.")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(file))
        missing, unexpected = model.load_state_dict(state, strict=False)
        untied = sorted(set(missing) - tied_parameters(model))
        if unexpected or untied:
            raise ValueError(f"{folder} does not match this model: missing {untied[:5]}, unexpected {unexpected[:5]}.")


def tied_parameters(model) -> set[str]:
    """Names of the parameters that share storage with another parameter (tied embeddings)."""
    by_pointer: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_pointer.setdefault(param.data_ptr(), []).append(name)
    return {name for names in by_pointer.values() if len(names) > 1 for name in names}
