"""Angle bracket

An L-shaped mounting bracket: a base leg and an upright leg of one thickness joined by an inner fillet, a
triangular gusset along each side edge, and a row of mounting holes along the middle of each leg. Axes: X along
the base leg, Y across the bracket, Z up; the base bottom lies at Z = 0 and the upright's back face at X = 0.
Units are millimetres.
"""
import cadquery as cq

base_length: float = 80.0  # mm, 30..200, Legs, step=1: Length of the base leg along X, back face included
upright_height: float = 60.0  # mm, 20..200, Legs, step=1: Height of the upright leg along Z, base included
width: float = 40.0  # mm, 15..120, Legs, step=1: Width of the bracket along Y
thickness: float = 5.0  # mm, 2..15, Legs, step=0.5: Thickness of both legs
inner_fillet: float = 4.0  # mm, 0..15, Legs, step=0.5: Radius of the fillet in the inner corner of the L
hole_diameter: float = 6.0  # mm, 0..16, Holes, step=0.5: Diameter of the mounting holes (0: none)
holes_per_leg: int = 2  # 1..4, Holes, label=Holes per leg: Number of mounting holes in each leg
hole_edge_distance: float = 12.0  # mm, 5..40, Holes, step=0.5: Distance from a leg's free end to its last hole
gusset_thickness: float = 5.0  # mm, 0..15, Gussets, step=0.5: Thickness of each side gusset (0: none)
gusset_size: float = 30.0  # mm, 10..150, Gussets, step=1: Length of the gusset's two legs from the inner corner

COLOUR = (0.55, 0.58, 0.62)


def _profile(p):
    t, length, height = p.thickness, p.base_length, p.upright_height
    points = [(0, 0), (length, 0), (length, t), (t, t), (t, height), (0, height)]
    body = cq.Workplane("XZ").polyline(points).close().extrude(p.width / 2, both=True)
    fillet = min(p.inner_fillet, length - t - 1.0, height - t - 1.0)
    if fillet > 0.05:
        body = body.edges(cq.selectors.NearestToPointSelector((t, 0, t))).fillet(fillet)
    return body


def _gussets(p):
    t = p.thickness
    thickness = min(p.gusset_thickness, p.width / 4)
    size = min(p.gusset_size, p.base_length - t, p.upright_height - t)
    if thickness < 0.05 or size < 1.0:
        return None
    triangle = [(t - 0.01, t - 0.01), (t + size, t - 0.01), (t - 0.01, t + size)]
    gussets = None
    for side in (+1, -1):
        y = side * (p.width / 2 - thickness / 2)
        plate = cq.Workplane("XZ", origin=(0, y, 0)).polyline(triangle).close().extrude(thickness / 2, both=True)
        gussets = plate if gussets is None else gussets.union(plate)
    return gussets


def _hole_positions(p, leg_length):
    """Distances from the inner corner's back face along a leg, last hole ``hole_edge_distance`` from the end."""
    first = p.thickness + p.inner_fillet + p.hole_diameter / 2 + 1.0
    last = max(leg_length - p.hole_edge_distance, first)
    if p.holes_per_leg == 1:
        return [last]
    pitch = (last - first) / (p.holes_per_leg - 1)
    return [first + i * pitch for i in range(p.holes_per_leg)]


def build(p):
    bracket = _profile(p)
    gussets = _gussets(p)
    if gussets is not None:
        bracket = bracket.union(gussets)
    hole = min(p.hole_diameter, p.width / 2)
    if hole > 0.1:
        base_holes = (cq.Workplane("XY", origin=(0, 0, -1)).pushPoints([(x, 0) for x in _hole_positions(p, p.base_length)])
                      .circle(hole / 2).extrude(p.thickness + 2))
        upright_holes = (cq.Workplane("YZ", origin=(-1, 0, 0))
                         .pushPoints([(0, z) for z in _hole_positions(p, p.upright_height)])
                         .circle(hole / 2).extrude(p.thickness + 2))
        bracket = bracket.cut(base_holes).cut(upright_holes)
    assembly = cq.Assembly(name="angle_bracket")
    assembly.add(bracket, name="bracket", color=cq.Color(*COLOUR))
    return assembly
