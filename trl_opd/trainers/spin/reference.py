r"""The reference of round k, the previous iterate θ_{k-1}: a frozen copy of the model, or a frozen adapter copy.

Without PEFT the reference is a frozen deep copy of the model taken at the start of the round, passed to
``DPOTrainer(ref_model=...)``. With PEFT there is no copy of the model: TRL's ``DPOTrainer``, given a ``PeftModel`` and
no ``ref_model``, adds a frozen adapter named ``"ref"`` holding a copy of the trainable adapter and computes the
reference log-probabilities through it. The driver deletes that adapter after the round, so that the next round's
``DPOTrainer`` copies the new iterate.
"""

from __future__ import annotations

import copy

from accelerate.utils import is_peft_model
from transformers import PreTrainedModel
from trl.trainer.utils import use_adapter


REF_ADAPTER = "ref"  # the name TRL's DPOTrainer gives the frozen copy of the adapter


def remove_fused_lm_head(model) -> None:
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


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A deep copy of ``model`` in eval mode with no parameter requiring grad."""
    remove_fused_lm_head(model)
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def delete_ref_adapter(model) -> None:
    """Remove the ``"ref"`` adapter TRL's ``DPOTrainer`` added, if any."""
    if is_peft_model(model) and REF_ADAPTER in model.peft_config:
        model.delete_adapter(REF_ADAPTER)


def describe_reference(trainer, model) -> dict:
    """What the round's reference is and how many parameters exist only for it."""
    if trainer.ref_model is not None:
        reference = trainer.accelerator.unwrap_model(trainer.ref_model)
        return {"kind": "frozen copy", "parameters": sum(p.numel() for p in reference.parameters())}
    if REF_ADAPTER in model.peft_config:
        n = sum(p.numel() for name, p in model.named_parameters() if f".{REF_ADAPTER}." in name)
        return {"kind": f"frozen adapter {REF_ADAPTER!r}", "parameters": n}
    return {"kind": "adapters disabled", "parameters": 0}


class AdapterView:
    """A ``PeftModel`` seen through one adapter (``None``: adapters disabled), as :mod:`trl_opd.scoring` reads a model.

    Scoring uses a model's parameters (for the device), ``config`` and output embedding (the head) and runs its
    backbone (``get_base_model().base_model(...)``); the view runs that backbone with ``adapter`` active, so that the
    PEFT reference can be scored beside the policy without a copy of the model. The head is shared: DPO refuses an
    adapter on ``lm_head``.
    """

    def __init__(self, model, adapter: str | None):
        self.model, self.adapter, self.config = model, adapter, model.config

    def parameters(self):
        return self.model.parameters()

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def get_base_model(self):
        return self

    def base_model(self, **kwargs):
        with use_adapter(self.model, adapter_name=self.adapter):
            return self.model.get_base_model().base_model(**kwargs)


def reference_model(trainer):
    """The round's reference θ_{k-1}, exactly as the round's ``DPOTrainer`` computes its log-probabilities: its
    ``ref_model``, else the policy through the ``"ref"`` adapter (or with adapters disabled when there is none)."""
    if trainer.ref_model is not None:
        return trainer.accelerator.unwrap_model(trainer.ref_model)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    return AdapterView(unwrapped, REF_ADAPTER if REF_ADAPTER in unwrapped.peft_config else None)
