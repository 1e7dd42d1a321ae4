"""Issue 22: a teacher cache is trusted only when it is whole, consistent and built from the run's teacher; building
one never overwrites or mixes with a folder the package did not write; a row is never routed to a teacher it does not
name."""

import json
import subprocess
import sys

import pytest
from helpers import make_trainer

from trl_opd import build_teacher_cache
from trl_opd.cli import main
from trl_opd.ownership import OwnershipError
from trl_opd.teachers.cache import CacheError, TeacherCache
from trl_opd.tiny import tiny_llama


K = 4
RUN = dict(max_steps=1, max_completion_length=6)


@pytest.fixture(scope="module")
def teacher(tok):
    return tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=48)


@pytest.fixture(scope="module")
def rows(dataset):
    return dataset.select(range(12))


def build(teacher, tok, rows, folder, **kwargs):
    kwargs = {"max_completion_length": 6, "shard_rows": 5, "batch_size": 5, **kwargs}
    return build_teacher_cache(teacher, tok, rows, K, folder, **kwargs)


def open_in_subprocess(folder):
    """Open the cache in a fresh interpreter: a crash inside Arrow's C++ cannot take the test process down."""
    code = f"from trl_opd.teachers.cache import TeacherCache; TeacherCache({str(folder)!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_a_shard_with_flipped_bytes_is_named_not_a_crash(tmp_path, teacher, tok, rows):
    build(teacher, tok, rows, tmp_path / "cache")
    arrow = next((tmp_path / "cache" / "shard-00000").glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0xFF
    arrow.write_bytes(bytes(data))
    done = open_in_subprocess(tmp_path / "cache")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "shard shard-00000 is damaged or was changed" in done.stderr
    assert str(tmp_path / "cache") in done.stderr and "--overwrite" in done.stderr


def test_a_truncated_or_missing_shard_is_named(tmp_path, teacher, tok, rows):
    build(teacher, tok, rows, tmp_path / "cache")
    arrow = next((tmp_path / "cache" / "shard-00001").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    with pytest.raises(CacheError, match="shard shard-00001 is damaged"):
        TeacherCache(tmp_path / "cache")
    build(teacher, tok, rows, tmp_path / "cache2")
    (tmp_path / "cache2" / "shard-00002").rename(tmp_path / "moved")
    with pytest.raises(CacheError, match="lacks its shard shard-00002"):
        TeacherCache(tmp_path / "cache2")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda text: text[: len(text) // 2], "meta.json is not valid JSON"),
        (lambda text: text.replace('"top_k": 4', '"top_k": 8'), "its `ids` column holds"),
        (lambda text: text.replace('"top_k": 4', '"top_k": "4"'), "invalid value(s) top_k='4'"),
        (lambda text: text.replace('"rows": 12', '"rows": 11'), "its shards hold 12 rows and meta.json says 11"),
        (lambda text: text.replace('"temperature": 1.0', '"temperature": NaN'), "invalid value(s) temperature=nan"),
        (lambda text: text.replace('"top_k"', '"topk"'), "unknown field(s) topk; missing field(s) top_k"),
    ],
)
def test_a_damaged_or_edited_meta_json_is_named(tmp_path, teacher, tok, rows, edit, message):
    build(teacher, tok, rows, tmp_path / "cache")
    meta = tmp_path / "cache" / "meta.json"
    meta.write_text(edit(meta.read_text()))
    with pytest.raises(CacheError) as error:
        TeacherCache(tmp_path / "cache")
    assert message in str(error.value) and str(tmp_path / "cache") in str(error.value)


def test_a_cache_of_another_teacher_is_refused_beside_a_live_teacher(tmp_path, teacher, tok, rows):
    other = tiny_llama(len(tok), tokenizer=tok, seed=3, hidden_size=48)
    build(other, tok, rows, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"was built from the teacher .* \(weights fingerprint [0-9a-f]{16}\), but"):
        make_trainer(tmp_path / "run", tok, rows, teacher=teacher, lmbda=0.5, teacher_cache=str(tmp_path / "cache"),
                     **RUN)  # fmt: skip
    build(teacher, tok, rows, tmp_path / "own")
    make_trainer(tmp_path / "run2", tok, rows, teacher=teacher, lmbda=0.5, teacher_cache=str(tmp_path / "own"), **RUN)


def test_a_top_k_no_rebuild_can_satisfy_is_refused_at_init(tmp_path, teacher, tok, rows):
    build(teacher, tok, rows, tmp_path / "cache")
    with pytest.raises(ValueError, match="teacher_top_k=1000 exceeds the teacher's vocabulary"):
        make_trainer(tmp_path / "run", tok, rows, teacher=teacher, lmbda=0.0, teacher_cache=str(tmp_path / "cache"),
                     teacher_top_k=1000, **RUN)  # fmt: skip
    with pytest.raises(ValueError, match="top_k=1000 exceeds the teacher's vocabulary"):
        build_teacher_cache(teacher, tok, rows, 1000, tmp_path / "big")


def test_building_into_a_folder_the_package_does_not_own_is_refused(tmp_path, teacher, tok, rows):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "meta.json").write_text('{"my": "notes"}')
    with pytest.raises(OwnershipError, match="is not empty .* and was not created by trl-opd"):
        build(teacher, tok, rows, user)
    assert json.loads((user / "meta.json").read_text()) == {"my": "notes"}


