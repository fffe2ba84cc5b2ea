"""Parametric CAD models (CadQuery scripts), their parameter schema, building, export and headless rendering.

Importing ``cad``, ``cad.schema``, ``cad.script``, ``cad.registry`` or ``cad.build`` never imports cadquery; geometry
work imports it lazily. This package never imports ``vlm`` or flask.
"""
