"""Enclosure with lid

A rectangular electronics enclosure: an open-top box with rounded vertical corners, a screw boss in each inner
corner and vent slots in the front wall, closed by a lid with a locating lip and screw holes. Axes: X along the
length, Y along the width (the front wall faces -Y), Z up; the box bottom lies at Z = 0. Units are millimetres.
"""
import cadquery as cq

length: float = 120.0  # mm, 60..300, Box, step=1: Outer length of the box along X
width: float = 80.0  # mm, 40..200, Box, step=1: Outer width of the box along Y
height: float = 50.0  # mm, 20..150, Box, step=1: Outer height of the box without the lid
wall: float = 2.5  # mm, 1..8, Box, step=0.1: Thickness of the side walls
floor: float = 3.0  # mm, 1..10, Box, step=0.1, label=Floor thickness: Thickness of the box floor
corner_radius: float = 6.0  # mm, 0..20, Box, step=0.5: Radius of the four vertical outer corners
boss_diameter: float = 8.0  # mm, 4..16, Screw bosses, step=0.5: Outer diameter of the corner screw bosses
screw_hole: float = 3.0  # mm, 0..6, Screw bosses, step=0.1: Screw hole diameter in the bosses and the lid (0: none)
vent_slots: int = 4  # 0..12, Vents, label=Vent slots: Number of vertical vent slots in the front wall
vent_width: float = 3.0  # mm, 1..8, Vents, step=0.5: Width of each vent slot along X
lid_thickness: float = 3.0  # mm, 1..10, Lid, step=0.1: Thickness of the lid plate
lid_lip: float = 4.0  # mm, 0..15, Lid, step=0.5: Depth of the lip that locates the lid inside the walls (0: none)
lid_lift: float = 0.0  # mm, 0..100, Lid, step=1: Gap between the box top and the lid (exploded view)
show_lid: bool = True  # Lid, label=Show lid: Include the lid

LIP_CLEARANCE, LIP_WALL = 0.3, 1.5
COLOURS = {"box": (0.30, 0.36, 0.45), "lid": (0.25, 0.62, 0.85)}


def _rounded_plate(length, width, thickness, radius, z0=0.0):
    plate = cq.Workplane("XY", origin=(0, 0, z0)).box(length, width, thickness, centered=(True, True, False))
    radius = min(radius, min(length, width) / 2 - 0.5)
    return plate.edges("|Z").fillet(radius) if radius > 0.05 else plate


def _rounded_face(length, width, radius):
    """A rectangle with rounded corners in the XY plane (2D work is much cheaper than 3D fillets and booleans)."""
    radius = min(radius, min(length, width) / 2 - 0.5)
    sketch = cq.Sketch().rect(length, width)
    if radius > 0.05:
        sketch = sketch.vertices().fillet(radius)
    return sketch._faces.Faces()[0]


def _prism(face, z0, height):
    return cq.Solid.extrudeLinear(face, cq.Vector(0, 0, height)).moved(cq.Location(cq.Vector(0, 0, z0)))


def _boss_points(p):
    inset = p.wall + p.boss_diameter / 2
    dx, dy = p.length / 2 - inset, p.width / 2 - inset
    return [(dx, dy), (-dx, dy), (dx, -dy), (-dx, -dy)]


def _hole_diameter(p):
    return min(p.screw_hole, p.boss_diameter - 2.0)


def _box(p):
    radius = min(p.corner_radius, min(p.length, p.width) / 2 - 1.0)
    outline = _rounded_face(p.length, p.width, radius)
    cavity = _rounded_face(p.length - 2 * p.wall, p.width - 2 * p.wall, radius - p.wall)
    walls = _prism(outline.cut(cavity).Faces()[0], p.floor, p.height - p.floor)
    floor = _prism(outline, 0.0, p.floor)
    boss_top = max(p.height - p.lid_lip - LIP_CLEARANCE, p.floor + 1.0)
    hole = _hole_diameter(p)
    bosses = []
    for x, y in _boss_points(p):
        centre = cq.Vector(x, y, 0)
        outer = cq.Wire.makeCircle(p.boss_diameter / 2, centre, cq.Vector(0, 0, 1))
        inner = [cq.Wire.makeCircle(hole / 2, centre, cq.Vector(0, 0, 1))] if hole > 0.1 else []
        bosses.append(_prism(cq.Face.makeFromWires(outer, inner), p.floor, boss_top - p.floor))
    body = walls.fuse(floor, *bosses).clean()
    pitch = 2.5 * p.vent_width
    usable = p.length - 2 * (radius + p.boss_diameter + p.wall)
    slots = min(p.vent_slots, int(usable // pitch))
    if slots > 0:
        slot_height = (p.height - p.floor) * 0.5
        z0 = p.floor + (p.height - p.floor) / 2 - slot_height / 2
        cutters = [cq.Solid.makeBox(p.vent_width, 3 * p.wall, slot_height,
                                    cq.Vector((i - (slots - 1) / 2) * pitch - p.vent_width / 2,
                                              -p.width / 2 - 1.5 * p.wall, z0)) for i in range(slots)]
        body = body.cut(*cutters).clean()
    return body


def _lid(p):
    z0 = p.height + p.lid_lift
    radius = min(p.corner_radius, min(p.length, p.width) / 2 - 1.0)
    lid = _rounded_plate(p.length, p.width, p.lid_thickness, radius, z0=z0)
    if p.lid_lip > 0.05:
        outer_l = p.length - 2 * (p.wall + LIP_CLEARANCE)
        outer_w = p.width - 2 * (p.wall + LIP_CLEARANCE)
        lip = (cq.Workplane("XY", origin=(0, 0, z0 - p.lid_lip)).rect(outer_l, outer_w)
               .rect(outer_l - 2 * LIP_WALL, outer_w - 2 * LIP_WALL).extrude(p.lid_lip))
        lid = lid.union(lip)
    hole = _hole_diameter(p)
    if hole > 0.1:
        lid = lid.cut(cq.Workplane("XY", origin=(0, 0, z0 - p.lid_lip - 1)).pushPoints(_boss_points(p))
                      .circle(hole / 2).extrude(p.lid_lip + p.lid_thickness + 2))
    return lid


def build(p):
    enclosure = cq.Assembly(name="enclosure")
    enclosure.add(_box(p), name="box", color=cq.Color(*COLOURS["box"]))
    if p.show_lid:
        enclosure.add(_lid(p), name="lid", color=cq.Color(*COLOURS["lid"]))
    return enclosure
