"""The OPD lab: the pipeline end to end at smoke size, the task metrics, and the conclusions robust at small size."""

import dataclasses
import json
import math

import pytest

from trl_opd.cli import main
from trl_opd.lab import SIZES, Lab, count_runs, load_results, write_report
from trl_opd.lab.experiments import ablation, compounding, modes, spin, tip
from trl_opd.lab.stats import slope
from trl_opd.lab.tasks import ChainTask


def test_chain_task_metrics_by_hand():
    task = ChainTask(K=5)
    assert task.completion("12", 4) == "4312"  # (x_{t-1} + 2 x_{t-2}) mod 5: 4, 8%5=3, 11%5=1, 7%5=2
    assert task.score(["12"], ["4312"], 4) == {
        "sequence_error": 0.0,
        "token_error": 0.0,
        "total_errors": 0.0,
        "hamming": 0.0,
    }
    # one wrong digit derails the reference, but the rule-given-own-prefix (token error) counts only the slip
    wrong = "4" + "0" + task.completion("40", 2)
    scored = task.score(["12"], [wrong], 4)
    assert scored["sequence_error"] == 1.0 and scored["token_error"] == 0.25 and scored["hamming"] >= 1
    assert task.score(["12"], ["43"], 4)["token_error"] == 0.5  # missing digits are errors
    assert task.rule_errors("12", wrong, 4) == [0, 1, 0, 0]
    assert task.error_profile(["12", "12"], ["4312", wrong], 4) == [0.0, 0.5, 0.0, 0.0]


def test_chain_prompts_leave_out_repeated_digits():
    # "aa" is indistinguishable from "a" for a causal model without a position signal (and "00" is a fixed point)
    prompts = ChainTask(K=5).prompts()
    assert len(prompts) == 20 and all(p[0] != p[1] for p in prompts)


def test_growth_exponent_slope():
    assert slope([5, 10, 20], [0.01 * t**2 for t in (5, 10, 20)]) == pytest.approx(2.0)
    assert slope([5, 10, 20], [0.0, 0.0, 0.0]) == pytest.approx(0.0)  # floored at EPS


@pytest.mark.slow
def test_lab_smoke_end_to_end(tmp_path):
    out = tmp_path / "lab"
    assert (
        main(
            [
                "lab",
                "--smoke",
                "--output",
                str(out),
                "--experiments",
                "modes",
                "tip",
                "compounding",
            ]
        )
        == 0
    )
    report = (out / "report.md").read_text()
    for heading in (
        "## 1. Error compounding",
        "## 2. Mode covering",
        "## 5. TIP",
        "| random 50 % |",
        "| λ | seed's prediction",
        "**Verdict:**",
        "](modes.png)",
    ):
        assert heading in report, heading
    for png in ("compounding.png", "modes.png", "tip.png"):
        assert (out / png).stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert {"compounding", "modes", "tip", "teachers", "verdicts"} <= set(results)
    assert "| experiment | verdict |" in report
    assert [(r["selection"], r["keep_fraction"]) for r in results["tip"]["runs"]] == [
        ("all", 1.0),
        ("top", 0.5),
        ("random", 0.5),
    ]
    assert results["compounding"]["horizons"] == [3, 6] and len(results["compounding"]["runs"][0]["total_errors"]) == 2
    assert len(results["modes"]["runs"]) == 4 and all(
        math.isclose(r["mode_1"] + r["mode_2"] + r["between"], 1.0, abs_tol=1e-5) for r in results["modes"]["runs"]
    )


