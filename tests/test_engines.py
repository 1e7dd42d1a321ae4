"""The trainers on every engine accelerate launches: 1 process, DDP, DeepSpeed ZeRO-2 and ZeRO-3, FSDP2 (2 CPU
processes, gloo), on the same global batch of 8 rows (tests/scripts/engine_matrix.py, configs in
tests/scripts/accelerate/).

What a CPU run proves: the engines' code paths (partitioned/sharded parameters, the gathers trl-opd adds, gradient
reduction across ranks, the teacher's placement) give the same training as DDP. What it cannot: bf16, NCCL, memory
and speed on GPUs. FSDP2 runs through a test-harness shim (tests/scripts/fsdp_cpu_shim.py): accelerate 1.16 launches
an FSDP config on CPU as DDP without it.

Tolerances, derived from float32 rounding, not fitted:

- Losses: a loss is a float32 sum over ~30 tokens whose terms are reduced in a different order on each engine (one
  process sums the whole batch; ZeRO-3 reduce-scatters, FSDP2 all-gathers the head): the relative error is bounded by
  about n·ε₃₂ = 30 × 6e-8 ≈ 2e-6, so ``rel=1e-5``; MiniLLM's policy-gradient loss is a mean of zero-mean advantages,
  itself float32 rounding noise (~1e-9), so it also gets ``abs=1e-8``.
- Weights: a relative gradient difference δ ≲ 1e-5 changes each element's Adam update by at most δ·lr, so after
  ``steps`` steps ``Σ w`` and ``Σ |w|`` over n parameters differ by at most ``n·steps·lr·1e-5`` (5e-4 for GKD). A real
  fault (a rank's gradient missing, a stale head) flips the sign of many updates and moves ``Σ |w|`` by ~``n·lr``
  (~24), five orders of magnitude more.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


# Checked without importing it: deepspeed loads in the launched processes only, not in the test session.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="the engine matrix needs deepspeed: pip install -e '.[test]'"
)

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "engine_matrix.py"
CONFIGS = ROOT / "tests" / "scripts" / "accelerate"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(ROOT),
    "DS_ACCELERATOR": "cpu",  # DeepSpeed's CPU accelerator (its configs say use_cpu: false)
}
STUDENT_PARAMETERS = 23776  # tiny_llama(49 tokens, hidden 32): checked against the run's own count below


@pytest.fixture(scope="module")
def deepspeed_cpu_op():
    """Build DeepSpeed's one JIT CPU op (its shared-memory collectives, ~100 s) once, before any launch: the
    processes then load it from torch's extension cache instead of both compiling it."""
    code = "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def launch(tmp_path, trainer: str, engine: str, **env) -> dict:
    out = tmp_path / f"{trainer}-{engine}.json"
    if engine == "single":
        command = [sys.executable, str(SCRIPT), trainer, str(out)]
    else:
        config = CONFIGS / f"{engine}.yaml"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        command += [str(SCRIPT), trainer, str(out)]
    result = subprocess.run(command, env={**ENV, **env}, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["engine"] == engine and record["world"] == (1 if engine == "single" else 2), record
    return record


def assert_same_training(run, reference, lr: float, steps: int | None = None, abs_loss: float = 0.0):
    steps = steps or len(reference["losses"])
    assert run["student_numel"] == reference["student_numel"] == STUDENT_PARAMETERS
    assert run["losses"][:steps] == pytest.approx(reference["losses"][:steps], rel=1e-5, abs=abs_loss)
    tolerance = STUDENT_PARAMETERS * steps * lr * 1e-5
    for got, want in zip(run["checksums"][:steps], reference["checksums"][:steps], strict=True):
        assert got == pytest.approx(want, abs=tolerance), (run["engine"], got, want, tolerance)


def assert_sharded(run, field):
    """Every rank holds about half of the model (FSDP2 splits rows, so the halves differ by a few rows)."""
    full, per_rank = run[f"{field}_numel"], run[f"{field}_per_rank"]
    assert sum(per_rank) == full and all(0.45 * full <= n <= 0.55 * full for n in per_rank), (field, run)


def assert_replicated(run, field):
    assert run[f"{field}_per_rank"] == [run[f"{field}_numel"]] * 2, (field, run)


@pytest.fixture(scope="module")
def gkd(tmp_path_factory, deepspeed_cpu_op):
    tmp = tmp_path_factory.mktemp("gkd")
    return {engine: launch(tmp, "gkd", engine) for engine in ("single", "ddp", "zero2", "zero3", "fsdp2")}


@pytest.mark.slow
def test_gkd_with_lambda_mixing_and_top_k_trains_the_same_on_every_engine(gkd):
    single, ddp = gkd["single"], gkd["ddp"]
    assert len(ddp["losses"]) == len(ddp["checksums"]) == 2
    # Step 1 is off-policy (λ = 0): the same rows on 1 and 2 processes, so every engine matches one process.
    for run in gkd.values():
        assert_same_training(run, single, lr=1e-3, steps=1)
    # Step 2 (λ = 0.5) samples on-policy rows: the 2-process engines draw the same samples, so they match DDP.
    for engine in ("zero2", "zero3", "fsdp2"):
        assert_same_training(gkd[engine], ddp, lr=1e-3)
    assert ddp["losses"][1] != pytest.approx(single["losses"][1], rel=1e-3)  # step 2 really differs from 1 process


@pytest.mark.slow
def test_the_teacher_and_student_are_sharded_under_zero3_and_fsdp2_and_replicated_otherwise(gkd):
    for engine in ("zero3", "fsdp2"):
        assert_sharded(gkd[engine], "student")
        assert_sharded(gkd[engine], "teacher")
    for engine in ("ddp", "zero2"):
        assert_replicated(gkd[engine], "student")
        assert_replicated(gkd[engine], "teacher")


@pytest.mark.slow
def test_gkd_token_importance_trains_the_same_under_zero3_as_zero2(tmp_path, deepspeed_cpu_op):
    """TIP's loss projects the student's head again in the backward pass, after the gather of the forward ended."""
    zero2, zero3 = launch(tmp_path, "gkd-tip", "zero2"), launch(tmp_path, "gkd-tip", "zero3")
    assert_same_training(zero3, zero2, lr=1e-3)
    assert_sharded(zero3, "student")
    assert zero3["losses"][0] > 0


@pytest.mark.slow
def test_minillm_trains_the_same_on_every_engine_with_a_replicated_teacher_under_fsdp2(tmp_path, deepspeed_cpu_op):
    runs = {engine: launch(tmp_path, "minillm", engine) for engine in ("ddp", "zero2", "zero3")}
    runs["fsdp2"] = launch(tmp_path, "minillm", "fsdp2", MATRIX_TEACHER_PLACEMENT="replica")
    for engine in ("zero2", "zero3", "fsdp2"):
        assert_same_training(runs[engine], runs["ddp"], lr=3e-3, abs_loss=1e-8)
    assert_sharded(runs["fsdp2"], "student")
    assert_replicated(runs["fsdp2"], "teacher")  # teacher_placement="replica"
    assert_sharded(runs["zero3"], "teacher")


@pytest.mark.slow
def test_spin_trains_the_same_under_zero2_as_ddp(tmp_path, deepspeed_cpu_op):
    ddp, zero2 = launch(tmp_path, "spin", "ddp"), launch(tmp_path, "spin", "zero2")
    assert ddp["losses"][0] == pytest.approx(0.6931471805599453, rel=1e-6)  # ln 2: θ = π_ref at the round's start
    assert_same_training(zero2, ddp, lr=1e-2)
