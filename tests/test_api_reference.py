"""docs/api.md is what scripts/api_reference.py writes from the code: it fails when a config or a public class changed
and the reference was not regenerated, and when a trl-opd config field has no help."""

import importlib.util
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "api_reference.py"
spec = importlib.util.spec_from_file_location("api_reference", SCRIPT)
api_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api_reference)


def test_the_committed_api_reference_is_current():
    assert api_reference.OUTPUT.read_text() == api_reference.render(), (
        "docs/api.md is stale: run `python scripts/api_reference.py` and commit docs/api.md"
    )


def test_every_trl_opd_config_field_is_listed_with_its_default():
    import dataclasses

    from trl_opd import DistillationConfig, GKDConfig, MiniLLMConfig, SPINConfig

    rows = [line for line in api_reference.OUTPUT.read_text().splitlines() if line.startswith("| `")]
    for cls in (DistillationConfig, GKDConfig, MiniLLMConfig, SPINConfig):
        own = [f for f in dataclasses.fields(cls) if api_reference.owner(cls, f.name).__module__.startswith("trl_opd")]
        assert own
        for field in own:
            name, default = f"`{field.name}`", api_reference.default_text(field)
            assert any(name in row.split(" | ")[0] and default in row.split(" | ")[1] for row in rows), field.name


def test_the_parser_reads_hf_style_entries_and_groups():
    doc = """Intro.

    Parameters:
        > Parameters that control x

        a, b (`int`, *optional*, defaults to `1`):
            First line
            second line.
        c (`str`):
            C.

        `shared`, `names` (see elsewhere).

    > [!NOTE]
    > ignored
    """
    import inspect

    parsed = api_reference._parse_parameters(inspect.cleandoc(doc))
    assert parsed == {
        "a": ("Parameters that control x", "First line second line."),
        "b": ("Parameters that control x", "First line second line."),
        "c": ("Parameters that control x", "C."),
    }


def test_an_undocumented_field_is_refused(monkeypatch):
    import dataclasses

    @dataclasses.dataclass
    class Bare:
        x: int = 1

    Bare.__module__ = "trl_opd.fake"
    monkeypatch.setitem(__import__("sys").modules, "trl_opd.fake", type("M", (), {"Bare": Bare}))
    with pytest.raises(ValueError, match="Bare.x has neither a docstring entry nor metadata help"):
        api_reference.config_section("trl_opd.fake", "Bare")
