r"""The per-part formulas of the memory planner, in bytes: trainable parameters, optimizer states, activations, loss
chunks, the teacher's forward pass, generation and the teacher cache.

Notation (``docs/memory.md`` has the full table): L layers, h hidden size, i intermediate size, V vocabulary, B
``per_device_batch_size``, T = prompt + completion tokens, C completion tokens, b = bytes of an activation (2 for bf16
and for quantized models, which compute in bf16), a = bytes of a trained parameter. Each function mirrors what
:class:`trl_opd.GKDTrainer` (on ``trl.DistillationTrainer``) allocates; ``tests/test_memory.py`` measures each one
that exists on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..divergences.registry import TOPK_TILES, loss_tiles
from ..tiling import default_chunk_rows
from .plan import TrainingPlan
from .shapes import DTYPE_BYTES, ModelShape, compute_bytes


def adapter_bytes_per_param(plan: TrainingPlan) -> int:
    """Bytes of a trainable parameter.

    LoRA on a quantized student: bf16 (TRL casts QLoRA adapters to bf16). LoRA on a bf16/fp16 student: fp32 (PEFT's
    ``autocast_adapter_dtype``). Full fine-tuning: the student's dtype (no fp32 master copy in ``transformers.Trainer``;
    load the student in fp32 to get fp32 master weights and states).
    """
    if plan.full_finetuning or plan.student_quant == "fp32":
        return DTYPE_BYTES[plan.student_quant] if plan.student_quant in DTYPE_BYTES else 2
    return 2 if plan.student_quant in ("nf4", "int8") else 4


def lora_parameters(shape: ModelShape, rank: int, targets: Iterable[str]) -> int:
    """LoRA parameters: ``rank × (in + out)`` for every adapted linear layer of every decoder layer."""
    linears = shape.linear_shapes()
    return shape.num_hidden_layers * sum(rank * sum(linears[t]) for t in targets)


def tile_rows(shape: ModelShape, plan: TrainingPlan) -> int:
    """Rows per loss tile: ``plan.loss_chunk_rows``, or the chunked engine's default for the vocabulary."""
    return plan.loss_chunk_rows or default_chunk_rows(shape.vocab_size)


def trainable_parameters(student: ModelShape, plan: TrainingPlan) -> int:
    """Parameters the optimizer updates: every parameter (full fine-tuning) or the LoRA adapters."""
    if plan.full_finetuning:
        return student.num_parameters()
    return lora_parameters(student, plan.lora_rank, plan.lora_targets)


def optimizer_state_bytes(student: ModelShape, plan: TrainingPlan) -> float:
    """AdamW: exp_avg and exp_avg_sq in the trained dtype plus a float32 step counter per parameter tensor; 8-bit AdamW
    (bitsandbytes): one byte per state plus a float32 absmax per 256 values."""
    trainable = trainable_parameters(student, plan)
    if plan.full_finetuning:
        n_tensors = student.num_parameter_tensors()
    else:
        n_tensors = 2 * len(plan.lora_targets) * student.num_hidden_layers  # lora_A and lora_B per adapted layer
    if plan.optimizer == "adamw":
        return 2 * trainable * adapter_bytes_per_param(plan) + 4 * n_tensors
    return 2 * trainable * (1 + 4 / 256) + 4 * n_tensors


# ----------------------------------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------------------------------


def _consumer_inputs(shape: ModelShape, plan: TrainingPlan, names: Sequence[str], width: int, device: str) -> float:
    """Bytes per token kept for the backward pass of the linear layers ``names``, which share one input."""
    b = compute_bytes(plan.student_quant)
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
    b = compute_bytes(plan.student_quant)
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
    b = compute_bytes(plan.student_quant)
    a = b if plan.full_finetuning else adapter_bytes_per_param(plan)
    return (b + a) * shape.intermediate_size + (b + 4) * shape.hidden_size


def no_grad_forward_bytes_per_token(shape: ModelShape, quant: str) -> float:
    """Transient of a forward pass without gradients (teacher scoring, generation prefill), per token.

    The peak sits in the MLP: residual stream, normalized input, act(gate), up and their product (3 × b·i), plus
    the float32 RMSNorm input.
    """
    b = compute_bytes(quant)
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
    b = compute_bytes(plan.student_quant)
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


# ----------------------------------------------------------------------------------------------------------------------
# The loss, the teacher and generation
# ----------------------------------------------------------------------------------------------------------------------

#: ``(rows, V)`` float32 tiles of a top-k + tail loss chunk: log p_S and p_S, from the divergence registry (measured).
TOPK_STUDENT_TILES = TOPK_TILES
#: float32 ``(rows, k + 1)`` tensors of a top-k + tail chunk: the teacher's bins, the student's log-bins, its bins and
#: the per-bin gradient ∂D/∂q, plus the student's probabilities at the k ids (rounded up to k + 1).
TOPK_BIN_TENSORS = 5


def teacher_cache_bytes_per_token(top_k: int) -> int:
    """Bytes the offline teacher cache stores per completion token: the teacher's top-k token ids (int32), their
    log-probabilities (float32) and one float32 tail log-mass ``log(1 − Σ_top-k p_T)``: ``8k + 4``."""
    return 4 * top_k + 4 * top_k + 4


