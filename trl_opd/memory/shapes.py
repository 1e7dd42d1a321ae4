"""Model shapes: :class:`ModelShape`, read from a ``config.json`` or a packaged shape, and the bytes of its weights.

Arithmetic on config fields only: nothing is loaded. ``weight_bytes`` follows bitsandbytes' storage layout for NF4 and
int8 (only the seven decoder linears are quantized), and ``tests/test_memory.py`` checks it to the byte.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


#: Weight formats the planner knows: three dtypes and bitsandbytes' NF4 (``Linear4bit``) and int8 (``Linear8bitLt``).
QUANTIZATIONS = ("fp32", "bf16", "fp16", "nf4", "int8")

NF4_BLOCKSIZE = 64  # bitsandbytes' default for 4-bit weights: one absmax per 64 weights
NF4_NESTED_BLOCKSIZE = 256  # double quantization: one float32 absmax per 256 8-bit absmax values

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def compute_bytes(quant: str) -> int:
    """Bytes of an activation of a model stored as ``quant``: quantized models compute in bf16."""
    return DTYPE_BYTES.get(quant, 2)


class ConfigError(ValueError):
    """A model config that is missing, unreadable or lacks a field the planner needs (the message says which)."""


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
        return self.model_type in SUPPORTED_MODEL_TYPES

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
    if quant in DTYPE_BYTES:
        return shape.num_parameters() * DTYPE_BYTES[quant]
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
