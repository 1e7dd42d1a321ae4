"""Two processes (torchrun, gloo on CPU) train GKD like one process at the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


SCRIPT = Path(__file__).parent / "scripts" / "gkd_distributed.py"


def run(tmp_path, processes):
    out = tmp_path / f"run-{processes}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    if processes == 1:
        command = [sys.executable, str(SCRIPT), str(out)]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            str(SCRIPT),
            str(out),
        ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(tmp_path):
    one, two = run(tmp_path, 1), run(tmp_path, 2)
    assert two["world"] == 2 and len(one["flags"]) == 3
    # Every step draws the same per-row on/off-policy flags for the whole global batch (λ = 0, 1/3, 2/3).
    assert one["flags"] == two["flags"] and any(0 < sum(f) < len(f) for f in one["flags"])
    # Step 1 is off-policy only (no sampling): the same tokens, the same loss.
    assert one["losses"][0] == pytest.approx(two["losses"][0], rel=1e-6)
    assert all(loss == loss for loss in two["losses"])  # finite, no NaN
