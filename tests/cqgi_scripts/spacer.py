"""Spacer

A round spacer; build(p) returns a plain Workplane and the parameters carry no schema comment.
"""
import cadquery as cq

outer_diameter: float = 12.0
inner_diameter = 6.5
length = 8
chamfer = 0.0
wall = outer_diameter - inner_diameter  # derived: follows the parameters


def build(p):
    body = cq.Workplane("XY").circle(p.outer_diameter / 2).circle(p.inner_diameter / 2).extrude(p.length)
    if p.chamfer > 0 and p.chamfer < p.wall / 2:
        body = body.faces(">Z").edges().chamfer(p.chamfer)
    return body
