r"""The pairs of round k: {prompt x, chosen y, rejected y'} with y' ~ θ_{k-1}(· | x).

* "rejected": one completion per prompt sampled from the current model at ``generation_temperature`` (plain
  sampling, no top-k / top-p), cut after its first end-of-sequence token; those the prefix filter flags are dropped
  and counted. With ``use_vllm`` a colocated vLLM engine samples them, the model's weights synced to it first;
* "chosen": the dataset completion, or ``chosen_model``'s output (greedy ones are generated once and reused).

Sampled completions are decoded (special tokens skipped) and handed to DPO as text or as an assistant message; DPO's
own tokenization appends the end of sequence (or the chat template's end of turn).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import set_seed
from trl.data_utils import is_conversational

from ...data import cut_after_first_eos
from ...evaluation import distinct_n
from ...models import disable_bnb_cpu_weight_repacking
from ...scoring import completion_log_probs, sample


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the contents of a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


def across_processes(items: list, fn: Callable[[list], list]) -> list:
    """``fn(items)``, each process doing a contiguous slice; the results are gathered in order on every process."""
    state = PartialState()
    if state.num_processes == 1:
        return fn(items)
    per = math.ceil(len(items) / state.num_processes)
    mine = items[state.process_index * per : (state.process_index + 1) * per]
    return gather_object(fn(mine) if mine else [])


class PairsMixin:
    """Sampling and pairing for :class:`~trl_opd.trainers.spin.SPINTrainer` (uses its ``args``, ``model``,
    ``processing_class``, ``train_dataset``, ``_prompt_ids``, ``eos_token_ids``, ``pad_token_id``, ``chosen_model``,
    ``prefix_filter``, ``vllm_generation`` and ``_conversational``)."""

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

    def _sample_rejected(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """The "rejected" samples of ``prompt_ids``: from the colocated vLLM engine (its weights synced beforehand by
        :meth:`_make_pairs`) or from ``generate``; each cut after its first EOS."""
        if self.vllm_generation is None:
            return self._generate(self.model, prompt_ids, self.args.generation_temperature)
        _, completions, _, _ = self.vllm_generation.generate(prompt_ids, None, 1)
        return [cut_after_first_eos(list(ids), self.eos_token_ids) for ids in completions]

    def _as_completion(self, ids: list[int]):
        """Sampled ids as DPO's input: the text without its final EOS (an assistant message for chat prompts)."""
        body = ids[:-1] if ids and ids[-1] in self.eos_token_ids else ids
        text = self.processing_class.decode(body, skip_special_tokens=True)
        return [{"role": "assistant", "content": text}] if self._conversational else text

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
            generated = across_processes(
                [self._prompt_ids[i] for i in missing], lambda p: self._generate(self.chosen_model, p, temperature)
            )
            self._cached_chosen.update(zip(missing, generated, strict=True))
        return [self._as_completion(self._cached_chosen[i]) for i in indices]

    def _flawed_reasons(self, prompt_ids: list[list[int]], completions: list[list[int]]) -> list[str | None]:
        """The prefix filter's verdict on each rejected sample (``None`` = kept)."""
        if self.prefix_filter is None:
            return [None] * len(completions)
        if self.prefix_filter.needs_log_probs:
            model = self.model
            was_training = model.training
            model.eval()
            try:
                batch = self.args.generation_batch_size
                log_probs = across_processes(
                    list(zip(prompt_ids, completions, strict=True)),
                    lambda items: completion_log_probs(
                        model, [p for p, _ in items], [c for _, c in items], self.pad_token_id, batch
                    ),
                )
            finally:
                model.train(was_training)
        else:
            log_probs = [None] * len(completions)
        return [self.prefix_filter.reason(c, lp) for c, lp in zip(completions, log_probs, strict=True)]

    def _round_indices(self, k: int) -> list[int]:
        """The dataset rows of round k: all of them, or a fresh draw of ``prompts_per_round`` seeded by the round."""
        n = len(self._prompt_ids)
        per_round = self.args.prompts_per_round
        if per_round is None or per_round >= n:
            return list(range(n))
        return sorted(random.Random(self.args.seed * 7919 + k).sample(range(n), per_round))

    def _make_pairs(self, k: int) -> tuple[Dataset, dict]:
        """The round's DPO dataset {prompt, chosen, rejected} and the metrics of its "rejected" samples."""
        indices = self._round_indices(k)
        prompt_ids = [self._prompt_ids[i] for i in indices]
        rows = [self.train_dataset[i] for i in indices]
        set_seed(self.args.seed + k)
        if self.vllm_generation is not None:
            self.vllm_generation.sync_weights()  # θ_{k-1} into the engine, on every process
        rejected_ids = across_processes(prompt_ids, self._sample_rejected)
        chosen = self._chosen_completions(k, indices, rows)
        reasons = self._flawed_reasons(prompt_ids, rejected_ids)

        kept = [i for i, reason in enumerate(reasons) if reason is None]
        if not kept:
            raise RuntimeError(
                f"Round {k}: the prefix filter flagged every one of the {len(indices)} rejected samples "
                f"({ {r: reasons.count(r) for r in set(reasons)} }), so there is no pair to train on. Loosen the "
                "filter (raise max_perplexity, loop_min_repeats or loop_min_tokens), lower generation_temperature, "
                "or train without prefix_filter."
            )
        prompts = [rows[i]["prompt"] for i in kept]
        chosen_kept = [chosen[i] for i in kept]
        rejected_kept = [self._as_completion(rejected_ids[i]) for i in kept]
        kept_ids = [rejected_ids[i] for i in kept]
        equal = sum(
            completion_text(r).strip() == completion_text(c).strip()
            for r, c in zip(rejected_kept, chosen_kept, strict=True)
        )
        eos = set(self.eos_token_ids)
        record = {
            "round": k,
            "num_prompts": len(indices),
            "num_pairs": len(prompts),
            "num_rejected_filtered": len(indices) - len(prompts),
            "rejected_filtered_loop": reasons.count("loop"),
            "rejected_filtered_perplexity": reasons.count("perplexity"),
            "rejected_distinct_2": distinct_n(kept_ids, 2),
            "rejected_mean_tokens": sum(map(len, kept_ids)) / len(kept_ids),  # EOS included
            "rejected_eos_rate": sum(bool(ids) and ids[-1] in eos for ids in rejected_ids) / len(rejected_ids),
            "rejected_equals_chosen": equal / len(prompts),
        }
        self.last_rejected_ids = kept_ids
        pairs = Dataset.from_dict({"prompt": prompts, "chosen": chosen_kept, "rejected": rejected_kept})
        return pairs, record