def test_a_user_folder_named_shard_does_not_break_the_cache(tmp_path, teacher, tok, rows):
    cache = build(teacher, tok, rows, tmp_path / "cache")
    (tmp_path / "cache" / "shard-notes").mkdir()
    (tmp_path / "cache" / "shard-notes" / "todo.txt").write_text("mine")
    assert len(TeacherCache(tmp_path / "cache").data) == cache.meta.rows


def test_a_rebuild_needs_overwrite_and_leaves_no_stale_shard(tmp_path, teacher, tok, rows):
    build(teacher, tok, rows, tmp_path / "cache")  # 12 rows: shards 0, 1, 2
    with pytest.raises(OwnershipError, match="already holds a teacher cache; pass --overwrite"):
        build(teacher, tok, rows.select(range(4)), tmp_path / "cache")
    cache = build(teacher, tok, rows.select(range(4)), tmp_path / "cache", overwrite=True)
    assert cache.meta.rows == 4 and len(cache.data) == 4
    assert sorted(p.name for p in (tmp_path / "cache").glob("shard-*")) == ["shard-00000"]


def test_cache_teacher_refuses_before_loading_the_teacher(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    no_teacher = tmp_path / "teacher"
    no_teacher.mkdir()  # an empty folder: loading it would fail later, with another message
    argv = ["cache-teacher", "--teacher", str(no_teacher), "--dataset", "x.jsonl", "--output", str(user)]
    assert main([*argv, "--top-k", "4"]) == 2
    assert "was not created by trl-opd" in capsys.readouterr().err
    assert main([*argv, "--top-k", "0"]) == 2
    assert "--top-k must be >= 1, got 0" in capsys.readouterr().err


def test_a_one_teacher_mapping_refuses_rows_of_another_teacher(tmp_path, teacher, tok, rows):
    routed = rows.map(lambda _, i: {"teacher_id": "code" if i == 3 else "math"}, with_indices=True)
    with pytest.raises(ValueError, match=r"names teachers that were not given: 'code' \(given: math\)"):
        make_trainer(tmp_path / "run", tok, routed, teacher={"math": teacher}, **RUN)
    make_trainer(tmp_path / "ok", tok, rows, teacher={"math": teacher}, **RUN)  # no teacher_id column: all to math


def test_a_routed_teacher_that_fails_the_check_is_named_by_its_id(tmp_path, teacher, tok, rows):
    narrow = tiny_llama(len(tok) - 10, seed=4, hidden_size=48)  # a head without rows for 10 of the tokens
    routed = rows.map(lambda _, i: {"teacher_id": "bad" if i % 2 else "good"}, with_indices=True)
    with pytest.raises(ValueError, match=r"The teacher 'bad' \(teacher_id\) cannot teach this student"):
        make_trainer(tmp_path / "run", tok, routed, teacher={"good": teacher, "bad": narrow}, **RUN)


def test_the_weights_fingerprint_tells_teachers_apart_but_not_their_float_dtypes(teacher, tok):
    import copy

    import torch

    from trl_opd.fingerprint import weights_fingerprint

    other = tiny_llama(len(tok), tokenizer=tok, seed=3, hidden_size=48)
    assert weights_fingerprint(teacher) != weights_fingerprint(other)
    assert weights_fingerprint(teacher) == weights_fingerprint(copy.deepcopy(teacher).to(torch.bfloat16))


def test_a_folder_in_use_by_another_process_is_refused(tmp_path):
    import time

    from trl_opd.ownership import claim

    code = (
        "import sys, time; from trl_opd.ownership import claim; "
        f"claim({str(tmp_path / 'busy')!r}, 'teacher-cache', 'the cache folder'); print('held', flush=True); "
        "time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OwnershipError, match=rf"in use by another trl-opd process \(pid {holder.pid}\)"):
            claim(tmp_path / "busy", "teacher-cache", "the cache folder")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    claim(tmp_path / "busy", "teacher-cache", "the cache folder")  # the lock died with its process


def test_a_cache_whose_build_was_interrupted_is_named(tmp_path, teacher, tok, rows):
    build(teacher, tok, rows, tmp_path / "cache")
    (tmp_path / "cache" / "meta.json").unlink()  # a kill before meta.json, which is written last
    with pytest.raises(CacheError, match="is not a teacher cache .*a build that was interrupted leaves none"):
        TeacherCache(tmp_path / "cache")
    build(teacher, tok, rows, tmp_path / "cache")  # rebuilt without --overwrite: nothing complete was there
