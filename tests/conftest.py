"""Shared fixtures: the tiny tasks' tokenizer and dataset; single-threaded torch, offline Hub, silent TRL."""

import os


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from trl_opd.tiny import addition_dataset, char_tokenizer  # noqa: E402


torch.set_num_threads(1)


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
