"""vLLM colocate rollouts on CPU (TRL's ``use_vllm=True, vllm_mode="colocate"``) with ``vllm_dtype="float32"``: GKD
(λ = 0.5) sends only its on-policy rows to vLLM, MiniLLM samples through GRPO's vLLM path, and after each weight sync
vLLM holds exactly the student's weights; before training, greedy rollouts from vLLM and from ``generate`` agree token
for token (float32, the same weights). Runs in the vLLM venv (tests/with_vllm/conftest.py)."""

import pytest


pytest.importorskip("vllm", reason="vLLM is not installed (the vLLM tests run in their own venv: docs/teacher.md)")

import torch  # noqa: E402
from helpers import make_minillm_trainer, make_trainer  # noqa: E402

from trl_opd.data import cut_after_first_eos  # noqa: E402
from trl_opd.hooks import FlawedPrefixFilter  # noqa: E402


VLLM = dict(use_vllm=True, vllm_mode="colocate", vllm_dtype="float32", vllm_max_model_length=128)


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def vllm_weights(generation) -> dict[str, torch.Tensor]:
    """The head, embeddings, final norm and first fused q/k/v projection the colocated engine holds."""
    names = (
        "lm_head.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.layers.0.self_attn.qkv_proj.weight",
    )
    params = generation.llm.apply_model(
        lambda model: {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    )[0]
    assert set(params) == set(names)
    return params


def student_weights(model) -> dict[str, torch.Tensor]:
    attention = model.model.layers[0].self_attn
    return {
        "lm_head.weight": model.lm_head.weight,
        "model.embed_tokens.weight": model.model.embed_tokens.weight,
        "model.norm.weight": model.model.norm.weight,
        "model.layers.0.self_attn.qkv_proj.weight": torch.cat(
            [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]
        ),
    }


def spy(generation, student) -> dict:
    """Record the prompts each vLLM generate call gets and the completions it returns, and after each weight sync
    the largest difference between the engine's weights and the student's (``student()`` returns the model)."""
    seen = {"prompts": [], "completions": [], "sync_differences": [], "synced_heads": []}
    generate, sync = generation.generate, generation.sync_weights

    def recording_generate(prompts, *args, **kwargs):
        seen["prompts"].append(len(prompts))
        out = generate(prompts, *args, **kwargs)
        seen["completions"] += [list(ids) for ids in out[1]]
        return out

    def checking_sync():
        sync()
        mine, theirs = student_weights(student()), vllm_weights(generation)
        seen["synced_heads"].append(theirs["lm_head.weight"])
        # vLLM pads the vocabulary rows of its head and embeddings (to a multiple of 64): compare the student's rows.
        differences = [(mine[n].detach() - theirs[n][: mine[n].shape[0]]).abs().max() for n in mine]
        seen["sync_differences"].append(max(map(float, differences)))

    generation.generate, generation.sync_weights = recording_generate, checking_sync
    return seen


GREEDY_ROWS, GREEDY_TOKENS = 6, 8
#: The tiny student's 12-token vLLM rollouts have perplexities of about 40-52: this threshold rejects some of them.
PERPLEXITY = 48.0


def greedy_from_vllm(trainer, dataset) -> list[list[int]]:
    from vllm import SamplingParams

    prompts = [{"prompt_token_ids": ids} for ids in trainer.prompt_token_ids(dataset["prompt"][:GREEDY_ROWS])]
    params = SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS)
    outputs = trainer.vllm_generation.llm.generate(prompts, params, use_tqdm=False)
    return [cut_after_first_eos(list(o.outputs[0].token_ids), trainer.eos_token_ids) for o in outputs]


def greedy_from_generate(trainer, dataset) -> list[list[int]]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    out = []
    for ids in trainer.prompt_token_ids(dataset["prompt"][:GREEDY_ROWS]):  # one row at a time: no padding
        with torch.no_grad():
            tokens = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=GREEDY_TOKENS)
        out.append(cut_after_first_eos(tokens[0, len(ids) :].tolist(), trainer.eos_token_ids))
    return out


def test_gkd_sends_only_its_on_policy_rows_to_vllm_and_syncs_exact_weights(tmp_path, model_dirs, tok, dataset):
    trainer = make_trainer(
        tmp_path, tok, dataset, model_dirs["student"], model_dirs["teacher"], lmbda=0.5, max_steps=3, **VLLM
    )
    assert trainer.vllm_generation.llm.llm_engine.model_config.dtype == torch.float32
    trainer.vllm_generation.sync_weights()  # the engine may be shared with an earlier test (conftest.py)
    assert greedy_from_vllm(trainer, dataset) == greedy_from_generate(trainer, dataset)
    seen = spy(trainer.vllm_generation, lambda: trainer.accelerator.unwrap_model(trainer.model))
    trainer.train()
    on_policy_rows = [round(f * 4) for f in logged(trainer, "on_policy_fraction")]
    assert 0 < sum(on_policy_rows) < 4 * len(on_policy_rows)  # a mixed run
    assert sum(seen["prompts"]) == sum(on_policy_rows)  # every on-policy row, and only those, came from vLLM
    assert seen["sync_differences"] and max(seen["sync_differences"]) == 0.0  # float32: exactly the student's weights
    assert all(torch.isfinite(torch.tensor(logged(trainer, "loss"))))