def test_report_rerenders_from_results_json_without_changing_it(tmp_path):
    """A layout-0 results.json (per-horizon dicts keyed by str(T), stored exponents) renders like the current layout,
    and write_report leaves its input alone."""
    runs = [
        {
            "lmbda": lam,
            "seed": s,
            "total_errors": {"3": 0.1 * (1 + lam), "6": 0.3},
            "sequence_error": {"3": 0.1, "6": 0.2},
        }
        for s in (0, 1)
        for lam in (0.0, 0.5, 1.0)
    ]
    for r in runs:
        r["profile"] = [0.05] * 6
    old = {
        "size": dataclasses.asdict(SIZES["smoke"]),
        "seconds": {"compounding": 1.0},
        "compounding": {
            "T_max": 6,
            "horizons": [3, 6],
            "runs": runs,
            "eps": 1e-3,
            "steps": 4,
            "batch": 8,
            "student": {"hidden_size": 32},
            "exponents": {"0.0": {}},
        },
        "verdicts": {"compounding": {"verdict": "stale"}},
    }
    (tmp_path / "old.json").write_text(json.dumps(old))
    snapshot = json.dumps(old, sort_keys=True)
    assert main(["lab", "--from-results", str(tmp_path / "old.json"), "--output", str(tmp_path / "a")]) == 0
    upgraded = load_results(tmp_path / "old.json")
    assert upgraded["compounding"]["runs"][0]["total_errors"] == [0.1, 0.3] and "verdicts" not in upgraded
    write_report(upgraded, tmp_path / "b")
    assert (tmp_path / "a" / "report.md").read_text() == (tmp_path / "b" / "report.md").read_text()
    assert json.dumps(old, sort_keys=True) == snapshot and "verdicts" not in upgraded
    assert "Command: `trl-opd lab --smoke`" in (tmp_path / "a" / "report.md").read_text()
    assert main(["lab", "--from-results", str(tmp_path / "missing.json"), "--output", str(tmp_path)]) == 2


def test_run_counts_follow_each_experiments_settings():
    quick = SIZES["quick"]
    assert count_runs(quick, ["compounding"]) == 2 * 3 and count_runs(quick, ["ablation"]) == 2 * 9
    assert count_runs(quick, ["modes", "spin"]) == 3 * 4 + 3 * quick.spin_rounds
    # TIP reuses the ablation's all-tokens run when both run
    assert count_runs(quick, ["tip"]) == 2 * 5 and count_runs(quick, ["ablation", "tip"]) == 2 * 9 + 2 * 4
    bigger = dataclasses.replace(quick, seeds=[0, 1, 2], spin_rounds=6)
    assert count_runs(bigger, ["compounding", "spin"]) == 3 * 3 + 3 * 6  # cheap seed 2 is already a seed


