"""cad.fit on real models: hidden dimensions recovered from a target's shape through the default schedule."""

from cad.fit import DEFAULT_SCHEDULE, fit
from cad.registry import ModelRegistry
from cad.target import compare_model

BRACKET = ModelRegistry().get("bracket")


def test_fit_recovers_hidden_bracket_dimensions_and_leaves_the_rest_alone(bracket_step):
    # The whole answer, as the web layer passes it: least-squares stages read its residuals, the last its iou.
    objective = lambda values, stage: compare_model(str(BRACKET.path), values, str(bracket_step), method="mesh",
                                                    detail=False, **stage)
    stages_seen = set()
    result = fit(BRACKET.schema, BRACKET.schema.defaults(), objective, max_evaluations=80, schedule=DEFAULT_SCHEDULE,
                 progress=lambda n, iou, stage: stages_seen.add(stage))
    exact = compare_model(str(BRACKET.path), result.values, str(bracket_step))["iou"]
    assert result.start_iou < 0.9 and exact > 0.999
    # Both on the 1 mm step grid, and every other parameter exactly where it was (not 40 -> 40.002).
    assert result.changes() == {"base_length": 70.0, "upright_height": 75.0}
    assert result.evaluations <= 80 and 0 in stages_seen
