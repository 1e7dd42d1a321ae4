"""Tiny on-disk assets for the command-line tests: a student, a teacher and a dataset folder, plus a verifier."""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict

from trl_opd.tiny import addition_dataset, char_tokenizer, tiny_llama


def addition_accuracy(prompts=None, completions=None, **kwargs) -> list[float]:
    """1.0 when the completion is the sum written in the prompt ``a+b=`` (a GRPO-style verifier)."""
    scores = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text = completion if isinstance(completion, str) else completion[0]["content"]
        a, b = prompt.rstrip("=").split("+")
        scores.append(float(text.strip() == str(int(a) + int(b))))
    return scores


def write_assets(root: Path) -> dict[str, str]:
    """Save ``student/``, ``teacher/`` (tiny Llamas + the character tokenizer) and ``data/`` (train 64, test 8 rows)."""
    tok = char_tokenizer()
    paths = {}
    for name, seed, hidden in (("student", 1, 32), ("teacher", 2, 48)):
        model = tiny_llama(len(tok), tokenizer=tok, seed=seed, hidden_size=hidden)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    rows = addition_dataset()
    DatasetDict(train=rows.select(range(64)), test=rows.select(range(64, 72))).save_to_disk(str(root / "data"))
    paths["data"] = str(root / "data")
    return paths
