"""The training settings that set the memory of a GKD run: :class:`TrainingPlan`, which validates itself.

Each field carries its command-line description in its metadata (:func:`setting`): the help text, the choices, the
argument group and, where it differs from the field's name, the flag (``--batch`` for ``per_device_batch_size``).
``trl-opd plan`` builds its flags from it (:mod:`trl_opd.cli.plan`) and :meth:`TrainingPlan.__post_init__` checks the
choices from it, so a new field is declared once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..divergences.registry import DIVERGENCES, check_top_k
from .shapes import QUANTIZATIONS


#: The linear layers of a Llama/Qwen/Mistral decoder layer, the names PEFT's ``target_modules`` use.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GENERATION_BACKENDS = ("hf", "vllm", "vllm-server")
OPTIMIZERS = ("adamw", "adamw_8bit")
#: Where the teacher's targets come from: its live forward pass, an offline top-k cache (an off-policy λ ≡ 0 stage),
#: or both (a mixed stage: the live teacher scores the on-policy rows, the cache serves the others).
TEACHER_SOURCES = ("live", "cache", "cache+live", "server")
#: A self-distillation (privileged-context) teacher: "none" (a separate teacher model), or the student itself as
#: ``base`` (adapter disabled), ``frozen`` (a copy at step 0), ``live`` (its current weights) or ``ema`` (an average of
#: its trainable weights). See :mod:`trl_opd.teachers.privileged`.
SELF_TEACHERS = ("none", "base", "frozen", "live", "ema")


def setting(
    default: Any,
    help: str,
    group: str,
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
):
    """A :class:`TrainingPlan` field with its command-line description: ``--<flag or field name>`` in ``group``."""
    return field(
        default=default, metadata={"help": help, "group": group, "flag": flag, "choices": choices, "metavar": metavar}
    )


@dataclass
class TrainingPlan:
    """The settings of a GKD run that set its memory (the names follow ``GKDConfig`` / ``peft.LoraConfig``).

    Parameters:
        student_quant, teacher_quant: ``"bf16"``, ``"fp16"``, ``"fp32"``, ``"nf4"`` (bitsandbytes 4-bit) or ``"int8"``.
            Quantized models keep embeddings, ``lm_head`` and norms in bf16 and compute in bf16.
        double_quant: ``bnb_4bit_use_double_quant`` for every NF4 model.
        lora_rank: LoRA rank; ``0`` is full fine-tuning (not possible on a quantized student).
        lora_targets: module names LoRA adapts (default: all seven linear layers).
        lora_dropout: LoRA dropout; above 0 each adapted layer keeps its own dropped-out input for the backward pass.
        per_device_batch_size: sequences per micro-batch (the training forward).
        gradient_accumulation_steps: micro-batches per optimizer step. ``trl.DistillationTrainer`` generates the whole
            generation batch (``per_device_batch_size × gradient_accumulation_steps`` prompts) at once.
        prompt_length, completion_length: tokens per sequence (``max_completion_length``); T = their sum.
        gradient_checkpointing: recompute each decoder layer in the backward pass (TRL's default is on).
        optimizer: ``"adamw"`` (two states in the trainable dtype) or ``"adamw_8bit"`` (bitsandbytes, ~2 bytes/param).
        divergence: the loss (``"jsd"`` keeps more tiles alive in the backward pass than the others).
        loss_chunk_rows: rows per loss tile; default ``max(48, 2**22 // V)`` as in
            :func:`trl_opd.chunked_per_token_divergence`.
        generation_backend: ``"hf"`` (``model.generate`` with a KV cache), ``"vllm"`` (colocated: vLLM reserves
            ``vllm_gpu_memory_utilization`` of the card for its weights and KV cache) or ``"vllm-server"``
            (generation on another GPU).
        vllm_gpu_memory_utilization: the share of the card a colocated vLLM takes (TRL's default is 0.3).
        teacher_source: ``"live"`` (the teacher's weights and forward pass on this GPU), ``"cache"`` (an off-policy
            λ ≡ 0 stage whose targets are read from an offline teacher cache: no teacher weights, no teacher forward
            and no generation on this GPU, plus the cache read of a micro-batch) or ``"cache+live"`` (a mixed stage:
            the live teacher scores the on-policy rows, the cache serves the dataset rows) or ``"server"`` (a teacher on
            a vLLM server, ``teacher_model="http://..."``: no teacher weights or forward on this GPU, its top-k
            targets arrive with each micro-batch).
        teacher_top_k: the top-k + tail loss: the teacher side of each token is its k most likely tokens and one tail
            bin (k + 1 bins instead of V); the cache stores exactly that (8k + 4 bytes per token). ``None``: the full
            vocabulary (a live teacher only).
    """

    student_quant: str = setting("bf16", "the student's weight format", "quantization", choices=QUANTIZATIONS)
    teacher_quant: str = setting("bf16", "the teacher's weight format", "quantization", choices=QUANTIZATIONS)
    double_quant: bool = setting(False, "bnb_4bit_use_double_quant", "quantization")
    lora_rank: int = setting(16, "LoRA rank; 0 = full fine-tuning", "training")
    lora_targets: tuple[str, ...] = setting(
        LORA_TARGETS, "LoRA target modules, or all-linear", "training", metavar="MODULE"
    )
    lora_dropout: float = setting(0.0, "LoRA dropout", "training")
    per_device_batch_size: int = setting(1, "per_device_train_batch_size", "training", flag="batch")
    gradient_accumulation_steps: int = setting(1, "generation batch = batch × this", "training")
    prompt_length: int = setting(512, "prompt tokens", "training")
    completion_length: int = setting(1536, "max_completion_length", "training")
    gradient_checkpointing: bool = setting(True, "recompute each decoder layer in the backward pass", "training")
    optimizer: str = setting("adamw", "adamw or bitsandbytes' 8-bit AdamW", "training", choices=OPTIMIZERS)
    divergence: str = setting("jsd", "the distillation loss", "training", choices=DIVERGENCES)
    loss_chunk_rows: int | None = setting(None, "rows per loss tile (default max(48, 2**22 // vocab))", "training")
    generation_backend: str = setting(
        "hf", "HF generate, colocated vLLM, or a vLLM server", "generation", choices=GENERATION_BACKENDS
    )
    vllm_gpu_memory_utilization: float = setting(0.3, "the share of the card a colocated vLLM takes", "generation")
    teacher_source: str = setting(
        "live",
        "live teacher; cache = an off-policy (λ ≡ 0) stage reading an offline top-k cache (no teacher, no "
        "generation on this GPU); cache+live = a mixed stage; server = a teacher on a vLLM server (no teacher weights "
        "here)",
        "teacher",
        choices=TEACHER_SOURCES,
    )
    teacher_top_k: int | None = setting(
        None,
        "top-k + tail loss: k + 1 teacher bins per token (required with a cache; default: the full vocabulary)",
        "teacher",
    )

    self_teacher: str = setting(
        "none",
        "the student teaches itself (OPSD): base = adapter off (no extra weights), frozen = a step-0 copy, live = "
        "its current weights, ema = an average of the trainable weights; the teacher's shape is the student's",
        "teacher",
        choices=SELF_TEACHERS,
    )

    def __post_init__(self):
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}.")
        requested = (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)
        targets = tuple(dict.fromkeys(LORA_TARGETS if requested == ("all-linear",) else requested))
        unknown = [t for t in targets if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"Unknown LoRA targets {unknown}; choose among {', '.join(LORA_TARGETS)} or all-linear.")
        self.lora_targets = targets
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = full fine-tuning), got {self.lora_rank}.")
        if self.lora_rank > 0 and not targets:
            raise ValueError("LoRA needs at least one target module (lora_targets), or set lora_rank=0.")
        if self.lora_rank == 0 and self.student_quant in ("nf4", "int8"):
            raise ValueError(
                f"A {self.student_quant} student cannot be fully fine-tuned: quantized weights are frozen. "
                "Use LoRA (lora_rank > 0) or a bf16 student."
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        for key in ("per_device_batch_size", "gradient_accumulation_steps", "completion_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}.")
        if self.prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {self.prompt_length}.")
        if self.loss_chunk_rows is not None and self.loss_chunk_rows < 1:
            raise ValueError(f"loss_chunk_rows must be >= 1, got {self.loss_chunk_rows}.")
        if not 0.0 < self.vllm_gpu_memory_utilization < 1.0:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1), got {self.vllm_gpu_memory_utilization}.")
        check_top_k(self.teacher_top_k)
        if self.self_teacher == "base" and self.lora_rank == 0:
            raise ValueError("self_teacher='base' disables the student's LoRA adapter: set lora_rank > 0.")
        if self.self_teacher != "none" and self.teacher_source != "live":
            raise ValueError("A self teacher scores live (its targets depend on the privileged context): no cache.")
        if self.reads_teacher_cache and self.teacher_top_k is None:
            where = "a vLLM server" if self.teacher_source == "server" else "a cache"
            raise ValueError(
                f"teacher_source={self.teacher_source!r} reads the teacher's top-k log-probabilities from {where}: "
                "set teacher_top_k to its k (e.g. 64)."
            )

    @property
    def sequence_length(self) -> int:
        return self.prompt_length + self.completion_length

    @property
    def generation_batch_size(self) -> int:
        return self.per_device_batch_size * self.gradient_accumulation_steps

    @property
    def full_finetuning(self) -> bool:
        return self.lora_rank == 0

    @property
    def loads_teacher(self) -> bool:
        """Whether the teacher's weights are on this GPU (every source but ``"cache"`` and ``"server"``)."""
        return self.teacher_source not in ("cache", "server")

    @property
    def reads_teacher_cache(self) -> bool:
        """Whether micro-batches carry precomputed top-k targets (``"cache"``, ``"cache+live"``, ``"server"``)."""
        return self.teacher_source in ("cache", "cache+live", "server")

    @property
    def generates(self) -> bool:
        """Whether the step samples from the student: not in a ``"cache"`` stage, which is off-policy (λ ≡ 0)."""
        return self.teacher_source != "cache"

    def describe(self) -> str:
        """A one-line summary of the settings."""
        lora = f"LoRA r={self.lora_rank} on {len(self.lora_targets)} modules"
        train = "full fine-tuning" if self.full_finetuning else lora
        gen = {"hf": "HF generate", "vllm": f"vLLM colocated ({self.vllm_gpu_memory_utilization:.2f})",
               "vllm-server": "vLLM server"}[self.generation_backend]  # fmt: skip
        if not self.generates:
            gen = "no generation (off-policy)"
        teacher = {"live": f"teacher {self.teacher_quant}", "cache": "teacher from the cache",
                   "cache+live": f"teacher {self.teacher_quant} + cache",
                   "server": "teacher on a vLLM server"}[self.teacher_source]  # fmt: skip
        if self.self_teacher != "none":
            teacher = f"self teacher ({self.self_teacher})"
        if self.teacher_top_k is not None:
            teacher += f" (top-{self.teacher_top_k} + tail)"
        return (
            f"student {self.student_quant} + {train}, {teacher}; "
            f"batch {self.per_device_batch_size} × accumulation {self.gradient_accumulation_steps}; "
            f"{self.prompt_length}+{self.completion_length} tokens; "
            f"checkpointing {'on' if self.gradient_checkpointing else 'off'}; {self.optimizer}; "
            f"{self.divergence}; {gen}"
        )