def test_lab_rejects_unknown_experiment(tmp_path, capsys):
    assert main(["lab", "--smoke", "--output", str(tmp_path), "--experiments", "nope"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- conclusions
# Each test runs a reduced version of one --quick experiment with the real trainers on a fixed seed (verified to pass;
# the same conclusions held on every seed of the --quick run, see docs/lab.md) and asserts the conclusion the report
# draws from the numbers, so each of them fails if the experiment stops showing it.


@pytest.fixture(scope="module")
def reduced_lab():
    # --quick's teacher and students (the compounding result needs them: with 400 student steps and a 500-step
    # teacher the off-policy student is still poor at the first digits and its exponent falls to ~0.9)
    size = dataclasses.replace(SIZES["quick"], seeds=[0], cheap_seeds=[], samples_per_prompt=16)
    return Lab(size, seed=0)


@pytest.mark.slow
def test_conclusion_modes_fkl_covers_minillm_locks_onto_one_mode(reduced_lab):
    """Bigram student: FKL keeps mass on both modes and most of it between them; MiniLLM keeps one mode."""
    runs = modes.run(reduced_lab, methods=("fkl", "minillm"), seeds=[0])["runs"]
    by = {r["method"]: r for r in runs}
    assert modes.covers([by["fkl"]]), by["fkl"]
    assert modes.one_mode([by["minillm"]]), by["minillm"]
    assert by["fkl"]["between"] > 0.6 and by["minillm"]["between"] < 0.1, by


@pytest.mark.slow
def test_conclusion_off_policy_errors_compound_on_policy_do_not(reduced_lab):
    """Horizons 5-40 (--quick's, λ = 0 and 1 only): off-policy total errors grow super-linearly and faster than
    on-policy ones, and there are more of them at T = 40."""
    res = compounding.run(reduced_lab, lambdas=(0.0, 1.0))
    (off,), (on,) = compounding.exponents(res, 0.0), compounding.exponents(res, 1.0)
    assert off > on + 0.2 and off > 1.15, (off, on)
    at = {r["lmbda"]: r["total_errors"][res["horizons"].index(40)] for r in res["runs"]}
    assert at[1.0] < at[0.0], at


@pytest.mark.slow
def test_conclusion_ablation_lambda_matters_more_than_divergence(reduced_lab):
    res = ablation.run(reduced_lab, lambdas=(0.0, 1.0), divergences=("fkl", "jsd"))
    lam_effect, div_effect = ablation.main_effects(res["runs"])
    assert lam_effect > div_effect + 0.05, (lam_effect, div_effect)


def test_verdicts_are_computed_from_the_numbers():
    assert spin.verdict([0.5, 0.3, 0.29, 0.29]).startswith("agrees")
    assert spin.verdict([0.2, 0.25, 0.21]).startswith("disagrees")


def test_tip_verdict_compares_the_selection_with_all_tokens_and_with_random():
    def tok(top, rnd, full=0.15):
        return {("all", 1.0): full, ("top", 0.5): top, ("random", 0.5): rnd}

    assert tip.verdict(tok(0.16, 0.40)).startswith("agrees")  # close to all, beats random
    # loses little, but so does a random half: the selection carries no extra signal
    assert tip.verdict(tok(0.16, 0.17)).startswith("partly agrees: keeping 50 %")
    assert tip.verdict(tok(0.40, 0.70)).startswith("partly agrees: TIP's top-50 %")
    # the lab's --quick outcome: top half at chance, random half as good as all tokens
    v = tip.verdict(tok(0.74, 0.17), {("all", 1.0): 0.09, ("top", 0.5): 0.37})
    assert v.startswith("disagrees: TIP's top-50 % selection is worse than a random 50 % and than all tokens ("), v
    assert "0.740" in v and "0.170" in v and "0.150" in v and "JSD" in v
    assert tip.verdict(tok(0.74, 0.75)).startswith("disagrees: keeping 50 %")
    # 50 % is judged when present; other fractions with a control only enter the facts
    both = {**tok(0.16, 0.40), ("top", 0.2): 0.8, ("random", 0.2): 0.3}
    assert tip.verdict(both).startswith("agrees") and "at 20 %: top 0.800" in (tip.verdict(both))
    # without the control: against all tokens only; without runs: inconclusive
    assert tip.verdict({("all", 1.0): 0.15, ("top", 0.5): 0.16}).startswith("agrees")
    assert tip.verdict({("all", 1.0): 0.15, ("top", 0.2): 0.6}).startswith("disagrees")
    assert tip.verdict({("all", 1.0): 0.15}).startswith("inconclusive")


@pytest.mark.slow
def test_conclusion_tip_top_half_is_worse_than_a_random_half(reduced_lab):
    """Chain T = 10, GKD λ = 1, JSD, seed 0: keeping a random 50 % of the tokens trains the student (token error
    ≈ 0.17, as with all tokens) while keeping the top 50 % by the tutorial's score leaves it near chance (≈ 0.76)."""
    res = tip.run(reduced_lab, fractions=(0.5,), random_fractions=(0.5,), seeds=[0])
    by = {r["selection"]: r["token_error"] for r in res["runs"]}
    assert set(by) == {"top", "random"}, res["runs"]
    assert by["random"] < 0.35 and by["top"] > by["random"] + 0.3, by


@pytest.mark.slow
def test_conclusion_spin_improves_the_sft_start(reduced_lab):
    """Chain T = 10, seed 1 (the weaker SFT start: token error ≈ 0.28): three SPIN rounds at lr 1e-4 lower the task
    error (≈ 0.20 after round 3); at lr 5e-4 each round moved ~2 nats of KL and the error rose instead."""
    run = spin.run(reduced_lab, seeds=[1], rounds=3)["runs"][0]["rounds"]
    errors = [r["token_error"] for r in run]
    # every round at or below the start, the last clearly below it (at 5e-4: 0.287 -> 0.353, 0.241, 0.315)
    assert len(errors) == 4 and max(errors[1:]) <= errors[0] and errors[-1] < errors[0] - 0.04, errors
