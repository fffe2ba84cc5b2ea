"""Size and volume of a built model, measured on its B-rep (used by cad.build's "measure" artifact and by
cad.target's comparison): the before/after figures of a proposal preview are the numbers the target panel shows."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def model_volume(built) -> tuple[float, str]:
    """(volume in mm^3, how): of the union of the parts ("union", as cad.target's exact IoU fuses them), or the sum
    of the part volumes ("sum of parts") where OCC's boolean fails."""
    from cad.target import _fused_model

    try:
        return float(_fused_model(built).Volume()), "union"
    except Exception as exc:  # OCC booleans can fail on awkward geometry; parts that overlap count twice then
        log.info("union of the parts failed (%s); volume is the sum of the parts", exc)
        return float(sum(p.shape.Volume() for p in built.parts)), "sum of parts"


def summary(built) -> dict:
    """{"min", "max", "size" (the whole model's exact bounding box, mm), "volume" (mm^3), "volume_method",
    "units": "mm"}."""
    measured = built.measurements()
    volume, method = model_volume(built)
    return {"min": measured["min"], "max": measured["max"], "size": measured["size"], "volume": volume,
            "volume_method": method, "units": measured["units"]}
