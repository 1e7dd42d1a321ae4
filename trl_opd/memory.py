r"""Will it fit? Peak GPU memory of on-policy distillation, predicted from two ``config.json`` files.

:func:`predict` turns the student's and the teacher's shapes (:class:`ModelShape`, read from a ``config.json``) and
the training settings (:class:`TrainingPlan`) into a :class:`MemoryEstimate`: bytes per part (weights, adapters,
optimizer states, gradients, activations, loss chunks, KV cache of generation, teacher), the peak over the three
phases of a GKD step, and which GPU sizes fit. :meth:`MemoryEstimate.cheapest_fix` names the least costly change
that makes a configuration fit. The command line is ``trl-opd plan`` (:mod:`trl_opd.cli`).

Everything here is arithmetic on config fields; nothing is loaded. The formulas mirror what :class:`trl_opd.GKDTrainer`
(on ``trl.DistillationTrainer``) actually allocates, and ``tests/test_memory.py`` checks each part that exists on a
CPU against a measurement (``docs/memory.md`` lists the tolerances). :class:`LiveTensorMeter` is the measuring tool:
the peak of live tensor bytes, on CPU as well as on CUDA.

Phases of one step (the peak is the largest)::

    persistent = student weights + LoRA adapters + optimizer states + teacher weights (+ vLLM's reserved share)
    generation = persistent + KV cache + prefill workspace                 (student samples; no gradients alive)
    training   = persistent + gradients + activations + max(teacher forward, loss chunks, backward workspace)
    optimizer  = persistent + gradients                                      (fused AdamW: no large temporaries)
    total      = peak × (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_BYTES
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .divergences.registry import DIVERGENCES, loss_tiles
from .tiling import default_chunk_rows


__all__ = [
    "ALLOCATOR_OVERHEAD",
    "CUDA_CONTEXT_BYTES",
    "FIX_ORDER",
    "GIB",
    "GPU_SIZES_GB",
    "LORA_TARGETS",
    "PART_LABELS",
    "RECIPES",
    "RECIPE_PLAN",
    "ConfigError",
    "Fix",
    "LiveTensorMeter",
    "MemoryEstimate",
    "ModelShape",
    "TrainingPlan",
    "activation_bytes",
    "adapter_bytes_per_param",
    "config_dir",
    "layer_activation_bytes_per_token",
    "lora_parameters",
    "loss_chunk_bytes",
    "nf4_linear_bytes",
    "no_grad_forward_bytes_per_token",
    "packaged_configs",
    "predict",
    "recipe",
    "weight_bytes",
]

GIB = 2**30
#: CUDA context, cuBLAS/cuDNN handles and loaded kernels: memory the GPU holds that ``torch.cuda.max_memory_allocated``
#: does not see (typically 0.4-0.8 GiB with PyTorch 2.x on Ampere/Hopper). A stated constant, not measured here.
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
#: The caching allocator's rounding and fragmentation, as a fraction of the peak allocated bytes (reserved/allocated
#: is typically 1.02-1.10 for training loops with steady shapes). A stated constant, not measured here.
ALLOCATOR_OVERHEAD = 0.05
#: Nominal GPU sizes the planner reports on. "N GB" is taken as N GiB of device memory (A100 40/80 GB, A6000 48 GB,
#: RTX 4090 24 GB report that much; an L40S reports ~45 GiB and an A10G ~22 GiB: read the headroom column).
GPU_SIZES_GB = (24, 40, 48, 80)

#: The linear layers of a Llama/Qwen/Mistral decoder layer, the names PEFT's ``target_modules`` use.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTIZATIONS = ("fp32", "bf16", "fp16", "nf4", "int8")
GENERATION_BACKENDS = ("hf", "vllm", "vllm-server")
OPTIMIZERS = ("adamw", "adamw_8bit")

NF4_BLOCKSIZE = 64  # bitsandbytes' default for 4-bit weights: one absmax per 64 weights
NF4_NESTED_BLOCKSIZE = 256  # double quantization: one float32 absmax per 256 8-bit absmax values

_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A model config that is missing, unreadable or lacks a field the planner needs (the message says which)."""


# ----------------------------------------------------------------------------------------------------------------------
# Model shapes
# ----------------------------------------------------------------------------------------------------------------------


def packaged_configs() -> dict[str, Path]:
    """Shape-only configs shipped with the package (``trl_opd/configs/<name>/config.json``), by name."""
    if not _CONFIG_DIR.is_dir():
        return {}
    return {p.parent.name: p.parent for p in sorted(_CONFIG_DIR.glob("*/config.json"))}


