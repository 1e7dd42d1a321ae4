"""The collapse guards: distinct-n and sampling cut at EOS."""

import pytest

from trl_opd.evaluation import distinct_n, mean_divergence, mean_token_log_prob, sample
from trl_opd.tiny import char_tokenizer, tiny_llama


def test_distinct_n_by_hand():
    assert distinct_n([[1, 2, 3, 4]], 2) == 1.0
    assert distinct_n([[7, 7, 7, 7, 7]], 2) == 0.25  # four bigrams, one distinct
    assert distinct_n([[1, 2], [1, 2]], 2) == 0.5
    assert distinct_n([[1]], 2) == 0.0


def test_sample_cuts_after_the_first_eos_and_divergence_to_itself_is_zero():
    tok = char_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, seed=0)
    prompts = [tok("1+2=")["input_ids"], tok("12+30=")["input_ids"]]
    completions = sample(
        model,
        prompts,
        tok.pad_token_id,
        [tok.eos_token_id, tok("=")["input_ids"][0]],
        max_new_tokens=20,
        do_sample=True,
    )
    for c in completions:
        assert 1 <= len(c) <= 20
        assert all(t not in (tok.eos_token_id,) for t in c[:-1])
    assert mean_divergence(model, model, prompts, completions, "fkl") == pytest.approx(0.0, abs=1e-6)
    other = tiny_llama(len(tok), tokenizer=tok, seed=1)
    assert mean_divergence(model, other, prompts, completions, "fkl") > 0.01


def test_mean_token_log_prob_by_hand():
    tok = char_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, seed=0)
    import torch

    with torch.no_grad():
        model.lm_head.weight.zero_()  # uniform next-token distribution over the 49 tokens
    assert mean_token_log_prob(model, [[5, 6]], [[7, 8, 9]]) == pytest.approx(-__import__("math").log(49), abs=1e-5)
