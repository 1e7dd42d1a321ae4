"""Write docs/api.md, the API reference, from the code: every config field with its default and its help, and every
public name of ``trl_opd`` with its signature and docstring.

    python scripts/api_reference.py            # rewrite docs/api.md
    python scripts/api_reference.py --check    # exit 1 if docs/api.md differs from what the code gives

A field's help is its entry in the class's HF-style docstring (``name (`type`, *optional*, defaults to ...):`` under
``Parameters:``), else its ``metadata["help"]``. Fields inherited from TRL or transformers are not repeated: the
reference names the TRL class they come from. tests/test_api_reference.py fails when the committed file is stale.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "api.md"
#: The configs (and the command line's extra keys), in the order the reference lists them.
CONFIGS = (
    ("trl_opd", "DistillationConfig"),
    ("trl_opd", "GKDConfig"),
    ("trl_opd", "MiniLLMConfig"),
    ("trl_opd", "SPINConfig"),
    ("trl_opd.pipeline.commands", "OPDScriptArguments"),
    ("trl_opd.pipeline.commands", "TeacherPathArguments"),
)
ENTRY = re.compile(r"^(?P<names>\w+(?:, \w+)*) \((?P<type>.*)\):$")


def parameter_docs(cls) -> dict[str, tuple[str, str]]:
    """``field name -> (group, help)`` from the ``Parameters:`` sections of ``cls`` and its trl_opd bases, in the
    order a reader meets them: the class's own docstring first, then its bases' (a name keeps its first entry)."""
    docs: dict[str, tuple[str, str]] = {}
    for klass in cls.__mro__:
        if klass.__module__.startswith("trl_opd") and klass.__doc__:
            for name, entry in _parse_parameters(inspect.cleandoc(klass.__doc__)).items():
                docs.setdefault(name, entry)
    return docs


def _parse_parameters(doc: str) -> dict[str, tuple[str, str]]:
    lines = doc.splitlines()
    if "Parameters:" not in lines:
        return {}
    docs, group, names, text = {}, "", [], []

    def flush():
        for name in names:
            docs[name] = (group, " ".join(text))

    for line in lines[lines.index("Parameters:") + 1 :]:
        if line.strip() and not line.startswith("    "):
            break  # the end of the section (e.g. a "> [!NOTE]")
        body = line.strip()
        entry = ENTRY.match(body) if line.startswith("    ") and not line.startswith("     ") else None
        if body.startswith("> "):
            flush()
            group, names, text = body[2:], [], []
        elif entry:
            flush()
            names, text = entry["names"].split(", "), []
        elif body and line.startswith("        ") and names:
            text.append(body)
        elif body:  # a paragraph between entries ends the current entry
            flush()
            names, text = [], []
    flush()
    return docs


def owner(cls, name: str):
    """The class of ``cls``'s MRO that declares the field ``name``."""
    return next(k for k in cls.__mro__ if name in k.__dict__.get("__annotations__", {}))


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "required"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_section(module: str, name: str) -> list[str]:
    import importlib

    cls = getattr(importlib.import_module(module), name)
    docs = parameter_docs(cls)
    doc = inspect.cleandoc(cls.__doc__ or "")
    intro = doc.split("Parameters:")[0].strip()
    trl_bases = [k for k in cls.__mro__[1:] if dataclasses.is_dataclass(k) and not k.__module__.startswith("trl_opd")]
    out = [f"## `{name}`", "", f"`{module}.{name}`", "", intro, ""]
    if trl_bases:
        base = trl_bases[0]
        trl_name = f"{base.__module__.split('.')[0]}.{base.__name__}"
        out += [f"Every field of `{trl_name}` applies as well; below: trl-opd's fields (and TRL's it re-defaults).", ""]
    order = {name: i for i, name in enumerate(docs)}
    fields = [f for f in dataclasses.fields(cls) if owner(cls, f.name).__module__.startswith("trl_opd")]
    entries: list[tuple[str, list, str]] = []  # (group, fields, help): one docstring entry may name several fields
    for field in sorted(fields, key=lambda f: order.get(f.name, len(order))):
        field_group, help_text = docs.get(field.name, ("", field.metadata.get("help", "")))
        if not help_text:
            raise ValueError(f"{name}.{field.name} has neither a docstring entry nor metadata help; document it.")
        if entries and entries[-1][0] == field_group and entries[-1][2] == help_text and field.name in docs:
            entries[-1][1].append(field)
        else:
            entries.append((field_group, [field], help_text))
    rows, group = [], None
    for field_group, group_fields, help_text in entries:
        if field_group != group or not rows:
            group = field_group
            rows += [f"**{group}**", ""] if group else []
            rows += ["| field | default | description |", "|---|---|---|"]
        names = ", ".join(f"`{f.name}`" for f in group_fields)
        defaults = " / ".join(default_text(f) for f in group_fields)
        rows.append(f"| {names} | {cell(defaults)} | {cell(help_text)} |")
        rows.append("")  # closes the table; removed below when the next row continues it
    lines = []
    for line in rows:
        if lines and lines[-1] == "" and line.startswith("| `"):
            lines.pop()
        lines.append(line)
    return out + lines


def public_section() -> list[str]:
    import trl_opd

    out = ["## Public names of `trl_opd`", "", "`from trl_opd import NAME` (loaded on first use).", ""]
    for name in trl_opd.__all__:
        obj = getattr(trl_opd, name)
        try:
            signature = str(inspect.signature(obj))
        except (TypeError, ValueError):
            signature = "(...)"
        kind = "class" if inspect.isclass(obj) else "function"
        out += [f"### `{name}`", "", f"{kind} `{obj.__module__}.{obj.__qualname__}`", ""]
        if ("trl_opd", name) in CONFIGS:
            out += [f"A dataclass: its fields are listed [above](#{name.lower()}).", ""]
            continue
        signature = re.sub(r" at 0x[0-9a-f]+", "", signature)
        doc = re.sub(r"^```python$", "```text", inspect.cleandoc(obj.__doc__ or "(no docstring)"), flags=re.M)
        out += ["```text", f"{name}{signature}", "```", "", doc, ""]
    return out


def render() -> str:
    out = [
        "# API reference",
        "",
        "<!-- Generated by scripts/api_reference.py from the code's docstrings; do not edit by hand: run",
        "     `python scripts/api_reference.py` after changing a config or a public class. -->",
        "",
        "The configs' fields are also the keys of `trl-opd gkd|minillm|spin --config FILE.yaml` and of a pipeline",
        "recipe ([Command line](cli.md)); `OPDScriptArguments` and `TeacherPathArguments` are the command line's extra",
        "keys (data, hooks, verifiers, the teacher of MiniLLM and SPIN). `trl-opd gkd --help` prints the same fields.",
        "The examples inside docstrings are illustrations with placeholder paths; the tested, runnable examples are in",
        "the [README](../README.md) and the guides.",
        "",
    ]
    for module, name in CONFIGS:
        out += config_section(module, name)
    out += public_section()
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run `python scripts/api_reference.py`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
