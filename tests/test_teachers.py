"""The teacher at scale: top-k in GKD, the offline cache (round trip, a λ = 0 run with no teacher, stale caches
refused, a mixed run running the teacher on on-policy rows only), several teachers routed by `teacher_id`, and the
`trl-opd cache-teacher` command."""

import logging

import pytest
import torch
from helpers import make_trainer

from trl_opd import GKDTrainer, build_teacher_cache, float_path
from trl_opd.cli import main
from trl_opd.divergences import LMHead
from trl_opd.divergences.topk import topk_targets_from_hidden
from trl_opd.scoring import completion_hidden_states, pack
from trl_opd.teachers.cache import TeacherCache, _row_ids
from trl_opd.tiny import tiny_llama


K = 8
RUN = dict(max_steps=3, max_completion_length=6)


@pytest.fixture(scope="module")
def teacher(tok):
    return tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=48)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, teacher, tok, dataset):
    folder = tmp_path_factory.mktemp("cache")
    build_teacher_cache(teacher, tok, dataset, K, folder, max_completion_length=6, batch_size=16, shard_rows=40)
    return str(folder)


def logged(trainer, key):
    return [log[key] for log in trainer.state.log_history if key in log]


def test_cache_round_trip_is_exact(cache_dir, teacher, tok, dataset):
    cache = TeacherCache(cache_dir)
    assert cache.meta.rows == len(dataset) and cache.top_k == K and cache.meta.bytes_per_token == 8 * K + 4
    assert len(list(cache.path.glob("shard-*"))) == 3  # 100 rows in shards of >= 40
    rows = [0, 17, 99]
    ids = [_row_ids(tok, dataset[r], None, 6, None) for r in rows]
    batch = pack([p for p, _ in ids], [c for _, c in ids], tok.pad_token_id)
    with torch.no_grad():
        live = topk_targets_from_hidden(completion_hidden_states(teacher, batch), LMHead.of(teacher), K, len(tok))
    stored = cache.targets(rows)
    assert sum(len(t) for t in stored) == len(live)
    offset = 0
    # The cache was built in batches of 16 and the live targets here come from a batch of 3: on the pinned float path
    # the two agree bit for bit; another path (ATEN_CPU_CAPABILITY=default) reduces another batch shape in another
    # order, so the values are compared to float32 rounding and the ids exactly.
    for part in stored:
        n = len(part)
        assert torch.equal(part.ids, live.ids[offset : offset + n])
        torch.testing.assert_close(part.log_probs, live.log_probs[offset : offset + n], rtol=0, atol=2e-6)
        torch.testing.assert_close(part.tail_log_prob, live.tail_log_prob[offset : offset + n], rtol=0, atol=2e-6)
        if float_path.is_pinned():
            assert torch.equal(part.log_probs, live.log_probs[offset : offset + n])
            assert torch.equal(part.tail_log_prob, live.tail_log_prob[offset : offset + n])
        offset += n