def test_minillm_samples_through_grpos_vllm_path(tmp_path, model_dirs, tok, dataset):
    trainer = make_minillm_trainer(
        tmp_path, tok, dataset, model_dirs["student"], model_dirs["teacher"], max_steps=2, **VLLM
    )
    seen = spy(trainer.vllm_generation, lambda: trainer.accelerator.unwrap_model(trainer.model))
    trainer.train()
    assert seen["prompts"] and sum(seen["prompts"]) > 0
    assert seen["sync_differences"] and max(seen["sync_differences"]) == 0.0
    assert all(torch.isfinite(torch.tensor(logged(trainer, "loss"))))


def test_spin_samples_its_rejected_completions_from_vllm_with_the_synced_student(tmp_path, model_dirs, tok, dataset):
    from trl_opd.trainers.spin import SPINTrainer
    from trl_opd.trainers.spin_config import SPINConfig

    args = SPINConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, disable_tqdm=True,
        max_rounds=2, use_cpu=True, bf16=False, report_to="none", max_completion_length=6, num_saturation_samples=4,
        prompts_per_round=8, **VLLM,
    )  # fmt: skip
    rows = dataset.select(range(16))
    trainer = SPINTrainer(model_dirs["student"], args=args, train_dataset=rows, processing_class=tok)
    assert trainer.vllm_generation.llm.llm_engine.model_config.dtype == torch.float32
    seen = spy(trainer.vllm_generation, lambda: trainer.model)
    rejected_per_round = []
    make_pairs = trainer._make_pairs

    def recording_make_pairs(k):
        pairs, record = make_pairs(k)
        rejected_per_round.append(list(trainer.last_rejected_ids))
        return pairs, record

    trainer._make_pairs = recording_make_pairs
    history = trainer.train()
    assert len(history) == 2 and seen["prompts"] == [8, 8]  # one vLLM call per round, every prompt of the round
    assert [len(r) for r in rejected_per_round] == [8, 8]
    # Every rejected sample is a vLLM completion (cut after its first EOS, as vLLM stops there).
    vllm_rows = [cut_after_first_eos(c, trainer.eos_token_ids) for c in seen["completions"]]
    assert rejected_per_round[0] + rejected_per_round[1] == vllm_rows
    # One sync per round, each leaving exactly the student's weights in vLLM; round 2's are the trained θ_1.
    assert len(seen["sync_differences"]) == 2 and max(seen["sync_differences"]) == 0.0
    assert not torch.equal(seen["synced_heads"][0], seen["synced_heads"][1])


def test_gkd_with_vllm_the_prefix_filter_and_a_resume(tmp_path, model_dirs, tok, dataset, shared_colocated_engines):
    """λ = 0.5, vLLM rollouts and the flawed-prefix filter ("replace"): the filter judges exactly the rows vLLM
    sampled; stopped at checkpoint-2 and resumed, the run logs the uninterrupted run's losses."""

    def run(resume=None):
        trainer = make_trainer(
            tmp_path, tok, dataset, model_dirs["student"], model_dirs["teacher"], lmbda=0.5, max_steps=4,
            save_strategy="steps", save_steps=2, max_completion_length=12,
            prefix_filter=FlawedPrefixFilter(max_perplexity=PERPLEXITY, policy="replace"), **VLLM,
        )  # fmt: skip
        seen = spy(trainer.vllm_generation, lambda: trainer.accelerator.unwrap_model(trainer.model))
        trainer.train(resume_from_checkpoint=resume)
        return trainer, seen

    engines = len(shared_colocated_engines)
    full, seen = run()
    rejected = [round(r) for r in logged(full, "prefix_filter/rejected")]
    on_policy = [round(f * 4) for f in logged(full, "on_policy_fraction")]
    assert len(rejected) == len(seen["prompts"]) == 4
    # The filter judged exactly the rows vLLM sampled; those it rejected were replaced by the dataset completions.
    assert on_policy == [sampled - dropped for sampled, dropped in zip(seen["prompts"], rejected, strict=True)]
    assert sum(rejected) > 0 and sum(on_policy) > 0  # PERPLEXITY lies among the rollouts' perplexities
    assert max(seen["sync_differences"]) == 0.0

    resumed, seen_resumed = run(resume=str(tmp_path / "checkpoint-2"))
    assert seen_resumed["prompts"] == seen["prompts"][2:]  # steps 3 and 4 sampled again from vLLM
    # vLLM's CPU sampler draws from torch's global generator, which the checkpoint's RNG state restores: the same
    # rollouts, the same verdicts, the same losses.
    assert logged(resumed, "prefix_filter/rejected") == logged(full, "prefix_filter/rejected")
    assert logged(resumed, "loss") == logged(full, "loss")
    assert max(seen_resumed["sync_differences"]) == 0.0
    assert len(shared_colocated_engines) <= engines + 1  # both runs on one engine
