"""The suite runs on the pinned float path (tests/conftest.py), and the pin's own rules."""

import os
import subprocess
import sys

import pytest

from trl_opd import float_path as fp


def test_the_suite_runs_on_the_float_path_its_environment_asks_for(pytestconfig):
    """The guard: conftest pinned the path before torch loaded, and torch dispatches to the kernels the environment
    names. Fails when a pytest plugin or an earlier import loaded torch first (the pin then cannot take effect)."""
    assert not pytestconfig.torch_loaded_before_pin, (
        "torch was imported before tests/conftest.py could pin the float path (a pytest plugin?): the suite runs on "
        "this machine's native kernels and its numbers differ between processors. Find the import with "
        "`python -X importtime -m pytest --co -q 2>&1 | grep torch`."
    )
    path = fp.check_float_path()
    if fp.cpu_has_avx2() and all(os.environ.get(k) == v for k, v in fp.PINNED.items()):
        assert path["pinned"] and path["torch_cpu_capability"] == "AVX2", path


def test_pin_sets_only_what_is_unset_and_reports_it(monkeypatch):
    monkeypatch.setattr(fp, "cpu_has_avx2", lambda: True)
    env = {"MKL_CBWR": "COMPATIBLE"}
    assert fp.pin_float_path(env) == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "OMP_NUM_THREADS": "1",
    }
    assert env["MKL_CBWR"] == "COMPATIBLE" and not fp.is_pinned(env)
    assert fp.pin_float_path(env) == {}  # idempotent
    # no AVX2 (ARM, an old x86): only the thread count is pinned
    monkeypatch.setattr(fp, "cpu_has_avx2", lambda: False)
    bare = {}
    assert fp.pin_float_path(bare) == {"OMP_NUM_THREADS": "1"} and bare == {"OMP_NUM_THREADS": "1"}


def test_pin_after_torch_is_refused_naming_the_fix(monkeypatch):
    assert "torch" in sys.modules  # conftest imported it
    assert fp.pin_float_path() == {}  # every variable already set: nothing to change, nothing to refuse
    monkeypatch.setattr(fp, "cpu_has_avx2", lambda: True)
    monkeypatch.delenv("MKL_CBWR")
    with pytest.raises(fp.FloatPathError, match="before anything imports torch.*export MKL_CBWR=AVX2 yourself"):
        fp.pin_float_path()
    assert "MKL_CBWR" not in os.environ  # nothing half-set


def _capability_in_a_fresh_process(env_updates: dict) -> str:
    code = "from trl_opd import float_path as fp\nfp.pin_float_path()\nimport torch\n"
    code += "print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k not in fp.PINNED}
    env.update(env_updates)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not fp.cpu_has_avx2(), reason="an x86-64 CPU with AVX2 is needed to pin the AVX2 path")
def test_the_pin_reaches_torch_and_an_explicit_variable_wins():
    assert _capability_in_a_fresh_process({}) == "AVX2"
    assert _capability_in_a_fresh_process({"ATEN_CPU_CAPABILITY": "default"}) == "DEFAULT"


def test_describe_names_the_path():
    path = {"variables": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": None}, "torch_cpu_capability": "AVX2"}
    assert fp.describe({**path, "pinned": True}) == "pinned float path (AVX2 kernels; ATEN_CPU_CAPABILITY=avx2)"
    assert fp.describe({**path, "pinned": False}).startswith("native float path")
    assert fp.describe(None) == "float path not recorded"
