"""Target fixtures shared by the target and fitting tests."""
import pytest

from cad import export
from cad.build import build_model
from cad.registry import ModelRegistry

# The hidden state the bracket targets are built from: base_length and upright_height moved, the rest at defaults.
BRACKET_HIDDEN = {"base_length": 70.0, "upright_height": 75.0}


@pytest.fixture(scope="session")
def bracket_step(tmp_path_factory):
    """A STEP target of the bracket at BRACKET_HIDDEN (built once per test run)."""
    bracket = ModelRegistry().get("bracket")
    path = tmp_path_factory.mktemp("targets") / "bracket.step"
    path.write_bytes(export.step_bytes(build_model(bracket.path, bracket.schema.complete(BRACKET_HIDDEN)).assembly))
    return path
