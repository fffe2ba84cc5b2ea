"""Pillow block

A pillow-block bearing housing: a rectangular base with two bolt holes, a pedestal and a round housing carrying a
bearing ring on a shaft. Axes: the shaft runs along Y, X along the base, Z up; the base bottom lies at Z = 0.
Units are millimetres.
"""
import cadquery as cq

centre_height: float = 33.0  # mm, 15..120, Housing, step=0.5: Height of the shaft axis above the base bottom
housing_diameter: float = 64.0  # mm, 30..160, Housing, step=1: Outer diameter of the round housing
housing_width: float = 38.0  # mm, 15..100, Housing, step=1: Width of the housing and base along the shaft (Y)
bearing_od: float = 47.0  # mm, 20..140, Bearing, step=0.5, label=Bearing OD: Outer diameter of the bearing ring
bearing_width: float = 14.0  # mm, 5..60, Bearing, step=0.5: Width of the bearing ring along the shaft
base_length: float = 127.0  # mm, 60..300, Base, step=1: Length of the base along X
base_thickness: float = 14.0  # mm, 5..40, Base, step=0.5: Thickness of the base plate
bolt_spacing: float = 95.0  # mm, 40..260, Base, step=1: Distance between the two bolt hole centres along X
bolt_hole: float = 12.0  # mm, 0..24, Base, step=0.5: Diameter of the bolt holes (0: none)
shaft_diameter: float = 20.0  # mm, 8..60, Shaft, step=0.5: Diameter of the shaft
shaft_length: float = 120.0  # mm, 40..400, Shaft, step=1: Length of the shaft along Y
show_shaft: bool = True  # Shaft, label=Show shaft: Include the shaft

COLOURS = {"housing": (0.30, 0.36, 0.45), "bearing": (0.80, 0.75, 0.40), "shaft": (0.60, 0.62, 0.66)}


def _shaft_diameter(p):
    return min(p.shaft_diameter, p.housing_diameter - 8.0)  # leaves room for a bearing ring and housing wall


def _bearing_od(p):
    return min(max(p.bearing_od, _shaft_diameter(p) + 4.0), p.housing_diameter - 4.0)


def _housing(p):
    radius = p.housing_diameter / 2
    base = cq.Workplane("XY").box(p.base_length, p.housing_width, p.base_thickness, centered=(True, True, False))
    spacing = min(p.bolt_spacing, p.base_length - p.bolt_hole - 2.0)
    if p.bolt_hole > 0.1:
        base = base.cut(cq.Workplane("XY", origin=(0, 0, -1)).pushPoints([(spacing / 2, 0), (-spacing / 2, 0)])
                        .circle(p.bolt_hole / 2).extrude(p.base_thickness + 2))
    ring = cq.Workplane("XZ", origin=(0, 0, p.centre_height)).circle(radius).extrude(p.housing_width / 2, both=True)
    pedestal_top = max(p.centre_height, p.base_thickness / 2 + 1.0)
    pedestal = (cq.Workplane("XY", origin=(0, 0, p.base_thickness / 2))
                .box(p.housing_diameter, p.housing_width, pedestal_top - p.base_thickness / 2,
                     centered=(True, True, False)))
    upper = ring.union(pedestal)
    # Nothing may reach below the base bottom, however low the shaft axis is.
    keep = cq.Workplane("XY").box(4 * radius, 2 * p.housing_width, p.centre_height + radius + 1,
                                  centered=(True, True, False))
    housing = base.union(upper.intersect(keep))
    bore = cq.Workplane("XZ", origin=(0, 0, p.centre_height)).circle(_bearing_od(p) / 2).extrude(p.housing_width,
                                                                                                   both=True)
    return housing.cut(bore)


def _bearing(p):
    width = min(p.bearing_width, p.housing_width)
    outer = cq.Workplane("XZ", origin=(0, 0, p.centre_height)).circle(_bearing_od(p) / 2).extrude(width / 2, both=True)
    inner = (cq.Workplane("XZ", origin=(0, 0, p.centre_height)).circle(_shaft_diameter(p) / 2)
             .extrude(width, both=True))
    return outer.cut(inner)


def _shaft(p):
    return (cq.Workplane("XZ", origin=(0, 0, p.centre_height)).circle(_shaft_diameter(p) / 2)
            .extrude(p.shaft_length / 2, both=True))


def build(p):
    block = cq.Assembly(name="pillow_block")
    block.add(_housing(p), name="housing", color=cq.Color(*COLOURS["housing"]))
    block.add(_bearing(p), name="bearing", color=cq.Color(*COLOURS["bearing"]))
    if p.show_shaft:
        block.add(_shaft(p), name="shaft", color=cq.Color(*COLOURS["shaft"]))
    return block
