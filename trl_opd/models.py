"""Loading and checking the student and teacher: local paths, shared vocabulary, the bitsandbytes CPU workaround."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .divergences.heads import head_transform  # noqa: F401  (re-exported: trl_opd.models.head_transform)
from .scoring import last_hidden_states  # noqa: F401  (re-exported)


logger = logging.getLogger(__name__)


def load_model(
    model: str | PreTrainedModel,
    init_kwargs: dict | None,
    args,
    *,
    revision: str | None = None,
    quantization_config=None,
    role: str = "model",
) -> PreTrainedModel:
    """Instantiate a causal LM from a local path (or return an instance as is), like TRL's trainers do.

    ``init_kwargs`` go to ``from_pretrained`` (``dtype`` may be a string such as ``"bfloat16"``; default float32), with
    ``revision``, ``quantization_config`` (a ``BitsAndBytesConfig``), ``device_map=None`` under multi-GPU / DeepSpeed
    training, and ``trust_remote_code`` from ``args``. ``role`` names the model in error messages.
    """
    from trl.trainer.utils import create_model_from_path

    if not isinstance(model, str):
        if init_kwargs:
            raise ValueError(
                f"You passed {role}_init_kwargs in the config, but the {role.replace('_', ' ')} is already "
                "instantiated; pass it as a path to have them applied."
            )
        if quantization_config is not None:
            raise ValueError(
                f"quantization_config only applies when the {role} is given as a path; this one is already loaded."
            )
        return model
    kwargs = dict(init_kwargs or {})
    if revision is not None:
        kwargs.setdefault("revision", revision)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
        kwargs["device_map"] = None  # distributed training requires device_map=None
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return create_model_from_path(model, **kwargs)


class SingleProcessArgs:
    """The bits of a config :func:`load_model` reads, for a single-process command (``trl-opd check``,
    ``trl-opd cache-teacher``) that has no training config."""

    trust_remote_code = False

    class distributed_state:  # noqa: N801  (mirrors TrainingArguments.distributed_state)
        distributed_type = "NO"


def load_teacher(teacher_model: str | PreTrainedModel, init_kwargs: dict | None, args) -> PreTrainedModel:
    """:func:`load_model` for the teacher (``args.teacher_model_revision``)."""
    return load_model(
        teacher_model, init_kwargs, args, revision=getattr(args, "teacher_model_revision", None), role="teacher_model"
    )


def check_processing_class(model, processing_class) -> None:
    """A student given as an instance needs its tokenizer: refuse ``processing_class=None`` unless the model's
    ``name_or_path`` is a local folder holding one (TRL would try to download it and fail with a Hub error)."""
    if processing_class is not None or isinstance(model, str):
        return
    from .compatibility import has_tokenizer_files

    folder = str(getattr(model, "name_or_path", "") or "")
    if not has_tokenizer_files(folder):
        raise ValueError(
            "processing_class is None and the student is a model instance without a local tokenizer folder, so there "
            "is no tokenizer to use. Pass processing_class=AutoTokenizer.from_pretrained(folder, padding_side='left') "
            "(or give the student as a path)."
        )


def head_rows(model: PreTrainedModel) -> int:
    """Number of rows of the model's output embedding (its logit vocabulary)."""
    return model.get_output_embeddings().weight.shape[0]


def shared_vocab_size(student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The vocabulary both heads are compared on: the first ``min(V_student, V_teacher)`` rows.

    Heads are often padded past the tokenizer (Qwen2.5: 151936 rows for 0.5B-3B, 152064 for 7B+, 151665 tokens), so
    equal ``config.vocab_size`` is too strict; the shared rows must cover every token of the tokenizer
    (:func:`trl_opd.compatibility.compare_heads`, where the full check lives).

    Raises:
        ValueError: when the tokenizer has more tokens than a head has rows: the models do not share a tokenizer.
    """
    from .compatibility import compare_heads

    shared, _, problems = compare_heads(head_rows(student), head_rows(teacher), len(tokenizer))
    for problem in problems:
        if problem.level == "error":
            raise ValueError(f"{problem.what} Fix: {problem.fix}")
    return shared


def disable_bnb_cpu_weight_repacking(model: torch.nn.Module) -> int:
    """Keep bitsandbytes 4-bit layers trainable on CPUs with AVX512-BF16; returns the number of layers changed.

    On such CPUs ``bnb.nn.Linear4bit.forward`` repacks its weight for inference the first time it runs in eval mode
    without grad (as during generation). A later training forward then fails, or LoRA gradients silently become zero.
    Turning the repacking off keeps the training path intact; GPUs are unaffected.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
