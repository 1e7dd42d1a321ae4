"""The OPD lab: the pipeline end to end at smoke size, the task metrics, and the conclusions robust at small size."""

import json
import math

import pytest

from trl_opd.cli import main
from trl_opd.lab.experiments import SIZES, Lab, slope
from trl_opd.lab.tasks import ChainTask


def test_chain_task_metrics_by_hand():
    task = ChainTask(K=5)
    assert task.completion("12", 4) == "4312"  # (x_{t-1} + 2 x_{t-2}) mod 5: 4, 8%5=3, 11%5=1, 7%5=2
    assert task.score(["12"], ["4312"], 4) == {"sequence_error": 0.0, "token_error": 0.0, "hamming": 0.0}
    # one wrong digit derails the reference, but the rule-given-own-prefix (token error) counts only the slip
    wrong = "4" + "0" + task.completion("40", 2)
    scored = task.score(["12"], [wrong], 4)
    assert scored["sequence_error"] == 1.0 and scored["token_error"] == 0.25 and scored["hamming"] >= 1
    assert task.score(["12"], ["43"], 4)["token_error"] == 0.5  # missing digits are errors


def test_chain_prompts_leave_out_repeated_digits():
    # "aa" is indistinguishable from "a" for a causal model without a position signal (and "00" is a fixed point)
    prompts = ChainTask(K=5).prompts()
    assert len(prompts) == 20 and all(p[0] != p[1] for p in prompts)


def test_growth_exponent_slope():
    assert slope([5, 10, 20], [0.01 * t**2 for t in (5, 10, 20)]) == pytest.approx(2.0)
    assert slope([5, 10, 20], [0.0, 0.0, 0.0]) == pytest.approx(0.0)  # floored at EPS


def test_lab_smoke_end_to_end(tmp_path):
    out = tmp_path / "lab"
    assert main(["lab", "--smoke", "--output", str(out), "--experiments", "modes", "tip", "compounding"]) == 0
    report = (out / "report.md").read_text()
    for heading in ("## 1. Error compounding", "## 2. Mode covering", "## 5. TIP", "| λ | seed's prediction",
                    "**Verdict:**", "](modes.png)"):
        assert heading in report, heading
    for png in ("compounding.png", "modes.png", "tip.png"):
        assert (out / png).stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert {"compounding", "modes", "tip", "teachers", "verdicts"} <= set(results)
    assert len(results["modes"]["runs"]) == 4 and all(
        math.isclose(r["mode_1"] + r["mode_2"] + r["between"], 1.0, abs_tol=1e-5) for r in results["modes"]["runs"])


def test_lab_rejects_unknown_experiment(tmp_path, capsys):
    assert main(["lab", "--smoke", "--output", str(tmp_path), "--experiments", "nope"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


def test_conclusions_fkl_covers_and_on_policy_lowers_divergence():
    """Verified at --quick size on seeds 0 and 1: forward KL leaves far more mass between the two modes than reverse
    KL (0.53 vs 0.27), and GKD with λ = 1 ends with a lower divergence on the student's own samples than λ = 0."""
    lab = Lab(SIZES["quick"], seed=0)
    lab.size.seeds = [0]
    runs = {r["method"]: r for r in lab.modes(methods=("fkl", "rkl"))["runs"]}
    assert runs["fkl"]["between"] > runs["rkl"]["between"] + 0.1, runs
    off, _ = lab.gkd_chain(5, 0.0, "jsd", 0, steps=60)
    on, _ = lab.gkd_chain(5, 1.0, "jsd", 0, steps=60)
    assert on["on_policy_divergence"] < off["on_policy_divergence"], (on, off)
