r"""Self-play fine-tuning (SPIN, Chen et al. 2024): rounds of ``trl.DPOTrainer`` against the previous iterate.

Round k (k = 1, 2, ...)::

    θ_{k-1} ──frozen──────────────────────────────► reference π_ref
       │
       ├─ samples y' ~ θ_{k-1}(· | x) ──► "rejected"   (flawed ones dropped by the prefix filter)
       │  dataset y (or chosen_model) ──► "chosen"
       │
       └─ DPO on {x, y, y'} with β ─────► θ_k ──► saturation check ──► stop, or θ_k is round k+1's reference

with h = β · [(log π_θ(y) − log π_ref(y)) − (log π_θ(y') − log π_ref(y'))] and the loss −log σ(h) ("sigmoid", SPIN's
logistic loss) or max(0, 1 − h) ("hinge"). At the start of every round π_θ = π_ref, so h = 0 and the loss is ln 2
(sigmoid) or 1 (hinge) exactly.

The reference: without PEFT, a frozen deep copy of the model taken at the start of the round. With PEFT, no copy of
the model: TRL's ``DPOTrainer``, given a ``PeftModel`` and no ``ref_model``, adds a frozen adapter named ``"ref"``
holding a copy of the trainable adapter and computes the reference log-probabilities through it. The driver deletes
that adapter after the round, so the next round's ``DPOTrainer`` copies the new iterate.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import math
import os
import random
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import gather_object, is_peft_model
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, set_seed
from trl import DPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import create_model_from_path, use_adapter

from ..data import prepare_prompt_completion_dataset
from ..divergences import per_token_divergence
from ..evaluation import distinct_n, sample
from ..hooks import FlawedPrefixFilter
from ..models import disable_bnb_cpu_weight_repacking, shared_vocab_size
from .spin_config import SPIN_LOSS_TYPES, SPINConfig


logger = logging.getLogger(__name__)

ROUNDS_FILE = "rounds.json"
REF_ADAPTER = "ref"  # the name TRL's DPOTrainer gives the frozen copy of the adapter


# ----------------------------------------------------------------------------------------------------------------------
# The loss and the log-probabilities, as pure functions
# ----------------------------------------------------------------------------------------------------------------------


def spin_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair SPIN/DPO losses and logits h from sequence log-probabilities (summed over completion tokens).

    ``h = β · [(log π_θ(c) − log π_ref(c)) − (log π_θ(r) − log π_ref(r))]``; the loss is ``−log σ(h)`` for
    ``"sigmoid"`` and ``max(0, 1 − h)`` for ``"hinge"``, the same values as ``trl.DPOTrainer`` computes.

    Example (the tutorial's SPIN iteration): log-probs −2.3, −1.8 (policy) and −1.5, −2.5 (reference), β = 0.1 give
    h = −0.15 and a sigmoid loss of log(1 + e^0.15) = 0.77096.

    Returns:
        ``(losses, h)``, both shaped like the inputs.
    """
    if loss_type not in SPIN_LOSS_TYPES:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {', '.join(map(repr, SPIN_LOSS_TYPES))}.")
    h = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    losses = -F.logsigmoid(h) if loss_type == "sigmoid" else torch.relu(1 - h)
    return losses, h


