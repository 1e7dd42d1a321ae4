r"""The round driver: rounds of ``trl.DPOTrainer`` against the previous iterate, until saturation or ``max_rounds``.

Round k (k = 1, 2, ...)::

    θ_{k-1} ──frozen──────────────────────────────► reference π_ref               (reference.py)
       │
       ├─ samples y' ~ θ_{k-1}(· | x) ──► "rejected"   (flawed ones dropped by the prefix filter)   (pairs.py)
       │  dataset y (or chosen_model) ──► "chosen"
       │
       └─ DPO on {x, y, y'} with β ─────► θ_k ──► saturation check ──► stop, or θ_k is round k+1's reference
                                                  (saturation.py)

with h = β · [(log π_θ(y) − log π_ref(y)) − (log π_θ(y') − log π_ref(y'))] and the loss −log σ(h) ("sigmoid", SPIN's
logistic loss) or max(0, 1 − h) ("hinge"). At the start of every round π_θ = π_ref, so h = 0 and the loss is ln 2
(sigmoid) or 1 (hinge) exactly. Each round's DPO run carries the non-finite guard (round_trainer.py); the rounds'
files and the resume points are described in rounds.py.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import is_peft_model
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, set_seed
from trl.data_utils import is_conversational

from ...data import prepare_prompt_completion_dataset
from ...hooks import FlawedPrefixFilter
from ...models import disable_bnb_cpu_weight_repacking, load_model, shared_vocab_size
from ...sharding import refuse_sharded_student
from ..arguments import resolve_args
from ..guard import NonFiniteError, nonfinite_trainable_parameters
from ..vllm_rollouts import colocated_generation
from .config import SPINConfig
from .inputs import DATASET_HINT, load_policy, load_tokenizer, model_max_positions, prompts_within_limits
from .pairs import PairsMixin, across_processes
from .reference import (
    REF_ADAPTER,
    delete_ref_adapter,
    describe_reference,
    frozen_copy,
    reference_model,
    remove_fused_lm_head,
)
from .round_trainer import SPINRoundTrainer
from .rounds import RoundFiles, format_round_table
from .saturation import kl_rows, saturation_verdict, summarize_kl


logger = logging.getLogger(__name__)


class SPINTrainer(PairsMixin):
    """
    Self-play fine-tuning (Chen et al., 2024): rounds of DPO where the model learns to prefer the data over its own
    samples, against its own previous iterate.

    Round k: the previous iterate θ_{k-1} is frozen as the reference; the current model samples a "rejected"
    completion for each prompt; the dataset completion (or `chosen_model`'s output) is "chosen"; one
    [`trl.DPOTrainer`] run (sigmoid or hinge loss, β) makes θ_k, which is the next round's reference. After each
    round a saturation check estimates KL(θ_k ‖ θ_{k-1}) on fresh samples and the DPO reward margin on the round's
    pairs; the loop stops when both are below their thresholds ([`SPINConfig`]) or after `max_rounds`.

    Each round is saved in `output_dir/round-{k}` (the full model, or only the adapter with PEFT) and its metrics are
    appended to `output_dir/rounds.json` and [`round_history`]. `train(resume=True)` continues after the last
    completed round, or inside an interrupted one from its saved pairs and its last DPO `checkpoint-N`. Within a round
    everything is TRL's DPO (logging, checkpoints under `round-{k}`, callbacks), with the non-finite guard.

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
            completion); `prompt` alone with a `chosen_model`. Rows with an empty completion are dropped, and so are
            prompts longer than `max_prompt_length`, with logged counts.
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
        last_rejected_ids: the token ids of the last round's kept "rejected" samples (`None` for a round resumed from
            its saved pairs).
        num_prompts_dropped: prompts of the dataset dropped for being longer than `max_prompt_length`.
    """

    _tag_names = ["trl", "trl-opd", "spin", "dpo"]
    _name = "SPIN"

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
        args = resolve_args(args, SPINConfig, "spin-output")
        refuse_sharded_student(
            args, "SPINTrainer", "it saves each round's model with save_pretrained, which would write the shards"
        )
        if train_dataset is None:
            raise ValueError("SPINTrainer needs a train_dataset with prompts (and completions, the 'chosen' side).")
        if not isinstance(train_dataset, Dataset):
            raise TypeError(
                "SPIN draws prompts by index every round: train_dataset must be a map-style datasets.Dataset, got "
                f"{type(train_dataset).__name__}."
            )
        if len(train_dataset) == 0:
            raise ValueError("train_dataset is empty: SPIN needs prompts (and their 'chosen' completions).")
        if prefix_filter is not None and not isinstance(prefix_filter, FlawedPrefixFilter):
            raise TypeError(
                f"prefix_filter must be a trl_opd.hooks.FlawedPrefixFilter, got {type(prefix_filter).__name__}."
            )
        self.args = args
        self.prefix_filter = prefix_filter
        self.callbacks = callbacks

        # Data: prompt + completion (messages are split); completions may be absent when chosen_model writes them.
        self.train_dataset = prepare_prompt_completion_dataset(
            train_dataset, "train_dataset", chosen_model is None, DATASET_HINT
        )

        # Tokenizer (checked before a model is loaded), then the model: loaded like DPOTrainer would, and wrapped with
        # the adapter once for all rounds.
        self.processing_class = load_tokenizer(model if isinstance(model, str) else None, processing_class)
        set_seed(args.seed)  # adapter initialisation is random
        self.model = load_policy(model, args, peft_config, quantization_config)
        eos = {self.processing_class.eos_token_id}
        generation_eos = getattr(getattr(self._unwrapped_base(), "generation_config", None), "eos_token_id", None)
        eos |= set(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        self.eos_token_ids = sorted(i for i in eos if i is not None)
        self.pad_token_id = self.processing_class.pad_token_id

        # The optional writer of "chosen" completions (the model's init kwargs apply when it is a path).
        if chosen_model is not None:
            init_kwargs = args.model_init_kwargs if isinstance(chosen_model, str) else None
            chosen_model = load_model(chosen_model, init_kwargs, args, role="chosen_model")
            shared_vocab_size(self._unwrapped_base(), chosen_model, self.processing_class)
            chosen_model.eval()
            chosen_model.requires_grad_(False)
            disable_bnb_cpu_weight_repacking(chosen_model)
        self.chosen_model = chosen_model
        self._cached_chosen: dict[int, list[int]] = {}

        # Prompts, tokenized as DPO does; those too long are dropped (max_prompt_length) or refused.
        self._conversational = is_conversational({"prompt": self.train_dataset[0]["prompt"]})
        prompt_ids = [self._tokenize_prompt(p) for p in self.train_dataset["prompt"]]
        keep = prompts_within_limits(prompt_ids, args, model_max_positions(self._unwrapped_base()))
        self.num_prompts_dropped = len(prompt_ids) - len(keep)
        if self.num_prompts_dropped:
            self.train_dataset = self.train_dataset.select(keep)
        self._prompt_ids = [prompt_ids[i] for i in keep]

        # The colocated vLLM engine of the "rejected" samples (started once; weights synced before each round's).
        self.vllm_generation = None
        if args.use_vllm:
            if not os.path.isdir(str(getattr(self._unwrapped_base(), "name_or_path", "") or "")):
                raise ValueError(
                    "use_vllm=True: vLLM loads the model from its folder, but the model's name_or_path "
                    f"({getattr(self._unwrapped_base(), 'name_or_path', None)!r}) is not one. Save the model with "
                    "save_pretrained (and its tokenizer) and pass the folder."
                )
            self.vllm_generation = colocated_generation(
                self.model, self.processing_class, args, args.generation_temperature, self.eos_token_ids
            )

        self.round_history: list[dict] = []
        self.stop_reason: str | None = None
        self.round_trainer: SPINRoundTrainer | None = None
        self.last_pairs: Dataset | None = None
        self.last_rejected_ids: list[list[int]] | None = None

    # ------------------------------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------------------------------

    def train(self, resume: bool = False) -> list[dict]:
        """Run rounds until saturation or ``max_rounds``; returns (and stores in ``round_history``) one dict per round.

        With ``resume=True`` the rounds recorded in ``output_dir/rounds.json`` are kept and the model is loaded from
        the last one's ``round-{k}`` folder. The next round, if it was interrupted, resumes from its saved pairs
        (``round-{k+1}/pairs.jsonl``) and its last DPO checkpoint (``round-{k+1}/checkpoint-N``, when
        ``save_strategy`` saved one); otherwise it starts afresh. A run that stopped on ``max_rounds`` goes on up to
        the new ``max_rounds``; one that saturated does nothing more.
        """
        history: list[dict] = []
        if resume:
            history = self._files.load_history(is_peft_model(self.model))
            if history:
                self._files.load_round_weights(self.model, history[-1]["round"])
                logger.info("Resuming SPIN after round %d.", history[-1]["round"])
            elif self._files.load_pairs(1) is None:
                logger.warning(
                    "resume=True but %s has no completed or interrupted round; starting at round 1.",
                    self.args.output_dir,
                )
        elif self._files.rounds_path.exists():
            logger.warning("%s exists and is overwritten (pass resume=True to continue it).", self._files.rounds_path)
        self.round_history = history
        if history and history[-1].get("stop_reason") == "saturated":
            logger.info("SPIN already saturated at round %d; nothing to do.", history[-1]["round"])
            self.stop_reason = "saturated"
            return history
        if history:
            history[-1]["stop_reason"] = None  # no longer the last round

        self.stop_reason = None
        first = len(history) + 1
        for k in range(first, self.args.max_rounds + 1):
            record = self._run_round(k, resume=resume and k == first)
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
        """Save the current model (the adapter alone with PEFT) and the tokenizer to ``output_dir``.

        Raises:
            NonFiniteError: a trainable parameter holds NaN or inf; nothing is written.
        """
        output_dir = Path(output_dir or self.args.output_dir)
        bad = nonfinite_trainable_parameters(self.model)
        if bad:
            raise NonFiniteError(
                f"Refusing to save to {output_dir}: {len(bad)} trainable parameter tensor(s) hold NaN or inf "
                f"({', '.join(bad[:3])}). The last completed round on disk is the last good one; resume from it with "
                "a lower learning rate."
            )
        if PartialState().is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            delete_ref_adapter(self.model)
            self.model.save_pretrained(output_dir)
            self.processing_class.save_pretrained(output_dir)
        PartialState().wait_for_everyone()

    def round_table(self) -> str:
        """``round_history`` as a Markdown table."""
        return format_round_table(self.round_history)

    # ------------------------------------------------------------------------------------------------------------------
    # One round
    # ------------------------------------------------------------------------------------------------------------------

    def _run_round(self, k: int, resume: bool = False) -> dict:
        """Round k: its pairs (saved ones when ``resume``), its DPO run (from its last checkpoint when ``resume``) and
        the saturation check."""
        start = time.perf_counter()
        saved = self._files.load_pairs(k) if resume else None
        checkpoint = None
        if saved is None:
            pairs, record = self._make_pairs(k)
            if PartialState().is_main_process:
                self._files.remove_checkpoints(k)
                self._files.save_pairs(k, pairs, record)
            PartialState().wait_for_everyone()
        else:
            pairs, record = saved
            self.last_rejected_ids = None
            checkpoint = self._files.last_checkpoint(k)
            logger.info("Resuming round %d from its saved pairs and %s.", k, checkpoint or "its first DPO step")
        self.last_pairs = pairs

        trainer = self._round_trainer(k, pairs)
        self.round_trainer = trainer
        record["reference"] = describe_reference(trainer, self.model)
        train_output = trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        record.update(
            steps=trainer.state.global_step,
            loss_start=losses[0] if losses else None,
            loss_end=losses[-1] if losses else None,
            train_loss=train_output.training_loss,
            nonfinite_skipped_steps=trainer._skipped_steps,
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

    def _round_trainer(self, k: int, pairs: Dataset) -> SPINRoundTrainer:
        """A DPOTrainer whose reference is the current model θ_{k-1}: the "ref" adapter (PEFT) or a frozen copy."""
        args = copy.copy(self.args)
        args.output_dir = str(self._files.round_dir(k))
        args.seed = self.args.seed + k - 1
        remove_fused_lm_head(self.model)
        if is_peft_model(self.model):
            delete_ref_adapter(self.model)  # DPOTrainer adds a fresh "ref" copy of the current adapter
            reference = None
        else:
            reference = frozen_copy(self.model)
        trainer = SPINRoundTrainer(
            model=self.model,
            ref_model=reference,
            args=args,
            train_dataset=pairs,
            processing_class=self.processing_class,
            callbacks=self.callbacks,
        )
        if trainer.ref_model is None and REF_ADAPTER not in self.model.peft_config and k > 1:
            # peft < 0.20 with `target_parameters`: TRL falls back to the adapter-disabled base, which is θ_{k-1} only
            # in round 1 with a fresh adapter.
            raise RuntimeError(
                "TRL's DPOTrainer did not add a frozen 'ref' adapter (peft < 0.20 with target_parameters), so the "
                "reference would be the base model instead of the previous iterate. Upgrade peft to >= 0.20."
            )
        return trainer

    def _kl_on_fresh_samples(self, trainer: SPINRoundTrainer, k: int) -> dict:
        """KL(θ_k ‖ θ_{k-1}) on ``num_saturation_samples`` completions sampled afresh from θ_k at temperature 1
        (prompts drawn from the dataset, seeded by the round): see :mod:`.saturation`."""
        n = self.args.num_saturation_samples
        if n == 0:
            return summarize_kl([])
        generator = random.Random(self.args.seed * 1_000_003 + 7919 * k)
        size = len(self._prompt_ids)
        picks = generator.sample(range(size), n) if n <= size else [generator.randrange(size) for _ in range(n)]
        prompt_ids = [self._prompt_ids[i] for i in picks]
        set_seed(self.args.seed + 100_003 * k)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        samples = across_processes(prompt_ids, lambda p: self._generate(policy, p, 1.0))
        reference = reference_model(trainer)
        batch = self.args.generation_batch_size
        rows = across_processes(
            list(zip(prompt_ids, samples, strict=True)),
            lambda items: kl_rows(
                policy, reference, [p for p, _ in items], [c for _, c in items], self.pad_token_id, batch
            ),
        )
        return summarize_kl(rows)

    def _release(self, trainer: SPINRoundTrainer) -> None:
        """Free the round's reference and optimizer once its metrics are in (``free_memory`` ends with a garbage
        collection, which frees the frozen copy)."""
        trainer.ref_model = None
        trainer.optimizer = None
        trainer.lr_scheduler = None
        delete_ref_adapter(self.model)
        remove_fused_lm_head(self.model)
        trainer.accelerator.free_memory()

    # ------------------------------------------------------------------------------------------------------------------
    # Rounds on disk
    # ------------------------------------------------------------------------------------------------------------------

    @property
    def _files(self) -> RoundFiles:
        return RoundFiles(self.args.output_dir)

    def _unwrapped_base(self):
        return self.model.get_base_model() if is_peft_model(self.model) else self.model

    def _save_round(self, k: int) -> None:
        """``round-{k}``: the model (or adapter) and the tokenizer, beside the round's pairs."""
        self.save_model(self._files.round_dir(k))

    def _write_history(self, history: list[dict]) -> None:
        if PartialState().is_main_process:
            self._files.write_history(history, is_peft_model(self.model), self.args.max_rounds)