def test_lambda_zero_from_the_cache_equals_the_live_teacher_with_the_same_k(tmp_path, cache_dir, teacher, tok, dataset):
    live = make_trainer(tmp_path / "live", tok, dataset, teacher=teacher, lmbda=0.0, teacher_top_k=K, **RUN)
    live.train()
    cached = GKDTrainer(
        model=tiny_llama(len(tok), tokenizer=tok, seed=1),
        teacher_model=None,
        args=live.args.__class__(
            **{**live.args.to_dict(), "output_dir": str(tmp_path / "cached"), "teacher_cache": cache_dir}
        ),
        train_dataset=dataset,
        processing_class=tok,
    )
    assert cached.teacher is None and cached.teacher_model is None  # no teacher in memory at all
    cached.train()
    assert logged(cached, "loss") == pytest.approx(logged(live, "loss"), abs=1e-5)
    assert logged(cached, "teacher/cache/tokens") and not logged(cached, "teacher/teacher/tokens")
    for p, q in zip(live.model.parameters(), cached.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


def test_top_k_equal_to_the_vocabulary_trains_like_the_full_path(tmp_path, tok, dataset, teacher):
    full = make_trainer(tmp_path / "full", tok, dataset, teacher=teacher, lmbda=0.0, **RUN)
    topk = make_trainer(tmp_path / "topk", tok, dataset, teacher=teacher, lmbda=0.0, teacher_top_k=len(tok), **RUN)
    full.train()
    topk.train()
    assert logged(topk, "loss") == pytest.approx(logged(full, "loss"), rel=1e-5)


def test_a_stale_cache_is_refused(tmp_path, cache_dir, teacher, tok, dataset):
    with pytest.raises(ValueError, match="max_completion_length=6 and the run uses 5"):
        make_trainer(
            tmp_path / "a",
            tok,
            dataset,
            teacher=teacher,
            lmbda=0.0,
            teacher_cache=cache_dir,
            max_steps=1,
            max_completion_length=5,
        )
    with pytest.raises(ValueError, match="stores the top 8 tokens and teacher_top_k=4"):
        make_trainer(
            tmp_path / "b", tok, dataset, teacher=teacher, lmbda=0.0, teacher_cache=cache_dir, teacher_top_k=4, **RUN
        )
    with pytest.raises(ValueError, match="holds 100 rows and the training dataset has 99"):
        make_trainer(
            tmp_path / "c", tok, dataset.select(range(99)), teacher=teacher, lmbda=0.0, teacher_cache=cache_dir, **RUN
        )
    changed = dataset.map(
        lambda row, i: {"completion": row["completion"] + "0" if i % 2 else row["completion"]}, with_indices=True
    )
    trainer = make_trainer(tmp_path / "d", tok, changed, teacher=teacher, lmbda=0.0, teacher_cache=cache_dir, **RUN)
    with pytest.raises(ValueError, match=r"Row \d+ of the training dataset is not the row the teacher cache"):
        trainer.train()


def test_a_mixed_run_runs_the_teacher_on_on_policy_rows_only(tmp_path, cache_dir, teacher, tok, dataset):
    trainer = make_trainer(tmp_path, tok, dataset, teacher=teacher, lmbda=0.5, teacher_cache=cache_dir, **RUN)
    seen = []
    original = trainer.teacher.hidden_states

    def counting(input_ids, attention_mask, logits_to_keep):
        seen.append(input_ids.shape[0])
        return original(input_ids, attention_mask, logits_to_keep)

    trainer.teacher.hidden_states = counting
    trainer.train()
    cached_tokens, live_tokens = logged(trainer, "teacher/cache/tokens"), logged(trainer, "teacher/teacher/tokens")
    on_policy = logged(trainer, "on_policy_fraction")
    assert sum(cached_tokens) > 0 and sum(live_tokens) > 0
    assert sum(seen) == round(sum(f * 4 for f in on_policy))  # only the on-policy rows reached the teacher


def test_without_a_teacher_only_cached_lambda_zero_runs_are_allowed(tmp_path, cache_dir, tok, dataset):
    from helpers import make_config

    with pytest.raises(ValueError, match="Without teacher_model every row must be served by the teacher cache"):
        GKDTrainer(
            model=tiny_llama(len(tok), tokenizer=tok),
            teacher_model=None,
            train_dataset=dataset,
            args=make_config(tmp_path, lmbda=0.5, teacher_cache=cache_dir, **RUN),
            processing_class=tok,
        )


def test_a_schedule_that_stays_at_zero_is_served_by_the_cache_alone(tmp_path, cache_dir, tok, dataset):
    from helpers import make_config

    args = make_config(
        tmp_path, lmbda_schedule="linear", lmbda_start=0.0, lmbda_end=0.0, teacher_cache=cache_dir, **RUN
    )
    trainer = GKDTrainer(
        model=tiny_llama(len(tok), tokenizer=tok), teacher_model=None, train_dataset=dataset, args=args,
        processing_class=tok,
    )  # fmt: skip
    assert trainer.teacher is None and trainer.teachers.cache is not None


def test_a_reverse_kl_run_warns_about_the_caches_top_k_and_the_config_is_left_as_given(
    tmp_path, cache_dir, tok, dataset, caplog
):
    from helpers import make_config

    args = make_config(tmp_path, lmbda=0.0, divergence="rkl", teacher_cache=cache_dir, **RUN)
    given = args.to_dict()
    with caplog.at_level(logging.WARNING, logger="trl_opd.trainers.teacher_args"):
        trainer = GKDTrainer(
            model=tiny_llama(len(tok), tokenizer=tok), teacher_model=None, train_dataset=dataset, args=args,
            processing_class=tok,
        )  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"teacher_top_k={K} with divergence='rkl'" in warnings[0]
    assert trainer.teacher_top_k == K and args.teacher_top_k is None and args.to_dict() == given
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trl_opd.trainers.teacher_args"):
        GKDTrainer(
            model=tiny_llama(len(tok), tokenizer=tok), teacher_model=None, train_dataset=dataset, processing_class=tok,
            args=make_config(tmp_path, lmbda=0.0, divergence="fkl", teacher_cache=cache_dir, **RUN),
        )  # fmt: skip
    assert not caplog.records  # a forward KL on the cache's bins is fine


# ------------------------------------------------------------------------------------------------------------ routing


def routed_dataset(dataset):
    return dataset.map(lambda _, i: {"teacher_id": "copy" if i % 2 else "other"}, with_indices=True)


def test_rows_are_routed_by_teacher_id(tmp_path, tok, dataset):
    student = tiny_llama(len(tok), tokenizer=tok, seed=1)
    copy = tiny_llama(len(tok), tokenizer=tok, seed=1)  # the student's twin: divergence exactly 0 before training
    other = tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=48)
    trainer = make_trainer(
        tmp_path,
        tok,
        routed_dataset(dataset),
        student=student,
        teacher={"copy": copy, "other": other},
        lmbda=0.0,
        max_steps=1,
        learning_rate=0.0,
        **{"max_completion_length": 6},
    )
    trainer.train()
    copy_div, other_div = logged(trainer, "teacher/copy/divergence"), logged(trainer, "teacher/other/divergence")
    assert copy_div == [pytest.approx(0.0, abs=1e-6)] and other_div[0] > 1e-3
    tokens = logged(trainer, "teacher/copy/tokens")[0] + logged(trainer, "teacher/other/tokens")[0]
    assert tokens == logged(trainer, "num_tokens_trained")[0]


