"""The optimiser's least-squares view of a model against a target: residual vectors of fixed length.

``occupancy_residuals`` compares the whole shape (blurred occupancy fields, or cumulative volume profiles). Where
the target is an assembly whose solids carry names (a STEP written by optim or by any CAD tool that names its
parts) and the model has parts of the same names, every such part adds its own block, on a grid fitted to that
part of the target: a 40 mm pan-tilt head on a 300 mm rover is then as visible to the fit as the chassis, instead
of 1 % of the whole field. Runs in the build worker (numpy, cadquery through the built model).
"""
from __future__ import annotations

import numpy as np

BOX_WEIGHT = 2.0  # of the bounding-box terms among the cumulative profiles' residuals
FIELD_MARGIN = 0.25  # the residual grid covers the target's box grown by this share of its size on every side
SIZE_FLOOR = 1e-6  # relative to the target's diagonal: the thickness a flat target's box is given
PART_RESOLUTION = 32  # voxels along a part grid's longest side, at most (the whole shape keeps its own)
PARTS_SHARE = 0.5  # of the squared residual (and of the score) that the parts' blocks carry together
ABSENT_LOG_RATIO = -3.0  # the volume term of a target part the model does not have (log of a zero mass otherwise)


def model_mesh(meshes) -> tuple:
    """(vertices, triangles) of several PartMesh in one array pair."""
    meshes = [m for m in meshes if len(m.triangles)]
    if not meshes:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return (np.concatenate([m.vertices for m in meshes]),
            np.concatenate([m.triangles + offset for m, offset in zip(meshes, offsets)]))


def _grid(bbox: dict, resolution: int):
    from cad.voxel import Grid

    lo, hi = np.asarray(bbox["min"], dtype=np.float64), np.asarray(bbox["max"], dtype=np.float64)
    size = np.maximum(hi - lo, SIZE_FLOOR * float(np.linalg.norm(hi - lo)))
    lo, hi = lo - FIELD_MARGIN * size, hi + FIELD_MARGIN * size
    return Grid(lo, hi, resolution, anchor=lo), size


def _blurred(occupancy, blur: float):
    if blur <= 0:
        return occupancy
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(occupancy, blur, mode="constant")


def _block(mesh, goal_mesh, bbox: dict, cache: dict, key, grid, size, blur: float, cumulative: bool,
           exact_mass: bool = False):
    """(residuals, score) of one shape (the whole, or one part) against its counterpart in the target (``bbox`` its
    box, ``size`` the box's size floored) on ``grid``. ``mesh`` None: the model has no such part.

    ``exact_mass`` (parts): the cumulative profiles are shares of each mesh's own volume and the volume term compares
    those volumes, so a part partly or wholly outside the grid reads as out of place, not as a part that vanished
    (its in-grid mass would jump from zero as it enters)."""
    from cad.voxel import fractional_occupancy, oriented, signed_volume

    if key not in cache:  # cached on the loaded target: the optimiser asks for the same one many times
        cache[key] = _blurred(fractional_occupancy(*goal_mesh, grid), blur)
    goal = cache[key]
    present = mesh is not None and len(mesh[1])
    mine = _blurred(fractional_occupancy(*mesh, grid), blur) if present else np.zeros_like(goal)
    if not cumulative:
        larger = float(np.maximum(mine, goal).sum())
        return (mine - goal).ravel(), (float(np.minimum(mine, goal).sum()) / larger if larger else 1.0)
    # Shares of each shape's own volume (where the volume lies), plus one term for the volume itself: a shape too
    # light everywhere should not read as a shape in the wrong place.
    if exact_mass:
        cell, volume_key = grid.voxel_volume(), (*key, "volume")
        if volume_key not in cache:  # the target part's volume does not change: measured once
            cache[volume_key] = abs(signed_volume(goal_mesh[0], oriented(*goal_mesh)))
        goal_mass = max(cache[volume_key] / cell, 1e-9)
        mass = max(abs(signed_volume(mesh[0], oriented(*mesh))) / cell, 1e-9) if present else goal_mass
    else:
        mass, goal_mass = max(float(mine.sum()), 1e-9), max(float(goal.sum()), 1e-9)
    profiles = [np.cumsum(occupancy.sum(axis=tuple(k for k in range(3) if k != axis)), dtype=np.float64) / total
                for axis in range(3) for occupancy, total in ((mine, mass), (goal, goal_mass))]
    if present:
        # The bounding box too (as shares of the target's size): the profiles alone can trade a short box
        # against thick walls, the box cannot. Taken from the mesh, so it pulls from outside the grid as well.
        points = mesh[0][mesh[1].ravel()]
        extent = np.concatenate([points.min(axis=0) - bbox["min"], points.max(axis=0) - bbox["max"]])
        volume = np.log(mass / goal_mass)
    else:
        extent, volume = np.zeros(6), ABSENT_LOG_RATIO
    residuals = np.concatenate([profiles[i] - profiles[i + 1] for i in range(0, 6, 2)]
                               + [[volume], BOX_WEIGHT * extent / np.tile(size, 2)])
    return residuals, 1.0 / (1.0 + float(np.abs(residuals).mean()))