def config_dir(name_or_path: str | os.PathLike) -> Path:
    """A folder holding a ``config.json``: an existing path, or the name of a packaged shape such as ``qwen2.5-7b``."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.name == "config.json":
        return path.parent
    packaged = packaged_configs()
    if str(name_or_path) in packaged:
        return packaged[str(name_or_path)]
    raise ConfigError(
        f"{name_or_path!r} is not a folder (nor a packaged shape: {', '.join(packaged) or 'none'}). Pass the folder "
        "that holds the model's config.json."
    )


def _positive_int(config: dict, key: str, source: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        if value is None:
            raise ConfigError(f"{source}: the field {key!r} is missing; the memory planner needs it.")
        raise ConfigError(f"{source}: the field {key!r} must be a positive integer, got {value!r}.")
    return value


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder (Llama, Mistral, Qwen2/2.5, Qwen3) that set its memory.

    Build it with :meth:`from_config` (a ``config.json`` dict), :meth:`from_dir` (a folder or a packaged shape name)
    or :meth:`from_pretrained_config` (a ``transformers`` config).
    """

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_config(cls, config: dict, name: str = "model") -> ModelShape:
        """Read the shape from a ``config.json`` dict; a missing or bad field raises :class:`ConfigError` naming it."""
        if not isinstance(config, dict):
            raise ConfigError(f"{name}: config.json must hold a JSON object, got {type(config).__name__}.")
        if isinstance(config.get("text_config"), dict):  # multimodal wrapper: plan the text decoder
            config = {**config["text_config"], "model_type": config["text_config"].get("model_type", "")}
        if config.get("num_experts") or config.get("num_local_experts") or config.get("n_routed_experts"):
            raise ConfigError(f"{name}: mixture-of-experts models are not supported by the memory planner.")
        hidden, inter, layers, heads, vocab = (_positive_int(config, key, name) for key in _REQUIRED_FIELDS)
        kv_heads = config.get("num_key_value_heads")
        kv_heads = heads if kv_heads is None else _positive_int(config, "num_key_value_heads", name)
        if heads % kv_heads:
            raise ConfigError(
                f"{name}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})."
            )
        head_dim = config.get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise ConfigError(f"{name}: hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads}).")
            head_dim = hidden // heads
        else:
            head_dim = _positive_int(config, "head_dim", name)
        model_type = str(config.get("model_type", "llama"))
        attention_bias = bool(config.get("attention_bias", False))
        return cls(
            name=name,
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias,  # Qwen2 always has q/k/v biases
            o_bias=attention_bias and model_type != "qwen2",
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=model_type.startswith("qwen3"),
        )

    @classmethod
    def from_dir(cls, name_or_path: str | os.PathLike) -> ModelShape:
        """Read ``<folder>/config.json`` (or a packaged shape by name, see :func:`packaged_configs`)."""
        folder = config_dir(name_or_path)
        path = folder / "config.json"
        if not path.is_file():
            raise ConfigError(f"{folder} has no config.json; the memory planner reads the model's shape from it.")
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from error
        return cls.from_config(config, name=folder.name)

    @classmethod
    def from_pretrained_config(cls, config: Any, name: str | None = None) -> ModelShape:
        """From a ``transformers.PretrainedConfig`` (its ``to_dict()``)."""
        return cls.from_config(config.to_dict(), name=name or getattr(config, "name_or_path", "") or "model")

    @property
    def supported(self) -> bool:
        """Whether the architecture is one whose layer the formulas were written for (others are approximations)."""
        return self.model_type in _SUPPORTED_MODEL_TYPES

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each linear layer of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_linear_weights(self) -> int:
        """Weights of the seven linear layers of one decoder layer (what bitsandbytes quantizes)."""
        return sum(a * b for a, b in self.linear_shapes().values())

    def layer_other_params(self) -> int:
        """Parameters of one decoder layer that stay unquantized: biases and norms."""
        bias = (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + self.hidden_size * self.o_bias
        bias += (2 * self.intermediate_size + self.hidden_size) * self.mlp_bias
        norms = 2 * self.hidden_size + 2 * self.head_dim * self.qk_norm
        return bias + norms

    def embedding_params(self) -> int:
        """Input embedding plus (when untied) the ``lm_head``: the vocabulary matrices."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def num_parameters(self) -> int:
        """Parameter count, as ``sum(p.numel() for p in model.parameters())`` of ``AutoModelForCausalLM``."""
        per_layer = self.layer_linear_weights() + self.layer_other_params()
        return self.embedding_params() + self.num_hidden_layers * per_layer + self.hidden_size  # + final norm

    def num_parameter_tensors(self) -> int:
        """How many parameter tensors the model has (AdamW keeps a step counter per tensor)."""
        per_layer = 7 + 2 + 3 * self.qkv_bias + self.o_bias + 3 * self.mlp_bias + 2 * self.qk_norm
        return self.num_hidden_layers * per_layer + 2 + (0 if self.tie_word_embeddings else 1)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV-cache bytes of one token: layers × (K and V) × kv_heads × head_dim × dtype."""
        return self.num_hidden_layers * 2 * self.kv_dim * dtype_bytes


def weight_bytes(shape: ModelShape, quant: str, double_quant: bool = False, unquantized_bytes: int = 2) -> int:
    """Bytes of the weights of a model stored as ``quant``.

    ``fp32``/``bf16``/``fp16``: every parameter in that dtype. ``nf4`` (bitsandbytes ``Linear4bit``): the seven linear
    weights of each layer take 0.5 byte per weight plus one float32 absmax per 64 weights (+0.0625 byte/weight), or with
    double quantization one 8-bit absmax per 64 weights and one float32 per 256 blocks (+~0.0159 byte/weight), plus
    the 16-value NF4 code; ``int8`` (``Linear8bitLt``): 1 byte per weight plus one float32 scale per output row.
    Under both, embeddings, ``lm_head``, norms and biases are not quantized and stay in ``unquantized_bytes`` per
    parameter (bf16 = 2 when loaded with ``dtype=torch.bfloat16``): at V = 152k that is 2 × 1.09 GB for a 7B model.
    """
    if quant in _DTYPE_BYTES:
        return shape.num_parameters() * _DTYPE_BYTES[quant]
    other = shape.num_parameters() - shape.num_hidden_layers * shape.layer_linear_weights()
    total = other * unquantized_bytes
    for fan_in, fan_out in shape.linear_shapes().values():
        numel = fan_in * fan_out
        if quant == "nf4":
            total += shape.num_hidden_layers * nf4_linear_bytes(numel, double_quant)
        elif quant == "int8":
            total += shape.num_hidden_layers * (numel + 4 * fan_out)
        else:
            raise ValueError(f"Unknown quantization {quant!r}; choose one of {', '.join(QUANTIZATIONS)}.")
    return total


def nf4_linear_bytes(numel: int, double_quant: bool = False) -> int:
    """Bytes of one bitsandbytes NF4 weight of ``numel`` values: packed nibbles, absmax, code (and nested state)."""
    blocks = math.ceil(numel / NF4_BLOCKSIZE)
    packed = (numel + 1) // 2
    code = 16 * 4
    if not double_quant:
        return packed + 4 * blocks + code
    nested_blocks = math.ceil(blocks / NF4_NESTED_BLOCKSIZE)
    return packed + blocks + 4 * nested_blocks + code + 256 * 4 + 4  # 8-bit absmax, nested absmax, code, offset


# ----------------------------------------------------------------------------------------------------------------------
# Training settings
# ----------------------------------------------------------------------------------------------------------------------


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
        loss_chunk_rows: rows per loss tile; default ``max(48, 2**22 // V)`` as in :func:`trl_opd.chunked_per_token_divergence`.
        generation_backend: ``"hf"`` (``model.generate`` with a KV cache), ``"vllm"`` (colocated: vLLM reserves
            ``vllm_gpu_memory_utilization`` of the card for its weights and KV cache) or ``"vllm-server"``
            (generation on another GPU).
        vllm_gpu_memory_utilization: the share of the card a colocated vLLM takes (TRL's default is 0.3).
    """

    student_quant: str = "bf16"
    teacher_quant: str = "bf16"
    double_quant: bool = False
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = LORA_TARGETS
    lora_dropout: float = 0.0
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    prompt_length: int = 512
    completion_length: int = 1536
    gradient_checkpointing: bool = True
    optimizer: str = "adamw"
    divergence: str = "jsd"
    loss_chunk_rows: int | None = None
    generation_backend: str = "hf"
    vllm_gpu_memory_utilization: float = 0.3

    def __post_init__(self):
        for key in ("student_quant", "teacher_quant"):
            if getattr(self, key) not in QUANTIZATIONS:
                raise ValueError(f"{key} must be one of {', '.join(QUANTIZATIONS)}; got {getattr(self, key)!r}.")
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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}.")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}; got {self.divergence!r}.")
        if self.loss_chunk_rows is not None and self.loss_chunk_rows < 1:
            raise ValueError(f"loss_chunk_rows must be >= 1, got {self.loss_chunk_rows}.")
        if self.generation_backend not in GENERATION_BACKENDS:
            raise ValueError(
                f"generation_backend must be one of {', '.join(GENERATION_BACKENDS)}; got {self.generation_backend!r}."
            )
        if not 0.0 < self.vllm_gpu_memory_utilization < 1.0:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1), got {self.vllm_gpu_memory_utilization}.")

    @property
    def sequence_length(self) -> int:
        return self.prompt_length + self.completion_length

    @property
    def generation_batch_size(self) -> int:
        return self.per_device_batch_size * self.gradient_accumulation_steps

    @property
    def full_finetuning(self) -> bool:
        return self.lora_rank == 0

    def describe(self) -> str:
        """A one-line summary of the settings."""
        lora = f"LoRA r={self.lora_rank} on {len(self.lora_targets)} modules"
        train = "full fine-tuning" if self.full_finetuning else lora
        gen = {"hf": "HF generate", "vllm": f"vLLM colocated ({self.vllm_gpu_memory_utilization:.2f})",
               "vllm-server": "vLLM server"}[self.generation_backend]  # fmt: skip
        return (
            f"student {self.student_quant} + {train}, teacher {self.teacher_quant}; "
            f"batch {self.per_device_batch_size} × accumulation {self.gradient_accumulation_steps}; "
            f"{self.prompt_length}+{self.completion_length} tokens; "
            f"checkpointing {'on' if self.gradient_checkpointing else 'off'}; {self.optimizer}; "
            f"{self.divergence}; {gen}"
        )


def _compute_bytes(quant: str) -> int:
    """Bytes of an activation: quantized models compute in bf16."""
    return _DTYPE_BYTES.get(quant, 2)


def adapter_bytes_per_param(plan: TrainingPlan) -> int:
    """Bytes of a trainable parameter.

    LoRA on a quantized student: bf16 (TRL casts QLoRA adapters to bf16). LoRA on a bf16/fp16 student: fp32 (PEFT's
    ``autocast_adapter_dtype``). Full fine-tuning: the student's dtype (no fp32 master copy in ``transformers.Trainer``;
    load the student in fp32 to get fp32 master weights and states).
    """
    if plan.full_finetuning or plan.student_quant == "fp32":
        return _DTYPE_BYTES[plan.student_quant] if plan.student_quant in _DTYPE_BYTES else 2
    return 2 if plan.student_quant in ("nf4", "int8") else 4


def lora_parameters(shape: ModelShape, rank: int, targets: Iterable[str]) -> int:
    """LoRA parameters: ``rank × (in + out)`` for every adapted linear layer of every decoder layer."""
    linears = shape.linear_shapes()
    return shape.num_hidden_layers * sum(rank * sum(linears[t]) for t in targets)


def _tile_rows(shape: ModelShape, plan: TrainingPlan) -> int:
    return plan.loss_chunk_rows or default_chunk_rows(shape.vocab_size)


# ----------------------------------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------------------------------


def _consumer_inputs(shape: ModelShape, plan: TrainingPlan, names: Sequence[str], width: int, device: str) -> float:
    """Bytes per token kept for the backward pass of the linear layers ``names``, which share one input."""
    b = _compute_bytes(plan.student_quant)
    if plan.full_finetuning:
        return b * width  # every trained weight needs its input (one shared tensor)
    adapted = [n for n in names if n in plan.lora_targets]
    if not adapted:
        return 0.0  # a frozen (or 4-bit) weight does not need its input
    a = adapter_bytes_per_param(plan)
    if plan.lora_dropout > 0:  # each adapted layer keeps its dropped-out input and the dropout mask
        mask = 1 if device == "cuda" else a  # CUDA's fused dropout keeps a bool mask, the CPU one a float mask
        return len(adapted) * (a + mask) * width
    if a != b:  # PEFT casts the input to the fp32 adapter inside each layer: one copy per adapted layer
        return len(adapted) * a * width
    return b * width  # one shared input


def layer_activation_bytes_per_token(shape: ModelShape, plan: TrainingPlan, device: str = "cuda") -> float:
    """Bytes one decoder layer keeps for its backward pass, per token.

    RMSNorms keep their float32 input (4h each) and, when trained, their bf16 output; the attention kernel (SDPA:
    flash / memory-efficient) keeps q, k, v and its output; with padding in the batch (batch > 1) transformers
    repeats k and v to all heads before SDPA; the SwiGLU MLP keeps gate, act(gate) and up (3 × b·i); the inputs of
    trained linear layers are kept (LoRA: the adapted ones, once per shared input, or once per layer when PEFT
    casts them to an fp32 adapter, or with dropout); LoRA's rank-r intermediate is kept per adapted layer.
    ``device`` only changes the dropout mask's size (``"cuda"``: 1 byte, else the adapter's dtype).
    """
    b = _compute_bytes(plan.student_quant)
    h, i = shape.hidden_size, shape.intermediate_size
    kv_width = shape.q_dim if plan.per_device_batch_size > 1 else shape.kv_dim
    total = 2 * (4 * h + 4)  # two RMSNorms: float32 input + rsqrt
    if plan.full_finetuning:
        total += 2 * b * h  # trained norm weights keep the normalized output
    total += _consumer_inputs(shape, plan, ("q_proj", "k_proj", "v_proj"), h, device)
    total += b * (2 * shape.q_dim + 2 * kv_width) + 4 * shape.num_attention_heads  # q, k, v, output, logsumexp
    total += _consumer_inputs(shape, plan, ("o_proj",), shape.q_dim, device)
    total += _consumer_inputs(shape, plan, ("gate_proj", "up_proj"), h, device)
    total += 3 * b * i  # gate output (SiLU input), SiLU output, up output (the product's inputs)
    total += _consumer_inputs(shape, plan, ("down_proj",), i, device)
    if not plan.full_finetuning:
        total += len(plan.lora_targets) * adapter_bytes_per_param(plan) * plan.lora_rank
    return total


def backward_workspace_bytes_per_token(shape: ModelShape, plan: TrainingPlan) -> float:
    """Gradients of activations alive while one layer is back-propagated (around the MLP): (b + a)·i + (b + 4)·h,
    with a the trained parameters' bytes (fitted on CPU measurements to ±25 %; see docs/memory.md)."""
    b = _compute_bytes(plan.student_quant)
    a = b if plan.full_finetuning else adapter_bytes_per_param(plan)
    return (b + a) * shape.intermediate_size + (b + 4) * shape.hidden_size


def no_grad_forward_bytes_per_token(shape: ModelShape, quant: str) -> float:
    """Transient of a forward pass without gradients (teacher scoring, generation prefill), per token.

    The peak sits in the MLP: residual stream, normalized input, act(gate), up and their product (3 × b·i), plus
    the float32 RMSNorm input.
    """
    b = _compute_bytes(quant)
    return 3 * b * shape.intermediate_size + 3 * b * shape.hidden_size + 4 * shape.hidden_size


def dequant_buffer_bytes(shape: ModelShape, quant: str) -> int:
    """A quantized linear layer dequantizes its weight to bf16 for a many-token matmul: the largest such buffer."""
    if quant not in ("nf4", "int8"):
        return 0
    return 2 * max(a * b for a, b in shape.linear_shapes().values())


def activation_bytes(shape: ModelShape, plan: TrainingPlan, device: str = "cuda") -> dict[str, float]:
    """Activations of one micro-batch's training forward, in bytes: ``{"saved", "recompute", "workspace"}``.

    ``saved``: what the forward pass leaves for the backward pass. Without checkpointing, every layer's saved
    tensors (:func:`layer_activation_bytes_per_token`); with it, only each layer's input (b·h per token and layer).
    Both add the final norm's float32 input, the output hidden states, RoPE's cos/sin and, with padding (batch > 1),
    the attention mask. ``recompute``: with checkpointing, the one layer recomputed at a time in the backward pass.
    ``workspace``: the backward pass's transient gradients (:func:`backward_workspace_bytes_per_token`).
    """
    b = _compute_bytes(plan.student_quant)
    batch, seq = plan.per_device_batch_size, plan.sequence_length
    tokens = batch * seq
    h = shape.hidden_size
    layer = layer_activation_bytes_per_token(shape, plan, device)
    per_model = 4 * h + 4 + b * h + (b * h if plan.full_finetuning else 0)  # final norm, output hidden states
    shared = 2 * seq * shape.head_dim * b + (batch * seq * seq * b if batch > 1 else 0)  # cos/sin, padding mask
    per_layer_saved = b * h if plan.gradient_checkpointing else layer
    return {
        "saved": tokens * (shape.num_hidden_layers * per_layer_saved + per_model) + shared,
        "recompute": tokens * layer if plan.gradient_checkpointing else 0.0,
        "workspace": tokens * backward_workspace_bytes_per_token(shape, plan),
    }


def loss_chunk_bytes(student: ModelShape, teacher: ModelShape, plan: TrainingPlan) -> float:
    """Peak of the chunked divergence (forward + backward) on the micro-batch's completion tokens.

    ``min(rows, N) × V × 4`` bytes per tile, ``loss_tiles(divergence)`` tiles at the peak (the divergence registry); plus the gathered
    student and teacher hidden states of the N completion tokens, the float32 gradient of the student's (and its cast),
    the teacher's output hidden states (B × T × H_t, alive until the loss returns), and, when the
    ``lm_head`` is trained (full fine-tuning), the float32 V × H gradient accumulator (updated in place, chunk by
    chunk) and its cast to the weight's dtype when that is not float32.
    """
    n = plan.per_device_batch_size * plan.completion_length
    vocab = min(student.vocab_size, teacher.vocab_size)
    rows = min(_tile_rows(student, plan), n)
    tile = rows * vocab * 4
    b_s, b_t = _compute_bytes(plan.student_quant), _compute_bytes(plan.teacher_quant)
    total = loss_tiles(plan.divergence) * tile
    total += n * (student.hidden_size * (b_s + 4 + b_s) + teacher.hidden_size * b_t + 3 * 4)
    total += plan.per_device_batch_size * plan.sequence_length * teacher.hidden_size * b_t  # teacher's hidden states
    if plan.full_finetuning:
        total += student.vocab_size * student.hidden_size * (4 + (b_s if b_s != 4 else 0))
    return total


# ----------------------------------------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------------------------------------

PART_LABELS = {
    "student_weights": "student weights",
    "adapters": "LoRA adapters",
    "optimizer_states": "optimizer states",
    "gradients": "gradients",
    "activations": "activations (saved)",
    "backward_workspace": "backward workspace",
    "loss_chunks": "loss chunks",
    "kv_cache": "KV cache (generation)",
    "generation_workspace": "generation workspace",
    "vllm_reserved": "vLLM reserved",
    "teacher_weights": "teacher weights",
    "teacher_forward": "teacher forward",
}
PHASES = ("generation", "training", "optimizer")
_PERSISTENT = ("student_weights", "adapters", "optimizer_states", "teacher_weights")
_ONE_AT_A_TIME = ("teacher_forward", "loss_chunks", "backward_workspace")  # sequential within the training phase


@dataclass(frozen=True)
class Fix:
    """A change to a :class:`TrainingPlan` and the estimate it gives."""

    description: str
    plan: TrainingPlan
    estimate: MemoryEstimate

    def __str__(self) -> str:
        return self.description


@dataclass
class MemoryEstimate:
    """Predicted peak GPU memory of one GKD step, per part (bytes). Built by :func:`predict`.

    ``parts`` maps each part to its bytes; persistent parts (weights, adapters, optimizer states) are alive in every
    phase, the others only in theirs (``phase_parts``). ``peak_allocated`` is the largest phase, as
    ``torch.cuda.max_memory_allocated`` would report it; ``total`` adds :data:`ALLOCATOR_OVERHEAD` and
    :data:`CUDA_CONTEXT_BYTES`. ``vllm_reserved`` depends on the card, so :meth:`total_for` takes the GPU size.
    """

    student: ModelShape
    teacher: ModelShape
    plan: TrainingPlan
    parts: dict[str, float]
    phase_parts: dict[str, tuple[str, ...]]
    notes: list[str] = field(default_factory=list)

    def phase_bytes(self, phase: str, gpu_gb: float | None = None) -> float:
        """Bytes allocated at the peak of ``phase`` (persistent parts included; a colocated vLLM's share of a
        ``gpu_gb`` card too, when given)."""
        total = sum(self.parts[p] for p in _PERSISTENT) + sum(self.parts[p] for p in self.phase_parts[phase])
        return total + self.vllm_bytes(gpu_gb)

    def vllm_bytes(self, gpu_gb: float | None) -> float:
        """What a colocated vLLM reserves on a ``gpu_gb`` card (0 for other backends or without a card)."""
        if self.plan.generation_backend != "vllm" or gpu_gb is None:
            return 0.0
        return self.plan.vllm_gpu_memory_utilization * gpu_gb * GIB

    def peak_phase(self, gpu_gb: float | None = None) -> str:
        return max(PHASES, key=lambda phase: self.phase_bytes(phase, gpu_gb))

    def peak_allocated(self, gpu_gb: float | None = None) -> float:
        """Predicted ``torch.cuda.max_memory_allocated()`` over the step, in bytes."""
        return max(self.phase_bytes(phase, gpu_gb) for phase in PHASES)

    def total_for(self, gpu_gb: float | None = None) -> float:
        """Predicted device memory in use at the peak: allocated × (1 + overhead) + CUDA context, in bytes."""
        return self.peak_allocated(gpu_gb) * (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_BYTES

    @property
    def total(self) -> float:
        """:meth:`total_for` without a card: a colocated vLLM's share is not included."""
        return self.total_for(None)

    def total_gib(self, gpu_gb: float | None = None) -> float:
        return self.total_for(gpu_gb) / GIB

    def headroom_gib(self, gpu_gb: float) -> float:
        """Free GiB on a card of ``gpu_gb`` GiB at the predicted peak (negative: short by that much)."""
        return gpu_gb - self.total_for(gpu_gb) / GIB

    def fits(self, gpu_gb: float) -> bool:
        """Whether the predicted peak, overheads included, fits a card of ``gpu_gb`` GiB."""
        return self.headroom_gib(gpu_gb) >= 0

    def cheapest_fix(self, gpu_gb: float) -> Fix | None:
        """The least costly change that makes this configuration fit ``gpu_gb``; ``None`` if it already fits.

        Each change of :data:`FIX_ORDER` (cheapest in quality and speed first) is tried alone, from its mildest
        setting up; the first that fits is returned. If no single change is enough, the changes are stacked in that
        order (each at its strongest setting) until the plan fits, and then each stacked change is relaxed to its
        mildest setting, or dropped, as long as the plan still fits. Raises ``ValueError`` when even every change
        together does not fit.
        """
        if self.fits(gpu_gb):
            return None
        fit = lambda overrides: predict(self.student, self.teacher, replace(self.plan, **overrides))  # noqa: E731
        for name in FIX_ORDER:
            for description, overrides in _fix_candidates(name, self.plan, self.student):
                estimate = fit(overrides)
                if estimate.fits(gpu_gb):
                    return Fix(description, estimate.plan, estimate)
        # Stack changes until it fits.
        chosen: list[list[tuple[str, dict]]] = []  # per stacked change: its candidates, mildest first
        merged: dict = {}
        for name in FIX_ORDER:
            candidates = _fix_candidates(name, replace(self.plan, **merged), self.student)
            if not candidates:
                continue
            chosen.append(candidates)
            merged.update(candidates[-1][1])
            if fit(merged).fits(gpu_gb):
                break
        else:
            raise ValueError(
                f"Does not fit {gpu_gb:g} GB even with every change ("
                + "; ".join(c[-1][0] for c in chosen)
                + f"): {fit(merged).total_gib(gpu_gb):.1f} GiB. Use a smaller model or more GPUs."
            )
        # Relax each stacked change (first = cheapest) to its mildest setting that still fits, or drop it.
        picks = [len(c) - 1 for c in chosen]
        for k, candidates in enumerate(chosen):
            for option in [None, *range(len(candidates))]:
                trial = picks[:k] + [option] + picks[k + 1 :]
                overrides = {}
                for cands, pick in zip(chosen, trial):
                    if pick is not None:
                        overrides.update(cands[pick][1])
                if fit(overrides).fits(gpu_gb):
                    picks = trial
                    break
        overrides, descriptions = {}, []
        for candidates, pick in zip(chosen, picks):
            if pick is not None:
                overrides.update(candidates[pick][1])
                descriptions.append(candidates[pick][0])
        estimate = fit(overrides)
        return Fix("; ".join(descriptions), estimate.plan, estimate)

    def table(self, gpu_sizes: Sequence[float] = GPU_SIZES_GB, fixes: bool = True) -> str:
        """A text table of the parts (GiB, and in which phase each is alive), the phase totals and the fit per GPU."""
        gib = lambda x: f"{x / GIB:8.2f}"  # noqa: E731
        lines = [
            f"student: {self.student.name} ({self.student.num_parameters() / 1e9:.2f} B params)   "
            f"teacher: {self.teacher.name} ({self.teacher.num_parameters() / 1e9:.2f} B params)",
            self.plan.describe(),
            "",
            f"{'part':<24}{'GiB':>8}  alive in",
        ]
        for part, label in PART_LABELS.items():
            if part == "vllm_reserved":
                if self.plan.generation_backend == "vllm":
                    share = self.plan.vllm_gpu_memory_utilization
                    lines.append(f"{label:<24}{'':>8}  every phase: {share:.2f} × card")
                continue
            if part not in self.parts:
                continue
            if part in _PERSISTENT:
                where = "every phase"
            elif part in _ONE_AT_A_TIME:
                counted = part in self.phase_parts["training"]
                where = "training, one at a time" + (" (the largest: counted)" if counted else "")
            else:
                where = ", ".join(p for p in PHASES if part in self.phase_parts[p])
            lines.append(f"{label:<24}{gib(self.parts[part])}  {where}")
        card = max(gpu_sizes) if self.plan.generation_backend == "vllm" else None
        lines.append("")
        for phase in PHASES:
            marker = "  <- peak" if phase == self.peak_phase(card) else ""
            lines.append(f"{'phase: ' + phase:<24}{gib(self.phase_bytes(phase, card))}{marker}")
        lines.append(
            f"{'CUDA context + alloc.':<24}{gib(self.total_for(card) - self.peak_allocated(card))}  "
            f"({CUDA_CONTEXT_BYTES / GIB:.2f} GiB + {ALLOCATOR_OVERHEAD:.0%} of the peak)"
        )
        suffix = f" (vLLM share of a {card:g} GB card included)" if card else ""
        lines.append(f"{'predicted total':<24}{gib(self.total_for(card))}{suffix}")
        lines.append("")
        for gb in gpu_sizes:
            room = self.headroom_gib(gb)
            verdict = f"fits ({room:.1f} GiB free)" if room >= 0 else f"does not fit (short by {-room:.1f} GiB)"
            line = f"{gb:>4g} GB: {verdict}"
            if room < 0 and fixes:
                try:
                    fix = self.cheapest_fix(gb)
                    line += f"; cheapest fix: {fix.description} -> {fix.estimate.total_gib(gb):.1f} GiB"
                except ValueError:
                    line += "; no change in the list makes it fit"
            lines.append(line)
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def to_dict(self, gpu_sizes: Sequence[float] = GPU_SIZES_GB) -> dict:
        """Plain data (bytes) for JSON output."""
        return {
            "student": self.student.name,
            "teacher": self.teacher.name,
            "plan": asdict(self.plan),
            "parts_bytes": {k: int(v) for k, v in self.parts.items()},
            "phases_bytes": {p: int(self.phase_bytes(p, max(gpu_sizes))) for p in PHASES},
            "fits": {str(gb): self.fits(gb) for gb in gpu_sizes},
            "total_bytes": {str(gb): int(self.total_for(gb)) for gb in gpu_sizes},
        }


def predict(
    student: ModelShape | dict | str | os.PathLike,
    teacher: ModelShape | dict | str | os.PathLike,
    plan: TrainingPlan | None = None,
) -> MemoryEstimate:
    """Predict the peak GPU memory of a GKD step (student LoRA/full training, teacher scoring, on-policy generation).

    ``student``/``teacher``: :class:`ModelShape`, a ``config.json`` dict, a folder or a packaged shape name.
    """
    student, teacher = _as_shape(student, "student"), _as_shape(teacher, "teacher")
    plan = plan or TrainingPlan()
    notes = []
    for role, shape in (("student", student), ("teacher", teacher)):
        if not shape.supported:
            notes.append(
                f"the {role}'s model_type {shape.model_type!r} is planned as a Llama-style decoder (the formulas were "
                f"checked for {', '.join(_SUPPORTED_MODEL_TYPES)})"
            )
    if student.vocab_size != teacher.vocab_size:
        notes.append(
            f"heads of {student.vocab_size} and {teacher.vocab_size} rows: the loss compares the shared "
            f"{min(student.vocab_size, teacher.vocab_size)}"
        )
    trainable = (
        student.num_parameters()
        if plan.full_finetuning
        else lora_parameters(student, plan.lora_rank, plan.lora_targets)
    )
    a = adapter_bytes_per_param(plan)
    n_tensors = (
        student.num_parameter_tensors()
        if plan.full_finetuning
        else (2 * len(plan.lora_targets) * student.num_hidden_layers)
    )
    if plan.optimizer == "adamw":
        optimizer = 2 * trainable * a + 4 * n_tensors  # exp_avg, exp_avg_sq in the parameter's dtype; step counters
    else:
        optimizer = 2 * trainable * (1 + 4 / 256) + 4 * n_tensors  # bitsandbytes 8-bit states + block absmax
    acts = activation_bytes(student, plan)
    tokens = plan.per_device_batch_size * plan.sequence_length
    gen_tokens = plan.generation_batch_size * plan.sequence_length
    b_s, b_t = _compute_bytes(plan.student_quant), _compute_bytes(plan.teacher_quant)
    parts: dict[str, float] = {
        "student_weights": weight_bytes(student, plan.student_quant, plan.double_quant),
        "adapters": 0 if plan.full_finetuning else trainable * a,
        "optimizer_states": optimizer,
        "gradients": trainable * a,
        "activations": acts["saved"],
        "backward_workspace": acts["recompute"] + acts["workspace"] + dequant_buffer_bytes(student, plan.student_quant),
        "loss_chunks": loss_chunk_bytes(student, teacher, plan),
        "teacher_weights": weight_bytes(teacher, plan.teacher_quant, plan.double_quant),
        "teacher_forward": tokens * no_grad_forward_bytes_per_token(teacher, plan.teacher_quant)
        + tokens * teacher.hidden_size * b_t  # its output hidden states
        + dequant_buffer_bytes(teacher, plan.teacher_quant),
    }
    if plan.generation_backend == "hf":
        kv = gen_tokens * student.kv_bytes_per_token(b_s)
        parts["kv_cache"] = kv * (1 + 1 / student.num_hidden_layers)  # + one layer's copy as the cache grows
        prefill = plan.generation_batch_size * max(plan.prompt_length, 1)
        parts["generation_workspace"] = (
            prefill * no_grad_forward_bytes_per_token(student, plan.student_quant)
            + dequant_buffer_bytes(student, plan.student_quant)
            + 3 * 4 * plan.generation_batch_size * student.vocab_size  # last-position logits, processed, probs
        )
    else:
        parts["kv_cache"] = parts["generation_workspace"] = 0.0
        if plan.generation_backend == "vllm":
            notes.append(
                "a colocated vLLM keeps its own copy of the student weights and its KV cache inside its share of the "
                "card; enable vllm_enable_sleep_mode to release it during training"
            )
    phase_parts = {
        "generation": ("kv_cache", "generation_workspace"),
        # teacher forward, loss and the backward pass happen one after the other on top of the saved activations
        "training": ("gradients", "activations", _largest(parts, *_ONE_AT_A_TIME)),
        "optimizer": ("gradients",),
    }
    if plan.full_finetuning:
        notes.append("full fine-tuning: gradients are counted as alive during the whole backward pass (an upper bound)")
    return MemoryEstimate(student, teacher, plan, parts, phase_parts, notes)


def _largest(parts: dict[str, float], *names: str) -> str:
    return max(names, key=lambda n: parts[n])


def _as_shape(value, role: str) -> ModelShape:
    if isinstance(value, ModelShape):
        return value
    if isinstance(value, dict):
        return ModelShape.from_config(value, name=role)
    return ModelShape.from_dir(value)


# ----------------------------------------------------------------------------------------------------------------------
# Cheapest fix
# ----------------------------------------------------------------------------------------------------------------------

#: The order in which :meth:`MemoryEstimate.cheapest_fix` tries changes: the first four leave the training signal
#: unchanged and only cost speed (a smaller loss tile: more, smaller matmuls; checkpointing: ~1/3 more student
#: forward compute, small next to generation in on-policy training; a smaller vLLM share: fewer concurrent sequences;
#: a smaller micro-batch with more accumulation: same generation batch and same gradient). 8-bit AdamW perturbs the
#: update slightly. Then the model changes: training LoRA instead of all weights, an NF4 student (QLoRA, the standard
#: path), an NF4 teacher (changes the target distribution itself: TRL stopped quantizing teachers by default; the cost
#: on SmolLM2 is in docs/memory.md), a lower LoRA rank (capacity), and last shorter completions (what is learned).
FIX_ORDER = (
    "loss_chunk",
    "gradient_checkpointing",
    "vllm_share",
    "micro_batch",
    "optimizer_8bit",
    "lora_instead_of_full",
    "nf4_student",
    "nf4_teacher",
    "lora_rank",
    "completion_length",
)


def _fix_candidates(name: str, plan: TrainingPlan, student: ModelShape) -> list[tuple[str, dict]]:
    """``(description, TrainingPlan field overrides)`` for one change, mildest first (empty when not applicable)."""
    out: list[tuple[str, dict]] = []
    if name == "loss_chunk":
        rows = _tile_rows(student, plan)
        for factor in (2, 4, 8):
            if rows // factor >= 8:
                out.append((f"loss chunk {rows} -> {rows // factor} rows", {"loss_chunk_rows": rows // factor}))
    elif name == "gradient_checkpointing" and not plan.gradient_checkpointing:
        out.append(("enable gradient checkpointing", {"gradient_checkpointing": True}))
    elif name == "vllm_share" and plan.generation_backend == "vllm":
        share = plan.vllm_gpu_memory_utilization
        for value in (0.25, 0.2, 0.15, 0.1):
            if value < share:
                description = f"vllm_gpu_memory_utilization {share:g} -> {value:g}"
                out.append((description, {"vllm_gpu_memory_utilization": value}))
    elif name == "micro_batch":
        batch, accumulation = plan.per_device_batch_size, plan.gradient_accumulation_steps
        while batch > 1:
            batch, accumulation = batch // 2, accumulation * 2
            out.append(
                (
                    f"per_device_train_batch_size {plan.per_device_batch_size} -> {batch} with gradient_accumulation_steps "
                    f"{plan.gradient_accumulation_steps} -> {accumulation}",
                    {"per_device_batch_size": batch, "gradient_accumulation_steps": accumulation},
                )
            )
    elif name == "optimizer_8bit" and plan.optimizer == "adamw" and plan.full_finetuning:
        out.append(("8-bit AdamW (optim='adamw_bnb_8bit')", {"optimizer": "adamw_8bit"}))
    elif name == "lora_instead_of_full" and plan.full_finetuning:
        out.append(("LoRA r=16 on all linear layers instead of full fine-tuning", {"lora_rank": 16}))
    elif name == "nf4_student" and plan.student_quant != "nf4" and not plan.full_finetuning:
        out.append((f"NF4 student (QLoRA) instead of {plan.student_quant}", {"student_quant": "nf4"}))
    elif name == "nf4_teacher" and plan.teacher_quant != "nf4":
        out.append((f"NF4 teacher instead of {plan.teacher_quant}", {"teacher_quant": "nf4"}))
    elif name == "lora_rank" and not plan.full_finetuning:
        rank = plan.lora_rank
        while rank > 4:
            rank //= 2
            out.append((f"LoRA rank {plan.lora_rank} -> {rank}", {"lora_rank": rank}))
    elif name == "completion_length":
        length = plan.completion_length
        while length > 256:
            length //= 2
            out.append((f"max_completion_length {plan.completion_length} -> {length}", {"completion_length": length}))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------------------------------

#: The recipe plans: a Qwen2.5-7B-shaped student in NF4 with LoRA r=16 on all linear layers, 2k tokens (512 prompt
#: + 1536 completion), one sequence per micro-batch, 8 accumulation steps (so HF generate samples 8 sequences at
#: once), gradient checkpointing, JSD, HF generate. Teachers: Qwen2.5-7B / 14B / 32B shapes in bf16 or NF4.
RECIPE_PLAN = TrainingPlan(
    student_quant="nf4",
    lora_rank=16,
    per_device_batch_size=1,
    gradient_accumulation_steps=8,
    prompt_length=512,
    completion_length=1536,
    gradient_checkpointing=True,
)
RECIPES: dict[str, tuple[str, str, TrainingPlan]] = {
    f"7b-nf4-{size}-{quant}": ("qwen2.5-7b", f"qwen2.5-{size}", replace(RECIPE_PLAN, teacher_quant=quant))
    for size in ("7b", "14b", "32b")
    for quant in ("bf16", "nf4")
}


def recipe(name: str) -> tuple[ModelShape, ModelShape, TrainingPlan]:
    """The student shape, teacher shape and plan of a named recipe (see :data:`RECIPES`)."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    student, teacher, plan = RECIPES[name]
    return ModelShape.from_dir(student), ModelShape.from_dir(teacher), replace(plan)


# ----------------------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------------------


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and tied weights are counted once)."""
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


class LiveTensorMeter:
    """Peak bytes of live tensors created inside a ``with`` block, on any device: the CPU analogue of
    ``torch.cuda.max_memory_allocated`` (without the allocator's rounding).

    Every tensor an operator returns is recorded by its storage; a storage counts until it is freed. Storages that
    existed before (parameters, inputs) count only if :meth:`ignore` was not told about them and an operator returns
    a view of them, so pass them to :meth:`ignore` first. Memory allocated inside an operator's kernel and freed
    before it returns (workspaces) is not seen. Use ``reset_peak()`` between phases::

        meter = LiveTensorMeter().ignore(model.parameters())
        with meter:
            loss = model(**batch).loss
            forward_peak = meter.peak
            meter.reset_peak()
            loss.backward()
        backward_peak = meter.peak  # bytes above what existed before the block
    """

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        meter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                meter._record(out)
                return out

        self._torch = torch
        self._mode = _Mode()
        self._known: dict[int, Any] = {}
        self.live = 0
        self.peak = 0

    def ignore(self, tensors: Iterable) -> LiveTensorMeter:
        """Treat the storages of these tensors as pre-existing: never counted."""
        import weakref

        for t in tensors:
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in self._known:
                self._known[key] = weakref.ref(st, lambda _ref, key=key: self._known.pop(key, None))
        return self

    def _record(self, out) -> None:
        import weakref

        from torch.utils._pytree import tree_flatten

        for t in tree_flatten(out)[0]:
            if not isinstance(t, self._torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key, nbytes = st.data_ptr(), st.nbytes()
            if key in self._known or nbytes == 0:
                continue

            def freed(_ref, key=key, nbytes=nbytes):
                self.live -= nbytes
                self._known.pop(key, None)

            self._known[key] = weakref.ref(st, freed)
            self.live += nbytes
            self.peak = max(self.peak, self.live)

    def reset_peak(self) -> None:
        """Start a new peak from the bytes live now."""
        self.peak = self.live

    def __enter__(self) -> LiveTensorMeter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
