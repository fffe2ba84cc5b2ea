"""Caster

A wheel in a fork, shown as one cadquery Assembly.
"""
import cadquery as cq

wheel_diameter = 50.0
wheel_width = 20.0
fork_gap = 4.0

wheel = cq.Workplane("XZ").circle(wheel_diameter / 2).extrude(wheel_width / 2, both=True)
plate = cq.Workplane("XY").box(8.0, wheel_width + 2 * fork_gap + 8.0, 4.0)
fork = cq.Assembly(name="caster")
fork.add(wheel, name="wheel", color=cq.Color("black"))
fork.add(plate, name="plate", loc=cq.Location((0, 0, wheel_diameter / 2 + 6)), color=cq.Color("gray"))
show_object(fork)