def test_unknown_teacher_ids_are_refused_naming_them(tmp_path, tok, dataset, teacher):
    bad = routed_dataset(dataset).map(
        lambda row, i: {"teacher_id": "nobody" if i == 3 else row["teacher_id"]}, with_indices=True
    )
    with pytest.raises(ValueError, match=r"names teachers that were not given: 'nobody' \(given: copy, other\)"):
        make_trainer(tmp_path, tok, bad, teacher={"copy": teacher, "other": teacher}, **RUN)
    with pytest.raises(ValueError, match="needs a `teacher_id` column"):
        make_trainer(tmp_path, tok, dataset, teacher={"copy": teacher, "other": teacher}, **RUN)


def test_cache_teacher_command(tmp_path, tok, teacher, dataset, capsys):
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    tok.save_pretrained(folder)
    data = tmp_path / "rows.jsonl"
    dataset.select(range(10)).to_json(str(data))
    out = tmp_path / "cache"
    assert (
        main(
            [
                "cache-teacher",
                "--teacher",
                str(folder),
                "--dataset",
                str(data),
                "--top-k",
                "4",
                "--output",
                str(out),
                "--max-completion-length",
                "6",
            ]
        )
        == 0
    )
    assert "10 rows" in capsys.readouterr().out
    assert TeacherCache(out).meta.top_k == 4
    assert (
        main(
            [
                "cache-teacher",
                "--teacher",
                str(tmp_path / "no"),
                "--dataset",
                str(data),
                "--top-k",
                "4",
                "--output",
                str(out),
            ]
        )
        == 2
    )
