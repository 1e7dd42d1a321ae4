"""trl_opd.sharding: engine detection, placement choices, and the FSDP2 gathers in one process (the
2-process engine matrix is tests/test_engines.py)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trl_opd.divergences import LMHead
from trl_opd.sharding import (
    engine_of,
    full_head,
    gathered_heads,
    local_numel,
    prepare_frozen,
)
from trl_opd.tiny import tiny_llama


def fake_accelerator(zero_stage=None, fsdp_version=None, processes=2):
    deepspeed = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage)
    fsdp = None if fsdp_version is None else SimpleNamespace(fsdp_version=fsdp_version)
    distributed = "DistributedType.FSDP" if fsdp else "DistributedType.MULTI_CPU"
    state = SimpleNamespace(deepspeed_plugin=deepspeed, fsdp_plugin=fsdp, distributed_type=distributed)
    return SimpleNamespace(state=state, num_processes=processes)


def test_engine_of_names_each_engine():
    assert engine_of(fake_accelerator(processes=1)) == "single"
    assert engine_of(fake_accelerator()) == "ddp"
    assert engine_of(fake_accelerator(zero_stage=2)) == "zero2"
    assert engine_of(fake_accelerator(zero_stage=3)) == "zero3"
    assert engine_of(fake_accelerator(fsdp_version=2)) == "fsdp2"


def test_placements_are_checked_before_anything_is_placed(make_gkd_config):
    with pytest.raises(ValueError, match="teacher_placement must be one of 'sharded', 'replica', got 'cpu'"):
        make_gkd_config(teacher_placement="cpu")
    with pytest.raises(ValueError, match="choose one of 'sharded', 'replica'"):
        prepare_frozen(torch.nn.Linear(2, 2), fake_accelerator(), "everywhere")
    with pytest.raises(
        ValueError, match="'replica' under DeepSpeed ZeRO-3.*Use teacher_placement='sharded', or ZeRO-2"
    ):
        prepare_frozen(torch.nn.Linear(2, 2), fake_accelerator(zero_stage=3), "replica")


def test_an_fsdp_config_that_accelerate_ran_as_ddp_is_named(monkeypatch, caplog):
    class Accelerator:
        state, num_processes = fake_accelerator().state, 2

        @staticmethod
        def prepare_model(model, evaluation_mode):
            return model

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level("WARNING", logger="trl_opd.sharding"):
        prepare_frozen(torch.nn.Linear(2, 2), Accelerator(), "sharded")
    assert "launched with an FSDP config but runs ddp" in caplog.text
    caplog.clear()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with caplog.at_level("WARNING", logger="trl_opd.sharding"):
        prepare_frozen(torch.nn.Linear(2, 2), Accelerator(), "sharded")
    assert caplog.text == ""


def test_spin_is_refused_with_a_sharded_student_before_anything_loads(monkeypatch):
    from trl_opd.sharding import refuse_sharded_student

    zero3 = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3), fsdp=None)
    with pytest.raises(
        ValueError, match="SPINTrainer does not support DeepSpeed ZeRO-3 yet: .* DDP or DeepSpeed ZeRO-1/2"
    ):
        refuse_sharded_student(zero3, "SPINTrainer", "its saves")
    zero2 = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2), fsdp=None)
    refuse_sharded_student(zero2, "SPINTrainer", "its saves")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="does not support FSDP yet"):
        refuse_sharded_student(zero2, "SPINTrainer", "its saves")


def test_on_one_process_the_heads_are_the_parameters_themselves(tok):
    model = tiny_llama(len(tok), tokenizer=tok)
    with gathered_heads(model, model, None):  # a model given twice, and no model, are fine
        head = full_head(model)
    assert head.weight is model.lm_head.weight and head == LMHead.of(model)
    assert local_numel(model) == sum(p.numel() for p in model.parameters())


FSDP2_ONE_PROCESS = textwrap.dedent("""
    import torch, torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from trl_opd.scoring import last_hidden_states
    from trl_opd.sharding import full_head, local_numel, unsharded
    from trl_opd.tiny import tiny_llama

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29517", rank=0, world_size=1)
    model = tiny_llama(49, seed=3)
    reference = model.lm_head.weight.detach().clone()
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = last_hidden_states(model, ids, torch.ones_like(ids), 2)
    fully_shard(model)
    assert isinstance(model.lm_head.weight, DTensor)
    assert torch.equal(full_head(model).weight, reference)
    try:
        last_hidden_states(model, ids, torch.ones_like(ids), 2)
        raise SystemExit("a submodule call read DTensor shards without failing")
    except RuntimeError as error:
        assert "DTensor" in str(error), error
    with torch.no_grad(), unsharded(model):
        got = last_hidden_states(model, ids, torch.ones_like(ids), 2)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    assert isinstance(model.lm_head.weight, DTensor)  # resharded after the block
    assert local_numel(model) == sum(p.numel() for p in model.parameters())  # one rank holds everything
    print("ok")
""")


def test_fsdp2_heads_are_made_full_and_unsharded_scoring_matches_the_plain_model():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", FSDP2_ONE_PROCESS], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