def occupancy_residuals(built, target, resolution: int = 64, blur: float = 0.0, cumulative: bool = False,
                        parts: bool = True) -> dict:
    """Blurred partial-volume occupancy of the model minus the target's, on a grid fixed by the target alone.

    The vector has the same length whatever the parameters (parts outside the grid are cut off), so the optimiser
    can difference it across parameter changes (Levenberg-Marquardt). ``iou`` is the soft IoU sum(min)/sum(max)
    of the two blurred fields.

    ``cumulative=True`` answers cumulative volume profiles along X, Y and Z instead (the share of each shape's
    volume below each plane), then one term for the log of the volume ratio and six for the bounding box's misfit
    (``BOX_WEIGHT`` times the min and max differences as shares of the target's size): a residual that still pulls
    a wall, a lid or a head toward its place when it is far from the target's and does not overlap it at all (a 1-D
    transport distance). ``iou`` is then ``1 / (1 + mean |residual|)``.

    ``parts`` (default): where the target is an assembly of two or more named solids (``target.parts``), one
    more block per target part, on that part's own grid (``PART_RESOLUTION``), against the model's part of the same
    name; together they weigh ``PARTS_SHARE`` of the squared residual and of ``iou``. The blocks depend on the
    target alone (a part the model lacks at some state, a wheel of a smaller count, gives a constant block), so the
    length is fixed.
    """
    meshes = built.preview_meshes()
    whole_grid, whole_size = _grid(target.bbox, resolution)
    whole, score = _block(model_mesh(meshes), (target.vertices, target.triangles), target.bbox, target.fields,
                          (resolution, blur, cumulative), whole_grid, whole_size, blur, cumulative)
    if not parts or not target.parts:
        return {"iou": score, "method": "field", "residuals": whole.astype(np.float32, copy=False)}
    by_name = {m.name: m for m in meshes}
    # Profiles over the whole target's grid (a part is pulled toward its place from anywhere in the model) at the
    # whole's resolution; fields over the part's own box (its detail at the part's scale, once the profiles have
    # brought it close) at PART_RESOLUTION.
    part_resolution = resolution if cumulative else min(resolution, PART_RESOLUTION)
    blocks, scores = [], []
    for name in sorted(target.parts):  # a part the model lacks (or names otherwise) reads as missing
        goal_vertices, goal_triangles, goal_bbox = target.parts[name]
        mesh = by_name.get(name)
        grid, size = _grid(goal_bbox, part_resolution)
        grid = whole_grid if cumulative else grid  # the same resolution: the whole's grid itself
        residuals, part_score = _block(None if mesh is None else (mesh.vertices, mesh.triangles),
                                       (goal_vertices, goal_triangles), goal_bbox, target.fields,
                                       (part_resolution, blur, cumulative, name), grid, size, blur, cumulative,
                                       exact_mass=True)
        blocks.append(residuals)
        scores.append(part_score)
    # Each block is scaled so that its squared sum counts as its share: the whole (1 - PARTS_SHARE) and every
    # part PARTS_SHARE / n, each relative to its own grid's size (a part's misfit in its own voxels).
    weight_whole = np.sqrt((1 - PARTS_SHARE) / max(len(whole), 1))
    weights = [np.sqrt(PARTS_SHARE / len(blocks) / max(len(b), 1)) for b in blocks]
    residuals = np.concatenate([whole * weight_whole] + [b * w for b, w in zip(blocks, weights)])
    iou = (1 - PARTS_SHARE) * score + PARTS_SHARE * float(np.mean(scores))
    return {"iou": iou, "method": "field", "residuals": residuals.astype(np.float32), "parts": len(blocks)}
