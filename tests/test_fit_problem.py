"""cad.fit.problem: parameters in unit positions, rounding relative to each parameter, the counted objective."""
import subprocess
import sys
import threading

import pytest

from cad.fit.problem import Counter, OutOfBudget, Problem
from cad.schema import Parameter, Schema


def number(name, low, high, default, step=None, kind="float"):
    return Parameter(name, name, "mm", kind, low, high, step, default, "g", "")


def test_unstepped_floats_snap_to_a_share_of_their_range_at_any_scale():
    # The scale bug: rounding to 0.001 model units left a 0.0055..0.0166 range with 12 reachable values.
    for scale in (0.01, 1.0, 100.0):
        schema = Schema([number("wall", 0.55 * scale, 1.66 * scale, 1.0 * scale)])
        problem = Problem(schema, schema.defaults())
        reachable = {problem.to_values((i / 5000,))["wall"] for i in range(5001)}
        assert len(reachable) > 5000 * 0.9
        assert problem.snap((0.123456789,))[0] == pytest.approx(0.123456789, abs=1e-4)


def test_stepped_floats_search_a_hundredth_of_their_step_and_move_onto_it_through_the_start():
    schema = Schema([number("length", 30, 200, 80.0, step=0.5), number("count", 1, 9, 3, kind="int"),
                     Parameter("flag", "flag", "", "bool", None, None, None, True, "g", "")])
    problem = Problem(schema, schema.defaults())
    assert problem.names == ["length", "count"]  # bools are fixed
    for u in (0.0, 0.1234, 0.5, 0.98765, 1.0, 1.5, -0.2):
        values = problem.to_values((u, u))
        assert (values["length"] * 200).is_integer() and 30 <= values["length"] <= 200
        assert isinstance(values["count"], int) and 1 <= values["count"] <= 9
        assert values["flag"] is True
        on_steps = problem.to_values(problem.on_steps((u, u), [0]))
        assert (on_steps["length"] * 2).is_integer() and on_steps["count"] == values["count"]
    # A start off the grid (typed by hand) is kept exactly, and the step grid keeps its offset.
    off_grid = Problem(schema, {"length": 80.3})
    assert off_grid.to_values(off_grid.start_u)["length"] == 80.3
    moved = (off_grid.start_u[0] + 0.01, 0.25)  # 1.7 mm
    assert off_grid.to_values(moved)["length"] == 82.0
    assert off_grid.to_values(off_grid.on_steps(moved, [0]))["length"] == 81.8  # three half steps


def test_unknown_or_non_numeric_parameters_are_refused():
    schema = Schema([number("length", 30, 200, 80.0), Parameter("flag", "flag", "", "bool", None, None, None,
                                                                 True, "g", "")])
    with pytest.raises(ValueError, match="flag"):
        Problem(schema, {}, parameters=["flag"])


def test_counter_budget_nested_allowance_and_cancel():
    counter = Counter(5)
    with counter.allowance(2):
        counter.charge(), counter.charge()
        with pytest.raises(OutOfBudget):
            counter.charge()
        assert not counter.exhausted
    counter.charge(), counter.charge(), counter.charge()
    with pytest.raises(OutOfBudget):
        counter.charge()
    assert counter.spent and counter.evaluations == 5
    cancel = threading.Event()
    cancelled = Counter(5, cancel)
    cancel.set()
    with pytest.raises(OutOfBudget):
        cancelled.charge()
    assert cancelled.cancelled and cancelled.evaluations == 0


def test_importing_cad_fit_does_not_import_numpy_or_scipy():
    # The web process imports it at start; numpy and scipy load with the solver that needs them.
    code = "import sys, cad.fit; print(sorted(m for m in ('numpy', 'scipy', 'cadquery') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
