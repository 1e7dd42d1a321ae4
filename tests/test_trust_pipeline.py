"""Issue 22: the pipeline and the training commands never write outside their folders, never mix two runs, and
refuse a recipe that would fail later, before anything trains."""

import pytest
import yaml
from cli_assets import write_assets
from test_pipeline import recipe

from trl_opd.cli import main
from trl_opd.pipeline import RecipeError, load_recipe


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("trust_assets"))


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "-x", "summary.json", "a/b"])
def test_a_stage_name_cannot_leave_the_pipeline_folder(assets, tmp_path, name, capsys):
    keys = recipe(assets, tmp_path / "run", stages=[{"name": name, "trainer": "gkd", "budget": 1.0}])
    with pytest.raises(RecipeError, match="name must be a folder name inside output_dir"):
        load_recipe(keys)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(keys))
    assert main(["pipeline", str(path), "--check"]) == 2
    assert "name must be a folder name inside output_dir" in capsys.readouterr().err
