"""Every shell and Python block of README.md and docs/ is marked, and the blocks marked runnable run (offline, tiny).

The marker is an HTML comment on the line before the opening fence (blank lines between are allowed):

    <!-- runnable -->   this test runs it: a Python block in-process (its own namespace), a shell block with bash
                        (-e, -o pipefail); both in a scratch folder that links the checkout's top-level folders, so
                        paths like recipes/... and trl_opd/configs/... work and outputs stay in the scratch folder
    <!-- long -->       runs as written but takes minutes (a real training, the lab, the pipeline)
    <!-- gpu -->        needs a GPU (and usually downloads the models)
    <!-- hub -->        downloads from the Hugging Face Hub (your own model or dataset)
    <!-- install -->    installs packages (.ci/run executes the README's test line verbatim)

A block without a language must not hold commands or code: label it ``bash`` or ``python`` and mark it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKERS = ("runnable", "long", "gpu", "hub", "install")
CODE = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "bash"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*([\w-]+)\s*-->\s*$")
LOOKS_LIKE_CODE = re.compile(r"^\s*(\$ |python3? |trl-opd |pip |import |from \w+ import |[A-Z_]+=\S* (python|trl-opd))")
#: Top-level entries of the checkout the scratch folder links (what a snippet may name by a relative path).
LINKED = ("trl_opd", "recipes", "scripts", "examples", "bench", "docs", "tests", "pyproject.toml", "README.md")


def parse(path: Path) -> list[dict]:
    """The fenced blocks of a page: ``{page, line, lang, marker, code}`` (``line``: the opening fence, 1-based)."""
    lines, blocks, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent, start = match["fence"], len(match["indent"]), i
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        body = [line[indent:] for line in lines[start + 1 : i]]
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        page = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        blocks.append({"page": page, "line": start + 1, "lang": match["lang"].lower(), "code": "\n".join(body),
                       "marker": marker[1] if marker else None})  # fmt: skip
        i += 1
    return blocks


BLOCKS = [block for page in PAGES for block in parse(page)]
RUNNABLE = [b for b in BLOCKS if b["marker"] == "runnable"]


def block_id(block: dict) -> str:
    return f"{block['page']}:{block['line']}"


def test_the_parser_finds_the_blocks_and_their_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- gpu -->\n\n```bash\necho hi\n```\n\n```python\nx = 1\n```\n```\nplain\n```\n")
    got = [(b["line"], b["lang"], b["marker"], b["code"]) for b in parse(page)]
    assert got == [(4, "bash", "gpu", "echo hi"), (8, "python", None, "x = 1"), (11, "", None, "plain")]


def test_every_code_block_is_marked():
    unmarked = [f"{block_id(b)} ({b['lang']})" for b in BLOCKS if b["lang"] in CODE and b["marker"] not in MARKERS]
    assert not unmarked, f"mark these blocks with one of <!-- {' | '.join(MARKERS)} -->: {unmarked}"
    odd = [block_id(b) for b in BLOCKS if b["marker"] is not None and b["marker"] not in MARKERS]
    assert not odd, f"unknown snippet markers (use one of {MARKERS}): {odd}"
    plain = [b for b in BLOCKS if not b["lang"]]
    unlabeled = [block_id(b) for b in plain if any(map(LOOKS_LIKE_CODE.match, b["code"].splitlines()))]
    assert not unlabeled, f"blocks without a language that hold commands or code (label and mark them): {unlabeled}"
    labeled_other = [block_id(b) for b in BLOCKS if b["marker"] in MARKERS and b["lang"] not in CODE]
    assert not labeled_other, f"markers on blocks that are not python or bash: {labeled_other}"


def test_the_readme_starts_with_the_main_job_and_the_tests():
    first = parse(ROOT / "README.md")[0]
    assert first["lang"] == "bash" and first["marker"] == "install"
    commands = [line for line in first["code"].splitlines() if line and not line.startswith("#")]
    assert commands[0].endswith("&& trl-opd demo"), "the README's first command runs the main job"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines(), "the README's test command and .ci/run must be the same line"
    python = next(b for b in parse(ROOT / "README.md") if b["lang"] == "python")
    assert python["marker"] == "runnable", "the README's first Python cell must be runnable (and tested here)"


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    for name in LINKED:
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("block", RUNNABLE, ids=block_id)
def test_runnable_block(block, scratch):
    if CODE[block["lang"]] == "python":
        exec(compile(block["code"], block_id(block), "exec"), {"__name__": "__snippet__"})
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block["code"]], cwd=scratch, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, f"{block_id(block)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
