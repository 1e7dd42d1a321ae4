"""Shared fixtures: the tiny tasks' tokenizer and dataset; one float path, single-threaded torch, offline Hub, silent
TRL.

The float path is pinned before torch loads (:mod:`trl_opd.float_path`: AVX2 kernels, MKL_CBWR=AVX2, oneDNN AVX2, one
thread), so a test that asserts numbers from a training run asserts the same numbers on every x86-64 CPU with AVX2.
Variables already set are kept: export ``ATEN_CPU_CAPABILITY=default`` (say) to run the suite on another path on
purpose. ``tests/test_float_path.py`` checks that the pin took effect.
"""

import os
import sys


TORCH_LOADED_BEFORE_PIN = "torch" in sys.modules  # tests/test_float_path.py reads it from pytest's config
if not TORCH_LOADED_BEFORE_PIN:
    from trl_opd.float_path import pin_float_path

    pin_float_path()
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from trl_opd.tiny import addition_dataset, char_tokenizer  # noqa: E402


torch.set_num_threads(1)


def pytest_configure(config):
    """Hand the pin's outcome to tests/test_float_path.py through the config: ``import conftest`` there would find
    whichever ``conftest`` module loaded last (tests/with_vllm has its own)."""
    config.torch_loaded_before_pin = TORCH_LOADED_BEFORE_PIN


@pytest.fixture(scope="session")
def tok():
    """The character-level tokenizer of the tiny tasks (49 tokens, left padding, a chat template)."""
    return char_tokenizer()


@pytest.fixture(scope="session")
def dataset():
    """100 rows ``{"prompt": "a+b=", "completion": "c"}``; modules may override it with their own variant."""
    return addition_dataset()


@pytest.fixture(scope="module")
def make_gkd_config(tmp_path_factory):
    """``make_gkd_config(**fields)``: a CPU GKDConfig in a temporary folder."""
    from trl_opd import GKDConfig

    output_dir = str(tmp_path_factory.mktemp("gkd_config"))

    def make(**kwargs):
        return GKDConfig(output_dir=output_dir, bf16=False, use_cpu=True, report_to=[], **kwargs)

    return make
