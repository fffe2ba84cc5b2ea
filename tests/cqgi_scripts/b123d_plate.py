"""Plate (build123d)

A build123d script in the show_object style: a plate with a through hole and a separate pin.
"""
from build123d import Box, BuildPart, Cylinder, Mode, Pos

length = 40.0
width = 20.0
thickness = 5.0
hole_radius = 3.0

with BuildPart() as plate:
    Box(length, width, thickness)
    Cylinder(hole_radius, thickness * 2, mode=Mode.SUBTRACT)

pin = Pos(length, 0, 0) * Cylinder(hole_radius * 0.9, thickness * 3)

show_object(plate, name="plate", options={"color": "orange"})
show_object(pin, name="pin")
