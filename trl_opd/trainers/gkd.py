"""Generalized knowledge distillation with TRL's experimental ``GKDTrainer`` surface, on the distillation engine."""

from __future__ import annotations

from .distillation import DistillationTrainer
from .gkd_config import GKDConfig
from .trl_compat import generalized_jsd_loss, generate_on_policy_outputs


#: Arguments of TRL's experimental ``GKDTrainer`` that belong to its SFT collation path, which this engine replaces.
_SFT_TRAINER_ARGUMENTS = {
    "data_collator": "batches are built from the rows' prompts and completions by the engine",
    "compute_metrics": "evaluation reports the divergence (eval_loss) and the engine's metrics, not predictions",
    "preprocess_logits_for_metrics": "evaluation reports the divergence (eval_loss), not predictions",
    "formatting_func": "map the dataset to `messages` or `prompt`/`completion` columns before training",
}


class GKDTrainer(DistillationTrainer):
    """
    Generalized knowledge distillation (Agarwal et al., 2024): a drop-in for `trl.experimental.gkd.GKDTrainer`.

    The engine of [`DistillationTrainer`] with [`GKDConfig`]'s defaults (λ = 0.5, β = 0.5, sampling temperature 0.9,
    `max_new_tokens=128`) and the experimental trainer's API: its argument order, the static methods
    [`generalized_jsd_loss`] and [`generate_on_policy_outputs`], and `generation_config.eos_token_id` taken from the
    student's generation config. Datasets with `messages` (or `prompt` + `completion`) are accepted as they are.

    Differences from TRL's trainer, all listed in docs/migrating.md: λ is drawn per row rather than per micro-batch;
    the loss is divided by the completion tokens actually trained on; `data_collator`, `compute_metrics`,
    `preprocess_logits_for_metrics` and `formatting_func` are refused (the engine builds its batches).

    Example:

    ```python
    >>> from datasets import load_dataset
    >>> from trl_opd import GKDConfig, GKDTrainer

    >>> dataset = load_dataset("trl-lib/chatbot_arena_completions", split="train")  # `messages` rows
    >>> trainer = GKDTrainer(
    ...     model="path/to/student",
    ...     teacher_model="path/to/teacher",
    ...     args=GKDConfig(output_dir="gkd-out", lmbda=1.0),  # on-policy (TRL's GKD default: 0.5)
    ...     train_dataset=dataset,
    ... )
    >>> trainer.train()
    ```

    Args:
        model, teacher_model, args, train_dataset, eval_dataset, processing_class, callbacks, optimizers, peft_config:
            as in TRL's experimental `GKDTrainer` (`args` a [`GKDConfig`], or any [`DistillationConfig`]).
        data_collator, compute_metrics, preprocess_logits_for_metrics, formatting_func: accepted as `None` only.
        **kwargs: the engine's other arguments ([`DistillationTrainer`]): `quantization_config`, `token_importance`,
            `prefix_filter`, `curriculum`, `success_func`, `teacher_processing_class`.
    """

    _tag_names = ["trl", "trl-opd", "gkd", "distillation"]
    _name = "GKD"
    config_class = GKDConfig
    default_output_dir = "gkd-output"

    generalized_jsd_loss = staticmethod(generalized_jsd_loss)
    generate_on_policy_outputs = staticmethod(generate_on_policy_outputs)

    def __init__(
        self,
        model=None,
        teacher_model=None,
        args: GKDConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        preprocess_logits_for_metrics=None,
        peft_config=None,
        formatting_func=None,
        **kwargs,
    ):
        given = {"data_collator": data_collator, "compute_metrics": compute_metrics}
        given |= {"preprocess_logits_for_metrics": preprocess_logits_for_metrics, "formatting_func": formatting_func}
        for name, value in given.items():
            if value is not None:
                raise ValueError(
                    f"trl_opd.GKDTrainer does not take {name}: {_SFT_TRAINER_ARGUMENTS[name]}. Drop the argument "
                    "(docs/migrating.md)."
                )
        if model is None:
            raise ValueError("GKDTrainer needs a student: pass model= (a local path or a PreTrainedModel).")
        super().__init__(
            model=model,
            teacher_model=teacher_model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            **kwargs,
        )
        # As TRL's GKD: generation stops on the student's own end-of-sequence id(s). Completions are still cut after
        # the first of every eos id (the tokenizer's included) when they are scored.
        model_eos = self.accelerator.unwrap_model(self.model).generation_config.eos_token_id
        if model_eos is not None:
            self.generation_config.eos_token_id = model_eos
            self.generation_kwargs["eos_token_id"] = model_eos