@torch.no_grad()
def completion_logits(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """``(len(completion_ids), V)`` float32 logits that predict each completion token after ``prompt_ids``."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=device)
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(completion_ids) + 1).logits
    return logits[0, :-1].float()


@torch.no_grad()
def completion_log_probs(model, prompt_ids: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
    """log p(y_t | x, y<t) of every completion token (temperature 1), one unpadded row at a time."""
    out = []
    for prompt, completion in zip(prompt_ids, completions, strict=True):
        if not completion:
            out.append([])
            continue
        log_probs = completion_logits(model, prompt, completion).log_softmax(-1)
        target = torch.tensor(completion, device=log_probs.device).unsqueeze(1)
        out.append(log_probs.gather(1, target).squeeze(1).tolist())
    return out


def sequence_log_probs(model, prompt_ids: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
    """``(N,)`` log p(y | x) = Σ_t log p(y_t | x, y<t) of each completion (no gradient)."""
    return torch.tensor([sum(row) for row in completion_log_probs(model, prompt_ids, completions)])


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def saturation_verdict(
    kl: float | None, margin: float | None, saturation_kl: float | None, saturation_margin: float | None
) -> tuple[dict[str, bool], bool]:
    """Each enabled check (threshold not ``None``) and whether the round is saturated: every enabled check passes.

    ``kl < saturation_kl`` (KL(θ_k ‖ θ_{k-1}) on fresh samples) and ``margin < saturation_margin`` (the DPO reward
    margin on the round's pairs). With no check enabled a round is never saturated.
    """
    checks = {}
    if saturation_kl is not None:
        checks["kl"] = kl is not None and kl < saturation_kl
    if saturation_margin is not None:
        checks["margin"] = margin is not None and margin < saturation_margin
    return checks, bool(checks) and all(checks.values())


def _remove_fused_lm_head(model) -> None:
    """Undo TRL's ``add_fused_lm_head`` patch (an instance-level ``forward``), if present.

    Each round's ``DPOTrainer`` patches the model again; removing the previous patch keeps one layer of wrapping, and
    a deep copy made without it can't call back into the original model (the patch's closure holds the original
    model's bound ``forward``).
    """
    base = model.get_base_model() if is_peft_model(model) else model
    forward = base.__dict__.get("forward")
    code = getattr(getattr(forward, "__func__", None), "__code__", None)  # functools.wraps renamed it "forward"
    if code is not None and code.co_name == "_fused_forward":
        del base.__dict__["forward"]


def _frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A deep copy of ``model`` in eval mode with no parameter requiring grad."""
    _remove_fused_lm_head(model)
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def _completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the contents of a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


def _is_tied(model) -> set[str]:
    """Names of the parameters that share storage with another parameter (tied embeddings)."""
    by_pointer: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_pointer.setdefault(param.data_ptr(), []).append(name)
    return {name for names in by_pointer.values() if len(names) > 1 for name in names}


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


# ----------------------------------------------------------------------------------------------------------------------
# The round driver
# ----------------------------------------------------------------------------------------------------------------------


class SPINTrainer:
    """
    Self-play fine-tuning (Chen et al., 2024): rounds of DPO where the model learns to prefer the data over its own
    samples, against its own previous iterate.

    Round k: the previous iterate θ_{k-1} is frozen as the reference; the current model samples a "rejected"
    completion for each prompt; the dataset completion (or `chosen_model`'s output) is "chosen"; one
    [`trl.DPOTrainer`] run (sigmoid or hinge loss, β) makes θ_k, which is the next round's reference. After each
    round a saturation check estimates KL(θ_k ‖ θ_{k-1}) on fresh samples and the DPO reward margin on the round's
    pairs; the loop stops when both are below their thresholds ([`SPINConfig`]) or after `max_rounds`.

    Each round is saved in `output_dir/round-{k}` (the full model, or only the adapter with PEFT) and its metrics are
    appended to `output_dir/rounds.json` and [`round_history`]; `train(resume=True)` continues after the last
    completed round. Within a round everything is TRL's DPO (logging, checkpoints under `round-{k}`, callbacks).

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from trl_opd import SPINConfig, SPINTrainer

    >>> dataset = Dataset.from_list([{"prompt": "2 + 2 =", "completion": " 4"}] * 16)
    >>> trainer = SPINTrainer(
    ...     model="path/to/model",
    ...     args=SPINConfig(output_dir="spin-out", max_rounds=3, max_steps=20, beta=0.1, logging_steps=1),
    ...     train_dataset=dataset,
    ... )
    >>> history = trainer.train()  # one dict of metrics per round; trainer.stop_reason says why it stopped
    ```

    Args:
        model: a local path, a `PreTrainedModel` or a `PeftModel` (causal LM).
        args: a [`SPINConfig`].
        train_dataset: `prompt` + `completion` (text or messages) or `messages` (the last assistant message is the
            completion); `prompt` alone with a `chosen_model`. Rows with an empty completion are dropped.
        processing_class: the tokenizer (loaded from `model` when it is a path).
        chosen_model: optional model (path or instance, same tokenizer) whose outputs are "chosen" instead of the
            dataset completion: greedy with `chosen_temperature=0` (generated once), else sampled each round.
        peft_config: a `peft.LoraConfig` (or other adapter config): the model is wrapped once, before round 1, and
            only the adapter trains; each round's reference is a frozen copy of the adapter, never of the model.
        quantization_config: a `BitsAndBytesConfig` used when `model` is a path; with `peft_config` this is QLoRA
            (the CPU repacking workaround of bitsandbytes is applied before each generation).
        prefix_filter: a [`trl_opd.hooks.FlawedPrefixFilter`]: "rejected" samples it flags (loops, word salad) are
            dropped from the round's pairs and counted. (Its `policy` does not apply: replacing a rejected sample by
            the dataset completion would make a pair of two identical completions.)
        callbacks: `TrainerCallback`s given to every round's `DPOTrainer`.

    Attributes:
        round_history: one dict of metrics per completed round (also in `output_dir/rounds.json`).
        stop_reason: `"saturated"` or `"max_rounds"` after `train()`.
        round_trainer: the last round's `DPOTrainer`, for inspection; its reference and optimizer are released.
        last_pairs: the last round's `{prompt, chosen, rejected}` dataset (also in `round-{k}/pairs.jsonl`).
    """

    _tag_names = ["trl", "trl-opd", "spin", "dpo"]
    _name = "SPIN"
    _paper = {
        "title": "Self-Play Fine-Tuning Converts Weak Language Models to Strong Language Models",
        "id": "2401.01335",
        "citation": textwrap.dedent("""\
            @inproceedings{chen2024self,
                title     = {{Self-Play Fine-Tuning Converts Weak Language Models to Strong Language Models}},
                author    = {Zixiang Chen and Yihe Deng and Huizhuo Yuan and Kaixuan Ji and Quanquan Gu},
                year      = 2024,
                booktitle = {Forty-first International Conference on Machine Learning, {ICML} 2024},
            }"""),  # noqa: E501
    }

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: SPINConfig | None = None,
        train_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        chosen_model: str | PreTrainedModel | None = None,
        peft_config=None,
        quantization_config=None,
        prefix_filter: FlawedPrefixFilter | None = None,
        callbacks: list[TrainerCallback] | None = None,
    ):
        if args is None:
            args = SPINConfig("spin-output")
        if not isinstance(args, SPINConfig):
            raise TypeError(f"args must be a trl_opd.SPINConfig, got {type(args).__name__}.")
        if train_dataset is None:
            raise ValueError("SPINTrainer needs a train_dataset with prompts (and completions, the 'chosen' side).")
        if not isinstance(train_dataset, Dataset):
            raise TypeError(
                "SPIN draws prompts by index every round: train_dataset must be a map-style datasets.Dataset, got "
                f"{type(train_dataset).__name__}."
            )
        if prefix_filter is not None and not isinstance(prefix_filter, FlawedPrefixFilter):
            raise TypeError(
                f"prefix_filter must be a trl_opd.hooks.FlawedPrefixFilter, got {type(prefix_filter).__name__}."
            )
        self.args = args
        self.prefix_filter = prefix_filter
        self.callbacks = callbacks

        # Data: prompt + completion (messages are split); completions may be absent when chosen_model writes them.
        self.train_dataset = prepare_prompt_completion_dataset(train_dataset, "train_dataset", chosen_model is None)
        if len(self.train_dataset) == 0:
            raise ValueError("train_dataset is empty.")

        # Model: loaded like DPOTrainer would, then wrapped with the adapter once for all rounds.
        set_seed(args.seed)  # adapter initialisation is random
        model_path = model if isinstance(model, str) else None
        if isinstance(model, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            if quantization_config is not None:
                init_kwargs["quantization_config"] = quantization_config
            if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
                init_kwargs["device_map"] = None
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            model = create_model_from_path(model, **init_kwargs)
        elif quantization_config is not None:
            raise ValueError(
                "quantization_config only applies when the model is given as a path; this model is already loaded."
            )
        quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
        if peft_config is not None:
            if is_peft_model(model):
                raise ValueError(
                    "You passed a PeftModel and a peft_config: pass the base model with peft_config, or the PeftModel "
                    "alone (its adapter then trains)."
                )
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if quantized and not is_peft_model(model):
            raise ValueError("A quantized model only trains through adapters: pass peft_config (QLoRA).")
        self.model = model
        disable_bnb_cpu_weight_repacking(self.model)

        # Tokenizer.
        if processing_class is None:
            if model_path is None:
                raise ValueError("Pass processing_class= (the tokenizer) when the model is given as an instance.")
            processing_class = AutoTokenizer.from_pretrained(model_path)
        if not isinstance(processing_class, PreTrainedTokenizerBase):
            raise TypeError("SPINTrainer supports text models: processing_class must be a tokenizer.")
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        self.processing_class = processing_class
        eos = {processing_class.eos_token_id}
        generation_eos = getattr(getattr(self._unwrapped_base(), "generation_config", None), "eos_token_id", None)
        eos |= set(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        self.eos_token_ids = sorted(i for i in eos if i is not None)
        self.pad_token_id = processing_class.pad_token_id

        # The optional writer of "chosen" completions.
        if isinstance(chosen_model, str):
            chosen_model = create_model_from_path(
                chosen_model, **{"trust_remote_code": args.trust_remote_code, **(args.model_init_kwargs or {})}
            )
        if chosen_model is not None:
            shared_vocab_size(self._unwrapped_base(), chosen_model, processing_class)
            chosen_model.eval()
            chosen_model.requires_grad_(False)
            disable_bnb_cpu_weight_repacking(chosen_model)
        self.chosen_model = chosen_model
        self._cached_chosen: dict[int, list[int]] = {}

        self._conversational = is_conversational({"prompt": self.train_dataset[0]["prompt"]})
        self._prompt_ids = [self._tokenize_prompt(p) for p in self.train_dataset["prompt"]]

        self.round_history: list[dict] = []
        self.stop_reason: str | None = None
        self.round_trainer: DPOTrainer | None = None
        self.last_pairs: Dataset | None = None

    # ------------------------------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------------------------------

    def train(self, resume: bool = False) -> list[dict]:
        """Run rounds until saturation or ``max_rounds``; returns (and stores in ``round_history``) one dict per round.

        With ``resume=True`` the rounds recorded in ``output_dir/rounds.json`` are kept, the model is loaded from the
        last one's ``round-{k}`` folder and the loop continues after it (a run that stopped on ``max_rounds`` goes on
        up to the new ``max_rounds``; one that saturated does nothing more).
        """
        history: list[dict] = []
        if resume:
            history = self._load_history()
            if history:
                self._load_round_weights(history[-1]["round"])
                logger.info("Resuming SPIN after round %d.", history[-1]["round"])
            else:
                logger.warning("resume=True but %s has no completed round; starting at round 1.", self._rounds_path())
        elif self._rounds_path().exists():
            logger.warning("%s exists and is overwritten (pass resume=True to continue it).", self._rounds_path())
        self.round_history = history
        if history and history[-1].get("stop_reason") == "saturated":
            logger.info("SPIN already saturated at round %d; nothing to do.", history[-1]["round"])
            self.stop_reason = "saturated"
            return history
        if history:
            history[-1]["stop_reason"] = None  # no longer the last round

        self.stop_reason = None
        for k in range(len(history) + 1, self.args.max_rounds + 1):
            record = self._run_round(k)
            if record["saturated"]:
                record["stop_reason"] = "saturated"
            elif k == self.args.max_rounds:
                record["stop_reason"] = "max_rounds"
            history.append(record)
            self._save_round(k)
            self._write_history(history)
            logger.info("SPIN round %d: %s", k, {key: record[key] for key in ("loss_end", "reward_margin", "kl")})
            if record["stop_reason"] is not None:
                self.stop_reason = record["stop_reason"]
                break
        else:  # max_rounds already reached before this call
            if history:
                history[-1]["stop_reason"] = self.stop_reason = "max_rounds"
                self._write_history(history)
        return history

    def save_model(self, output_dir: str | os.PathLike | None = None) -> None:
        """Save the current model (the adapter alone with PEFT) and the tokenizer to ``output_dir``."""
        output_dir = Path(output_dir or self.args.output_dir)
        if PartialState().is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            self._delete_ref_adapter()
            self.model.save_pretrained(output_dir)
            self.processing_class.save_pretrained(output_dir)
        PartialState().wait_for_everyone()

    def round_table(self) -> str:
        """``round_history`` as a Markdown table."""
        return format_round_table(self.round_history)

    # ------------------------------------------------------------------------------------------------------------------
    # One round
    # ------------------------------------------------------------------------------------------------------------------

    def _run_round(self, k: int) -> dict:
        start = time.perf_counter()
        pairs, record = self._make_pairs(k)
        self.last_pairs = pairs

        trainer = self._round_trainer(k, pairs)
        self.round_trainer = trainer
        record["reference"] = self._describe_reference(trainer)
        train_output = trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        record.update(
            steps=trainer.state.global_step,
            loss_start=losses[0] if losses else None,
            loss_end=losses[-1] if losses else None,
            train_loss=train_output.training_loss,
        )

        # Saturation check: the margin of θ_k over θ_{k-1} on this round's pairs, KL(θ_k ‖ θ_{k-1}) on fresh samples.
        metrics = trainer.evaluate(eval_dataset=pairs)
        record.update(
            reward_margin=metrics.get("eval_rewards/margins"),
            reward_accuracy=metrics.get("eval_rewards/accuracies"),
            eval_loss=metrics.get("eval_loss"),
        )
        record.update(self._kl_on_fresh_samples(trainer, k))
        record["saturation_checks"], record["saturated"] = saturation_verdict(
            record["kl"], record["reward_margin"], self.args.saturation_kl, self.args.saturation_margin
        )
        record["stop_reason"] = None
        record["checkpoint"] = f"round-{k}"
        record["seconds"] = time.perf_counter() - start

        self._release(trainer)
        return record

    def _make_pairs(self, k: int) -> tuple[Dataset, dict]:
        """The round's DPO dataset {prompt, chosen, rejected} and the metrics of its "rejected" samples."""
        indices = self._round_indices(k)
        prompt_ids = [self._prompt_ids[i] for i in indices]
        rows = [self.train_dataset[i] for i in indices]
        set_seed(self.args.seed + k)
        rejected_ids = self._across_processes(
            prompt_ids, lambda p: self._generate(self.model, p, self.args.generation_temperature)
        )
        chosen = self._chosen_completions(k, indices, rows)
        reasons = self._flawed_reasons(prompt_ids, rejected_ids)

        eos = set(self.eos_token_ids)
        prompts, chosen_kept, rejected_kept, kept_ids, equal = [], [], [], [], 0
        for row, choice, ids, reason in zip(rows, chosen, rejected_ids, reasons, strict=True):
            if reason is not None:
                continue
            body = ids[:-1] if ids and ids[-1] in eos else ids
            text = self.processing_class.decode(body, skip_special_tokens=True)
            equal += text.strip() == _completion_text(choice).strip()
            prompts.append(row["prompt"])
            chosen_kept.append(choice)
            rejected_kept.append([{"role": "assistant", "content": text}] if self._conversational else text)
            kept_ids.append(ids)
        n_filtered = len(indices) - len(prompts)
        if not prompts:
            raise RuntimeError(
                f"Round {k}: the prefix filter flagged every one of the {len(indices)} rejected samples "
                f"({ {r: reasons.count(r) for r in set(reasons)} }), so there is no pair to train on. Loosen the "
                "filter (raise max_perplexity, loop_min_repeats or loop_min_tokens), lower generation_temperature, "
                "or train without prefix_filter."
            )
        record = {
            "round": k,
            "num_prompts": len(indices),
            "num_pairs": len(prompts),
            "num_rejected_filtered": n_filtered,
            "rejected_filtered_loop": reasons.count("loop"),
            "rejected_filtered_perplexity": reasons.count("perplexity"),
            "rejected_distinct_2": distinct_n(kept_ids, 2),
            "rejected_mean_tokens": sum(map(len, kept_ids)) / len(kept_ids),  # EOS included
            "rejected_eos_rate": sum(bool(ids) and ids[-1] in eos for ids in rejected_ids) / len(rejected_ids),
            "rejected_equals_chosen": equal / len(prompts),
        }
        pairs = Dataset.from_dict({"prompt": prompts, "chosen": chosen_kept, "rejected": rejected_kept})
        return pairs, record

    def _round_trainer(self, k: int, pairs: Dataset) -> DPOTrainer:
        """A DPOTrainer whose reference is the current model θ_{k-1}: the "ref" adapter (PEFT) or a frozen copy."""
        args = copy.copy(self.args)
        args.output_dir = str(self._round_dir(k))
        args.seed = self.args.seed + k - 1
        _remove_fused_lm_head(self.model)
        if is_peft_model(self.model):
            self._delete_ref_adapter()  # DPOTrainer adds a fresh "ref" copy of the current adapter
            reference = None
        else:
            reference = _frozen_copy(self.model)
        trainer = DPOTrainer(
            model=self.model,
            ref_model=reference,
            args=args,
            train_dataset=pairs,
            processing_class=self.processing_class,
            callbacks=self.callbacks,
        )
        if trainer.ref_model is None and REF_ADAPTER not in self.model.peft_config:
            # peft < 0.20 with `target_parameters`: TRL falls back to the adapter-disabled base, which is θ_{k-1} only
            # in round 1 with a fresh adapter.
            if k > 1:
                raise RuntimeError(
                    "TRL's DPOTrainer did not add a frozen 'ref' adapter (peft < 0.20 with target_parameters), so the "
                    "reference would be the base model instead of the previous iterate. Upgrade peft to >= 0.20."
                )
        return trainer

    def _describe_reference(self, trainer: DPOTrainer) -> dict:
        """What the round's reference is and how many parameters exist only for it."""
        if trainer.ref_model is not None:
            reference = trainer.accelerator.unwrap_model(trainer.ref_model)
            return {"kind": "frozen copy", "parameters": sum(p.numel() for p in reference.parameters())}
        if REF_ADAPTER in self.model.peft_config:
            n = sum(p.numel() for name, p in self.model.named_parameters() if f".{REF_ADAPTER}." in name)
            return {"kind": f"frozen adapter {REF_ADAPTER!r}", "parameters": n}
        return {"kind": "adapters disabled", "parameters": 0}

    @contextlib.contextmanager
    def _reference(self, trainer: DPOTrainer) -> Iterator[torch.nn.Module]:
        """The round's reference model θ_{k-1}, exactly as the DPOTrainer computes its log-probabilities."""
        if trainer.ref_model is not None:
            yield trainer.accelerator.unwrap_model(trainer.ref_model)
            return
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        with use_adapter(unwrapped, adapter_name=REF_ADAPTER if REF_ADAPTER in unwrapped.peft_config else None):
            yield unwrapped

    def _kl_on_fresh_samples(self, trainer: DPOTrainer, k: int) -> dict:
        """KL(θ_k ‖ θ_{k-1}) estimated on completions sampled afresh from θ_k at temperature 1.

        ``kl``: mean over samples of Σ_t KL(θ_k(·|x,y<t) ‖ θ_{k-1}(·|x,y<t)), the exact per-token KL summed along each
        sampled sequence: an unbiased estimate of the sequence-level KL that is never negative and has a lower
        variance than the plain Monte-Carlo one. ``kl_mc``: mean of Σ_t [log θ_k(y_t) − log θ_{k-1}(y_t)] (the
        tutorial's estimator). ``kl_per_token``: the summed KL over all sampled tokens / number of tokens.
        """
        n = self.args.num_saturation_samples
        if n == 0:
            return {"kl": None, "kl_mc": None, "kl_per_token": None, "kl_samples": 0}
        generator = random.Random(self.args.seed * 1_000_003 + 7919 * k)
        size = len(self._prompt_ids)
        picks = generator.sample(range(size), n) if n <= size else [generator.randrange(size) for _ in range(n)]
        prompt_ids = [self._prompt_ids[i] for i in picks]
        set_seed(self.args.seed + 100_003 * k)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        samples = self._across_processes(prompt_ids, lambda p: self._generate(policy, p, 1.0))

        def score(items):
            out = []
            was_training = policy.training
            policy.eval()
            try:
                for prompt, completion in items:
                    if not completion:
                        out.append((0.0, 0.0, 0))
                        continue
                    logits = completion_logits(policy, prompt, completion)
                    with self._reference(trainer) as reference:
                        ref_logits = completion_logits(reference, prompt, completion)
                    kl = per_token_divergence(logits, ref_logits, "rkl").sum().item()  # KL(policy ‖ reference)
                    target = torch.tensor(completion, device=logits.device).unsqueeze(1)
                    gap = logits.log_softmax(-1).gather(1, target) - ref_logits.log_softmax(-1).gather(1, target)
                    out.append((kl, gap.sum().item(), len(completion)))
            finally:
                policy.train(was_training)
            return out

        rows = self._across_processes(list(zip(prompt_ids, samples, strict=True)), score)
        tokens = sum(r[2] for r in rows)
        return {
            "kl": sum(r[0] for r in rows) / len(rows),
            "kl_mc": sum(r[1] for r in rows) / len(rows),
            "kl_per_token": sum(r[0] for r in rows) / max(tokens, 1),
            "kl_samples": len(rows),
        }

    def _release(self, trainer: DPOTrainer) -> None:
        """Free the round's reference and optimizer once its metrics are in."""
        trainer.ref_model = None
        trainer.optimizer = None
        trainer.lr_scheduler = None
        trainer.accelerator.free_memory()
        self._delete_ref_adapter()
        _remove_fused_lm_head(self.model)
        gc.collect()

    # ------------------------------------------------------------------------------------------------------------------
    # Generation, chosen completions, the prefix filter
    # ------------------------------------------------------------------------------------------------------------------

    def _tokenize_prompt(self, prompt) -> list[int]:
        """Prompt token ids exactly as ``DPOTrainer`` tokenizes them (chat template with the generation prompt)."""
        if is_conversational({"prompt": prompt}):
            return list(
                self.processing_class.apply_chat_template(
                    prompt, tokenize=True, return_dict=True, add_generation_prompt=True
                )["input_ids"]
            )
        return list(self.processing_class(text=prompt)["input_ids"])

    def _generate(self, model, prompt_ids: list[list[int]], temperature: float) -> list[list[int]]:
        """One completion per prompt (cut after the first EOS): plain sampling at ``temperature``, greedy at 0."""
        if not prompt_ids:
            return []
        disable_bnb_cpu_weight_repacking(model)
        kwargs: dict[str, Any] = {"max_new_tokens": self.args.max_completion_length}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False)
        size = self.args.generation_batch_size
        out: list[list[int]] = []
        for i in range(0, len(prompt_ids), size):
            out += sample(model, prompt_ids[i : i + size], self.pad_token_id, self.eos_token_ids, **kwargs)
        return out

    def _chosen_completions(self, k: int, indices: list[int], rows: list[dict]) -> list:
        """The "chosen" side: the dataset completions, or ``chosen_model``'s outputs (greedy ones are cached)."""
        if self.chosen_model is None:
            out = []
            for row in rows:
                completion = row["completion"]
                if self._conversational and isinstance(completion, str):
                    completion = [{"role": "assistant", "content": completion}]
                elif not self._conversational and not isinstance(completion, str):
                    raise ValueError("A text prompt needs a text completion; got a list of messages.")
                out.append(completion)
            return out
        temperature = self.args.chosen_temperature
        missing = [i for i in indices if temperature > 0 or i not in self._cached_chosen]
        if missing:
            set_seed(self.args.seed + 31 * k + 1)
            generated = self._across_processes(
                [self._prompt_ids[i] for i in missing], lambda p: self._generate(self.chosen_model, p, temperature)
            )
            self._cached_chosen.update(zip(missing, generated, strict=True))
        eos = set(self.eos_token_ids)
        out = []
        for i in indices:
            ids = self._cached_chosen[i]
            text = self.processing_class.decode(ids[:-1] if ids and ids[-1] in eos else ids, skip_special_tokens=True)
            out.append([{"role": "assistant", "content": text}] if self._conversational else text)
        return out

    def _flawed_reasons(self, prompt_ids: list[list[int]], completions: list[list[int]]) -> list[str | None]:
        """The prefix filter's verdict on each rejected sample (``None`` = kept)."""
        if self.prefix_filter is None:
            return [None] * len(completions)
        if self.prefix_filter.needs_log_probs:
            model = self.model
            was_training = model.training
            model.eval()
            try:
                log_probs = self._across_processes(
                    list(zip(prompt_ids, completions, strict=True)),
                    lambda items: completion_log_probs(model, [p for p, _ in items], [c for _, c in items]),
                )
            finally:
                model.train(was_training)
        else:
            log_probs = [None] * len(completions)
        return [self.prefix_filter.reason(c, lp) for c, lp in zip(completions, log_probs, strict=True)]

    @staticmethod
    def _across_processes(items: list, fn: Callable[[list], list]) -> list:
        """``fn(items)``, each process doing a contiguous slice; the results are gathered in order on every process."""
        state = PartialState()
        if state.num_processes == 1:
            return fn(items)
        per = math.ceil(len(items) / state.num_processes)
        mine = items[state.process_index * per : (state.process_index + 1) * per]
        return gather_object(fn(mine) if mine else [])

    def _round_indices(self, k: int) -> list[int]:
        n = len(self._prompt_ids)
        per_round = self.args.prompts_per_round
        if per_round is None or per_round >= n:
            return list(range(n))
        return sorted(random.Random(self.args.seed * 7919 + k).sample(range(n), per_round))

    # ------------------------------------------------------------------------------------------------------------------
    # Rounds on disk
    # ------------------------------------------------------------------------------------------------------------------

    def _unwrapped_base(self):
        return self.model.get_base_model() if is_peft_model(self.model) else self.model

    def _delete_ref_adapter(self) -> None:
        if is_peft_model(self.model) and REF_ADAPTER in self.model.peft_config:
            self.model.delete_adapter(REF_ADAPTER)

    def _round_dir(self, k: int) -> Path:
        return Path(self.args.output_dir) / f"round-{k}"

    def _rounds_path(self) -> Path:
        return Path(self.args.output_dir) / ROUNDS_FILE

    def _save_round(self, k: int) -> None:
        """``round-{k}``: the model (or adapter), the tokenizer and the round's pairs (``pairs.jsonl``)."""
        self.save_model(self._round_dir(k))
        if PartialState().is_main_process and self.last_pairs is not None:
            self.last_pairs.to_json(self._round_dir(k) / "pairs.jsonl", lines=True, force_ascii=False)

    def _write_history(self, history: list[dict]) -> None:
        if not PartialState().is_main_process:
            return
        path = self._rounds_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "rounds": history,
            "stop_reason": history[-1]["stop_reason"] if history else None,
            "peft": is_peft_model(self.model),
            "max_rounds": self.args.max_rounds,
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, path)

    def _load_history(self) -> list[dict]:
        path = self._rounds_path()
        if not path.exists():
            return []
        payload = json.loads(path.read_text())
        if payload.get("peft") != is_peft_model(self.model):
            raise ValueError(
                f"{path} was written by a run {'with' if payload.get('peft') else 'without'} PEFT; resume it with the "
                "same model setup (peft_config) or start a new output_dir."
            )
        return list(payload["rounds"])

    def _load_round_weights(self, k: int) -> None:
        """Load round k's saved weights into the model (the adapter with PEFT)."""
        from safetensors.torch import load_file

        folder = self._round_dir(k)
        if is_peft_model(self.model):
            from peft import set_peft_model_state_dict

            path = folder / "adapter_model.safetensors"
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: round {k} was not saved completely.")
            result = set_peft_model_state_dict(self.model, load_file(path), adapter_name="default")
            if result.unexpected_keys:
                raise ValueError(f"{path} does not match this adapter: unexpected keys {result.unexpected_keys[:5]}.")
            return
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder} holds no *.safetensors: round {k} was not saved completely.")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(file))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        untied = sorted(set(missing) - _is_tied(self.model))
        if unexpected or untied:
            raise ValueError(f"{folder} does not match this model: missing {untied[:5]}, unexpected {unexpected[:5]}.")
