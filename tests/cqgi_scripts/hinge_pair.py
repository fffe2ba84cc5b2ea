"""Hinge pair

Two leaves of a hinge shown as separate parts, with defaults written as arithmetic.
"""
import cadquery as cq

box_length: float = 40.0
box_width = 1.5 / 2 * 40
leaf_thickness = 0.06256 * 2 * 16
offset = -3
knuckles: int = 2 ** 3 // 4
extrude: float = box_length
half = box_length / 2
_gap = 0.5

leaf = cq.Workplane("XY").box(half, box_width, leaf_thickness)
left = leaf.translate((-half / 2 - _gap, 0, 0))
right = leaf.translate((half / 2 + _gap, 0, offset))
pin = cq.Workplane("YZ").circle(leaf_thickness).extrude(extrude / 2, both=True)

show_object(left, name="left_leaf", options={"color": "steelblue"})
show_object(right, name="right_leaf", options={"color": (0.8, 0.5, 0.2), "alpha": 0.5})
show_object(pin)
