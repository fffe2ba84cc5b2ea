"""Size and volume of a built model, measured on its B-rep (used by cad.build's "measure" artifact): the
before/after figures of a proposal preview are the numbers the target panel shows (cad.target.model_volume)."""
from __future__ import annotations


def summary(built) -> dict:
    """{"min", "max", "size" (the whole model's exact bounding box, mm), "volume" (mm^3), "volume_method",
    "units": "mm"}."""
    from cad.target import model_volume

    measured = built.measurements()
    volume, method = model_volume(built)
    return {"min": measured["min"], "max": measured["max"], "size": measured["size"], "volume": volume,
            "volume_method": method, "units": measured["units"]}