def teacher_cache_read_bytes(plan: TrainingPlan) -> int:
    """The cached targets of one micro-batch on the GPU: B·C completion tokens × (8k + 4) bytes (0 without a cache).

    In a ``"cache+live"`` stage the whole micro-batch is counted (an upper bound: a row is cached or live)."""
    if not plan.reads_teacher_cache:
        return 0
    return plan.per_device_batch_size * plan.completion_length * teacher_cache_bytes_per_token(plan.teacher_top_k)


def loss_chunk_bytes(student: ModelShape, teacher: ModelShape, plan: TrainingPlan) -> float:
    r"""Peak of the chunked divergence (forward + backward) on the micro-batch's N = B·C completion tokens.

    Full vocabulary (``teacher_top_k=None``): ``loss_tiles(divergence)`` float32 tiles of ``min(rows, N) × V`` at the
    peak (the divergence registry's measured counts: student and teacher tiles together).

    Top-k + tail (``teacher_top_k=k``): the teacher side of a row is k + 1 bins, the student side stays V wide, because
    the student's tail bin ``q_tail = 1 − Σ_{top-k} p_S`` and the gradient need every logit. With ``q_b`` the student's
    mass in bin b and ``g_b = ∂D/∂q_b``, the softmax Jacobian summed over a bin gives, for every token v,

    .. math:: ∂D/∂u_v = p_S(v) · (g_{bin(v)} − Σ_b q_b g_b),

    which is written in place into the log p_S tile once the student's bins and entropy are read: TOPK_STUDENT_TILES = 2
    tiles (log p_S, p_S) plus, per row, TOPK_BIN_TENSORS float32 (k + 1)-vectors and the k ids as int64 (for ``gather``
    / ``scatter``). A live teacher's ``(rows, V)`` tile is reduced to its k + 1 bins before the student's tiles are
    projected, so it never adds a third tile (2 tiles measured with :class:`trl_opd.measurement.LiveTensorMeter`
    for every divergence, tests/test_topk.py).

    Both add the gathered student hidden states of the N tokens, their float32 gradient and its cast, three float32
    values per token, and, when the ``lm_head`` is trained (full fine-tuning), the float32 V × H gradient accumulator
    (updated in place, chunk by chunk) and its cast to the weight's dtype when that is not float32. A live teacher adds
    its gathered hidden states and its output hidden states (B × T × H_t, alive until the loss returns); the cached
    targets are counted apart (:func:`teacher_cache_read_bytes`).
    """
    n = plan.per_device_batch_size * plan.completion_length
    vocab = min(student.vocab_size, teacher.vocab_size)
    rows = min(tile_rows(student, plan), n)
    tile = rows * vocab * 4
    b_s, b_t = compute_bytes(plan.student_quant), compute_bytes(plan.teacher_quant)
    k = plan.teacher_top_k
    if k is None:
        total = loss_tiles(plan.divergence) * tile
    else:
        total = TOPK_STUDENT_TILES * tile + rows * (TOPK_BIN_TENSORS * 4 * (k + 1) + 8 * k)
    gathered_teacher = teacher.hidden_size * b_t if plan.loads_teacher else 0
    total += n * (student.hidden_size * (b_s + 4 + b_s) + gathered_teacher + 3 * 4)
    if plan.loads_teacher:
        total += (
            plan.per_device_batch_size * plan.sequence_length * teacher.hidden_size * b_t
        )  # teacher's hidden states
    if plan.full_finetuning:
        total += student.vocab_size * student.hidden_size * (4 + (b_s if b_s != 4 else 0))
    return total


def teacher_forward_bytes(teacher: ModelShape, plan: TrainingPlan) -> float:
    """The teacher's scoring forward on one micro-batch: the no-grad transient, its output hidden states and a
    dequantized weight (0 when the targets come from the cache alone)."""
    if not plan.loads_teacher:
        return 0.0
    tokens = plan.per_device_batch_size * plan.sequence_length
    return (
        tokens * no_grad_forward_bytes_per_token(teacher, plan.teacher_quant)
        + tokens * teacher.hidden_size * compute_bytes(plan.teacher_quant)
        + dequant_buffer_bytes(teacher, plan.teacher_quant)
    )


def kv_cache_bytes(student: ModelShape, plan: TrainingPlan) -> float:
    """HF generate's KV cache for the whole generation batch (B·A sequences of T tokens), plus one layer's copy while
    the cache grows."""
    kv = (
        plan.generation_batch_size
        * plan.sequence_length
        * student.kv_bytes_per_token(compute_bytes(plan.student_quant))
    )
    return kv * (1 + 1 / student.num_hidden_layers)


def generation_workspace_bytes(student: ModelShape, plan: TrainingPlan) -> float:
    """The prefill of B·A prompts without gradients, a dequantized weight and three float32 last-position logit rows
    per sequence (logits, processed, probabilities)."""
    prefill = plan.generation_batch_size * max(plan.prompt_length, 1)
    return (
        prefill * no_grad_forward_bytes_per_token(student, plan.student_quant)
        + dequant_buffer_bytes(student, plan.student_quant)
        + 3 * 4 * plan.generation_batch_size * student.vocab_size
    )
