"""The vLLM tests: they run in a venv of their own (vLLM caps transformers; docs/teacher.md has the recipe) and skip
cleanly where vLLM is not installed. ``.ci/run`` runs them after the main suite.

Fixtures shared by the vLLM tests: the run-time environment vLLM's CPU build needs, tiny models saved to folders (vLLM
loads from a folder; its CPU attention needs a head size >= 32, so hidden 64 with 2 heads), and one vLLM teacher server
on loopback per session, started bounded in time and stopped by its PID.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


#: Each test module starts with ``pytest.importorskip("vllm", reason=NO_VLLM)``, so the main suite reports them skipped.
NO_VLLM = "vLLM is not installed (the vLLM tests run in their own venv: docs/teacher.md)"

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model in the colocate tests

#: How long a vLLM server may take to become healthy before the test fails (an engine starts in 45-90 s on CPU).
SERVER_START_TIMEOUT_S = 300


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/with_vllm/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tok):
    """``{"student": folder, "teacher": folder}``: tiny Llamas (hidden 64, 2 heads) with the character tokenizer."""
    from trl_opd.tiny import tiny_llama

    root = tmp_path_factory.mktemp("vllm_models")
    folders = {}
    for name, seed in (("student", 1), ("teacher", 2)):
        model = tiny_llama(len(tok), hidden_size=64, num_heads=2, seed=seed, tokenizer=tok)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        folders[name] = str(root / name)
    return folders


@pytest.fixture(scope="session", autouse=True)
def shared_colocated_engines():
    """One colocated vLLM engine per distinct set of ``vllm.LLM`` arguments for the whole session: TRL's
    ``VLLMGeneration`` builds one per trainer (45-90 s each on CPU), and a trainer syncs its weights into the engine
    before its first generation, so trainers on the same model folder, dtype and context can share one. Yields the
    ``{arguments: engine}`` cache."""
    from trl.generation import vllm_generation

    engines = {}
    build = vllm_generation.LLM

    def cached(**kwargs):
        key = repr(sorted(kwargs.items()))
        if key not in engines:
            engines[key] = build(**kwargs)
        return engines[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vllm_generation, "LLM", cached)
        yield engines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def teacher_server(model_dirs, tmp_path_factory):
    """The base address of a vLLM OpenAI-compatible server serving the tiny teacher in float32 on 127.0.0.1."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dirs["teacher"],
        "--served-model-name", "tiny-teacher", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-logprobs", "20", "--max-model-len", "256",
    ]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"The vLLM server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"The vLLM server was not healthy after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
                    )
                time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its engine core is a child in the same session
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
