"""Rover

A small field rover: a chamfered chassis plate on rows of wheels, with a pan-tilt head on a mast carrying a
U-shaped sensor fork. Axes: X forward, Y left, Z up; the chassis bottom face lies at Z = 0. Units are millimetres.
"""
import cadquery as cq

chassis_length: float = 220.0  # mm, 80..400, Chassis, step=1: Length of the chassis plate along X
chassis_width: float = 140.0  # mm, 60..300, Chassis, step=1: Width of the chassis plate along Y
chassis_thickness: float = 6.0  # mm, 2..20, Chassis, step=0.5: Thickness of the chassis plate
chassis_chamfer: float = 12.0  # mm, 0..40, Chassis, step=0.5: Chamfer on the four vertical corners of the plate
wheel_diameter: float = 80.0  # mm, 40..200, Wheels, step=1: Outer diameter of every wheel
wheel_width: float = 30.0  # mm, 10..80, Wheels, step=1: Tread width of every wheel
wheels_per_side: int = 3  # 1..4, Wheels, label=Wheels per side: Number of wheels on each side of the chassis
axle_spacing: float = 90.0  # mm, 40..200, Wheels, step=1: Distance along X between neighbouring axles
wheel_z_offset: float = 0.0  # mm, -60..60, Wheels, step=1, label=Axle height: Axle height above the chassis bottom
pan_tilt_x: float = 60.0  # mm, -200..200, Pan-tilt head, step=1, label=Head X: Head position along X from centre
pan_tilt_y: float = 0.0  # mm, -150..150, Pan-tilt head, step=1, label=Head Y: Head position along Y from centre
pan_tilt_z: float = 90.0  # mm, 35..250, Pan-tilt head, step=1, label=Head height: Head top above the chassis top
fork_width: float = 50.0  # mm, 20..150, Sensor fork, step=1: Outer width of the fork across its arms (Y)
fork_height: float = 40.0  # mm, 10..120, Sensor fork, step=1: Height of the fork arms including its base
fork_depth: float = 20.0  # mm, 5..80, Sensor fork, step=1: Depth of the fork along X
fork_wall: float = 4.0  # mm, 1..15, Sensor fork, step=0.5: Wall thickness of the fork base and arms
fork_hole_diameter: float = 8.0  # mm, 0..30, Sensor fork, step=0.5, label=Fork hole: Tilt-axle hole through both arms
rover_yaw: float = 0.0  # deg, -180..180, Pose, step=1, label=Yaw: Rotation of the whole rover about Z
show_sensor_fork: bool = True  # Sensor fork, label=Show sensor fork: Mount the sensor fork on the pan-tilt head

WHEEL_GAP = 4.0  # clearance between chassis side and wheel
PAN_BASE_DIAMETER, PAN_BASE_HEIGHT = 40.0, 10.0
HEAD_SIZE, HEAD_HEIGHT, MAST_DIAMETER = 36.0, 20.0, 12.0

COLOURS = {
    "chassis": (0.30, 0.36, 0.45),
    "wheel": (0.32, 0.32, 0.35),
    "pan_tilt_head": (0.93, 0.55, 0.16),
    "sensor_fork": (0.25, 0.62, 0.85),
}


def _chassis(p):
    plate = cq.Workplane("XY").box(p.chassis_length, p.chassis_width, p.chassis_thickness, centered=(True, True, False))
    # A chamfer must leave some flat edge; clamp rather than fail on extreme combinations.
    chamfer = min(p.chassis_chamfer, min(p.chassis_length, p.chassis_width) / 2 - 1.0)
    if chamfer > 0.05:
        plate = plate.edges("|Z").chamfer(chamfer)
    return plate


def _wheel(p, outward: float):
    """A wheel centred at the origin, axis along Y, hub boss on the side ``outward`` (+1 or -1) points to."""
    radius, width = p.wheel_diameter / 2, p.wheel_width
    tyre = cq.Workplane("XZ").circle(radius).extrude(width / 2, both=True)
    hub_radius, hub_length = radius * 0.35, width * 0.25
    hub = (cq.Workplane("XZ", origin=(0, outward * width / 2, 0)).circle(hub_radius)
           .extrude(-outward * hub_length))
    axle_hole = cq.Workplane("XZ").circle(min(3.0, hub_radius / 2)).extrude(width, both=True)
    return tyre.union(hub).cut(axle_hole)


def _pan_tilt_head(p):
    top = p.chassis_thickness + p.pan_tilt_z
    base = cq.Workplane("XY", origin=(0, 0, p.chassis_thickness)).circle(PAN_BASE_DIAMETER / 2).extrude(PAN_BASE_HEIGHT)
    mast_bottom = p.chassis_thickness + PAN_BASE_HEIGHT
    mast = (cq.Workplane("XY", origin=(0, 0, mast_bottom)).circle(MAST_DIAMETER / 2)
            .extrude(max(top - HEAD_HEIGHT - mast_bottom, 1.0)))
    head = cq.Workplane("XY", origin=(0, 0, top - HEAD_HEIGHT)).box(HEAD_SIZE, HEAD_SIZE, HEAD_HEIGHT,
                                                                   centered=(True, True, False))
    return base.union(mast).union(head).translate((p.pan_tilt_x, p.pan_tilt_y, 0))


def _sensor_fork(p):
    z0 = p.chassis_thickness + p.pan_tilt_z
    width, height, depth = p.fork_width, p.fork_height, p.fork_depth
    wall = min(p.fork_wall, height / 2, width / 4)
    base = cq.Workplane("XY", origin=(0, 0, z0)).box(depth, width, wall, centered=(True, True, False))
    arm_y = width / 2 - wall / 2
    arms = (cq.Workplane("XY", origin=(0, 0, z0)).pushPoints([(0, arm_y), (0, -arm_y)])
            .box(depth, wall, height, centered=(True, True, False)))
    fork = base.union(arms)
    hole = min(p.fork_hole_diameter, depth - 1.0, height - wall - 1.0)
    if hole > 0.1:
        hole_z = z0 + wall + (height - wall) / 2
        fork = fork.cut(cq.Workplane("XZ", origin=(0, 0, hole_z)).circle(hole / 2).extrude(width, both=True))
    return fork.translate((p.pan_tilt_x, p.pan_tilt_y, 0))


def build(p):
    yaw = cq.Location(cq.Vector(0, 0, 0), cq.Vector(0, 0, 1), p.rover_yaw)
    rover = cq.Assembly(name="rover", loc=yaw)
    rover.add(_chassis(p), name="chassis", color=cq.Color(*COLOURS["chassis"]))
    wheel_y = p.chassis_width / 2 + WHEEL_GAP + p.wheel_width / 2
    left, right = _wheel(p, +1), _wheel(p, -1)
    for index in range(p.wheels_per_side):
        x = ((p.wheels_per_side - 1) / 2 - index) * p.axle_spacing  # wheel 1 is the front one
        for side, y, shape in (("l", wheel_y, left), ("r", -wheel_y, right)):
            rover.add(shape, name=f"wheel_{side}{index + 1}", loc=cq.Location(cq.Vector(x, y, p.wheel_z_offset)),
                      color=cq.Color(*COLOURS["wheel"]))
    rover.add(_pan_tilt_head(p), name="pan_tilt_head", color=cq.Color(*COLOURS["pan_tilt_head"]))
    if p.show_sensor_fork:
        rover.add(_sensor_fork(p), name="sensor_fork", color=cq.Color(*COLOURS["sensor_fork"]))
    return rover
