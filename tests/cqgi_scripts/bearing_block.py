"""Bearing block

CQ-editor's classic example as a CQGI script: a block with a bearing bore and four counterbored holes.
"""
import cadquery as cq

height = 60.0
width = 80.0
thickness = 10.0
diameter = 22.0
padding = 12.0

describe_parameter(height, "Height of the block")
describe_parameter("diameter", "Diameter of the bearing bore")

result = (
    cq.Workplane("XY")
    .box(height, width, thickness)
    .faces(">Z")
    .workplane()
    .hole(diameter)
    .faces(">Z")
    .workplane()
    .rect(height - padding, width - padding, forConstruction=True)
    .vertices()
    .cboreHole(2.4, 4.4, 2.1)
)
debug(result.faces(">Z"))
show_object(result)
