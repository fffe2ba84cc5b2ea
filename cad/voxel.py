"""Mesh-based volume comparison: voxelise triangle meshes on a common grid by ray winding numbers.

Used when an exact B-rep comparison is impossible (an STL target, a shell that is not a solid, a failed boolean)
and as the fast objective of the optimiser. For every grid column (x, y) a ray is cast along +Z; each triangle it
crosses adds +1 when the ray enters the solid (outward normal pointing down) and -1 when it leaves. A voxel centre
is inside where the running sum is positive. Unlike crossing parity, this stays right where closed shells overlap
(the parts of an assembly, or an STL with touching bodies) and where an inner shell bounds a cavity.
The grid is shifted by a small irrational fraction of a voxel so rays do not hit mesh edges exactly.
"""
from __future__ import annotations

import numpy as np

DEFAULT_RESOLUTION = 128  # voxels along the longest side of the common bounding box
_JITTER = np.array([0.1234567, 0.2345678, 0.3456789])
EDGE_ON = 1e-12  # a triangle whose doubled projected area is below this share of a cell's is skipped by the rays
CELL_ROUNDING = 1e-9  # of a cell: how close to a cell boundary an extent counts as on it (see Grid)
DEGENERATE = 1e-12  # a grid over an extent below this share of the coordinates' magnitude is a point


def oriented(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Triangles flipped if needed so that the mesh's signed volume is positive (outward normals)."""
    corners = vertices[triangles]
    signed = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6.0
    return triangles[:, ::-1] if signed < 0 else triangles


def signed_volume(vertices: np.ndarray, triangles: np.ndarray) -> float:
    corners = vertices[triangles]
    return float(np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6.0)


class Grid:
    """Cubic cells of side ``h`` covering ``lo..hi``; cell ``i`` along an axis spans ``anchor + (index0 + i) * h``.

    Without ``h`` the side is the longest extent / ``resolution``. ``anchor`` fixes the cells' phase: grids built
    with the same ``h`` and ``anchor`` (the target's corner) share their cells whatever region they cover, so the
    optimiser's objective does not jump when the model's bounding box changes.
    """

    def __init__(self, lo, hi, resolution: int = DEFAULT_RESOLUTION, *, h: float | None = None, anchor=None):
        lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        self.h = float(h) if h else float(max(np.max(hi - lo), _floor(lo, hi)) / resolution)
        anchor = lo if anchor is None else np.asarray(anchor, dtype=float)
        # One spare cell on each side; a sub-cell shift keeps regular samples off exact mesh features.
        # Within a billionth of a cell of a whole number, the whole number: an extent of exactly 24 cells must
        # not give 25 at one scale and 24 at another through rounding (the residual vector's length would change).
        self.index0 = np.floor((lo - anchor) / self.h + CELL_ROUNDING).astype(np.int64) - 1
        last = np.ceil((hi - anchor) / self.h - CELL_ROUNDING).astype(np.int64) + 1
        self.counts = np.maximum(last - self.index0, 1)
        self.origin = anchor + self.index0 * self.h + _JITTER * 1e-3 * self.h

    def voxel_volume(self) -> float:
        return self.h ** 3


def _floor(lo, hi) -> float:
    """The smallest extent a grid is given: a share of the coordinates' magnitude (a point, not a length in mm)."""
    return max(DEGENERATE * float(np.max(np.abs(np.concatenate([lo, hi])))), np.finfo(float).tiny)


def _hash_unit(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """A fixed pseudo-random number in -0.5..0.5 per integer cell (i, j): stratified jitter for ray samples."""
    x = (i.astype(np.uint64) * np.uint64(73856093)) ^ (j.astype(np.uint64) * np.uint64(19349663)) ^ np.uint64(salt)
    x = (x * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(2246822519)) & np.uint64(0xFFFFFFFF)
    return x.astype(np.float64) / 4294967296.0 - 0.5


_CYCLIC = {2: (0, 1, 2), 0: (1, 2, 0), 1: (2, 0, 1)}  # (lateral u, lateral v, ray axis): keeps handedness


def crossings(vertices: np.ndarray, triangles: np.ndarray, grid: Grid, axis: int = 2, jitter: bool = False):
    """Where rays along +``axis`` through the grid's column centres cross the mesh.

    ``jitter=True`` moves each column's ray to a fixed pseudo-random point of its cell (stratified sampling), so a
    face that moves by less than a cell changes the answer a little instead of in whole-cell jumps.

    Returns ``(column, depth, sign)``: the flat column index (u * nv + v), the coordinate along the ray and +1 where
    the ray enters the solid (outward normal against the ray), -1 where it leaves.
    """
    u_axis, v_axis, w_axis = _CYCLIC[axis]
    nu, nv = int(grid.counts[u_axis]), int(grid.counts[v_axis])
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int32))
    if not len(triangles):
        return empty
    corners = vertices[triangles][:, :, [u_axis, v_axis, w_axis]]  # (M, 3, 3) in (u, v, w)
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    # Signed doubled area of the (u, v) projection: its sign is the normal's component along the ray.
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    h = grid.h
    keep = np.abs(area) > EDGE_ON * h * h  # seen edge-on: no ray can cross it (relative to the cells, any scale)
    a, b, c, area = a[keep], b[keep], c[keep], area[keep]
    origin = grid.origin[[u_axis, v_axis]]
    lo = np.minimum(np.minimum(a, b), c)[:, :2]
    hi = np.maximum(np.maximum(a, b), c)[:, :2]
    reach = 0.0 if jitter else 0.5  # a jittered sample may lie anywhere in its cell
    first = np.maximum(np.ceil((lo - origin) / h - 1.0 + reach).astype(np.int64), 0)
    last = np.minimum(np.floor((hi - origin) / h - reach).astype(np.int64), np.array([nu - 1, nv - 1]))
    span = np.maximum(last - first + 1, 0)
    cells = span[:, 0] * span[:, 1]
    total = int(cells.sum())
    if total == 0:
        return empty
    owner = np.repeat(np.arange(len(a)), cells)
    offset = np.arange(total) - np.repeat(np.cumsum(cells) - cells, cells)
    width = np.maximum(span[owner, 1], 1)
    iu = first[owner, 0] + offset // width
    iv = first[owner, 1] + offset % width
    pu = origin[0] + (iu + 0.5) * h
    pv = origin[1] + (iv + 0.5) * h
    if jitter:
        absolute_u, absolute_v = iu + grid.index0[u_axis], iv + grid.index0[v_axis]
        pu = pu + _hash_unit(absolute_u, absolute_v, 11 + axis) * h
        pv = pv + _hash_unit(absolute_u, absolute_v, 101 + axis) * h
    A, B, C, projected = a[owner], b[owner], c[owner], area[owner]
    w_a = ((B[:, 0] - pu) * (C[:, 1] - pv) - (B[:, 1] - pv) * (C[:, 0] - pu)) / projected
    w_b = ((C[:, 0] - pu) * (A[:, 1] - pv) - (C[:, 1] - pv) * (A[:, 0] - pu)) / projected
    w_c = 1.0 - w_a - w_b
    hit = (w_a >= 0) & (w_b >= 0) & (w_c >= 0)
    depth = (w_a * A[:, 2] + w_b * B[:, 2] + w_c * C[:, 2])[hit]
    sign = np.where(projected[hit] < 0, 1, -1).astype(np.int32)
    return iu[hit] * nv + iv[hit], depth, sign


def voxelise(vertices: np.ndarray, triangles: np.ndarray, grid: Grid) -> np.ndarray:
    """Boolean occupancy (nx, ny, nz) of the closed, outward-oriented mesh on ``grid``."""
    nx, ny, nz = (int(c) for c in grid.counts)
    column, depth, sign = crossings(vertices, triangles, grid, axis=2)
    # A crossing affects every voxel centre above it: add its sign at the first such voxel, then prefix-sum.
    iz = np.clip(np.ceil((depth - grid.origin[2]) / grid.h - 0.5).astype(np.int64), 0, nz)
    winding = np.zeros((nx * ny, nz + 1), dtype=np.int32)
    np.add.at(winding, (column, iz), sign)
    np.cumsum(winding, axis=1, out=winding)
    return (winding[:, :nz] > 0).reshape(nx, ny, nz)


def _column_windings(column: np.ndarray, deltas) -> tuple[np.ndarray, list[np.ndarray]]:
    """(index where each column's run starts, winding number after each crossing for each of ``deltas``), for
    crossings sorted by column then depth. The running sums restart at every column: the sum reached before a
    column began is subtracted."""
    starts = np.flatnonzero(np.r_[True, column[1:] != column[:-1]])
    lengths = np.diff(np.r_[starts, len(column)])
    windings = []
    for delta in deltas:
        running = np.cumsum(delta)
        windings.append(running - np.repeat(np.r_[0, running][starts], lengths))
    return starts, windings


def anchored_crossings(vertices: np.ndarray, triangles: np.ndarray, h: float, anchor, axis: int) -> tuple:
    """Jittered crossings of a mesh with rays along ``axis`` on the cells of side ``h`` anchored at ``anchor``,
    over the mesh's own box: (absolute u cell, absolute v cell, depth, sign). The same rays as on any larger grid
    with that ``h`` and ``anchor`` (a sample's place depends only on its absolute cell), so a target's crossings
    are measured once and placed on each evaluation's grid (``ray_overlap``'s ``second_crossings``)."""
    points = vertices[triangles.ravel()]
    own = Grid(points.min(axis=0), points.max(axis=0), h=h, anchor=anchor)
    column, depth, sign = crossings(vertices, triangles, own, axis, jitter=True)
    u_axis, v_axis, _ = _CYCLIC[axis]
    nv = int(own.counts[v_axis])
    return column // nv + own.index0[u_axis], column % nv + own.index0[v_axis], depth, sign


def _second_crossings(mesh, h: float, anchor, axis: int, cache: dict | None) -> tuple:
    """``anchored_crossings`` of the second (target) mesh, from ``cache`` when it holds them. They always come
    from the mesh's own anchored box, cached or not, so an answer does not depend on what the cache holds."""
    key = ("rays", h, tuple(float(x) for x in anchor), axis)
    found = None if cache is None else cache.get(key)
    if found is None:
        vertices, triangles = mesh
        found = anchored_crossings(vertices, oriented(vertices, triangles), h, anchor, axis)
        if cache is not None:
            cache[key] = found
    return found


def ray_overlap(first, second_crossings: tuple, grid: Grid, axis: int) -> tuple[float, float]:
    """(intersection, union) lengths summed over jittered rays along ``axis``: exact along each ray.
    ``second_crossings``: the second mesh's ``anchored_crossings`` for this grid's ``h`` and anchor (it must lie
    inside the grid)."""
    c1, d1, s1 = crossings(*first, grid, axis, jitter=True)
    absolute_u, absolute_v, d2, s2 = second_crossings
    u_axis, v_axis, _ = _CYCLIC[axis]
    c2 = (absolute_u - grid.index0[u_axis]) * int(grid.counts[v_axis]) + (absolute_v - grid.index0[v_axis])
    column = np.concatenate([c1, c2])
    if not len(column):
        return 0.0, 0.0
    depth = np.concatenate([d1, d2])
    delta_1 = np.concatenate([s1, np.zeros_like(s2)])
    delta_2 = np.concatenate([np.zeros_like(s1), s2])
    order = np.lexsort((depth, column))
    column, depth, delta_1, delta_2 = column[order], depth[order], delta_1[order], delta_2[order]
    _, windings = _column_windings(column, (delta_1, delta_2))
    segment = np.where(column[1:] == column[:-1], depth[1:] - depth[:-1], 0.0)
    inside_1, inside_2 = windings[0][:-1] > 0, windings[1][:-1] > 0
    return float(segment[inside_1 & inside_2].sum()), float(segment[inside_1 | inside_2].sum())


def mesh_iou(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
             resolution: int = DEFAULT_RESOLUTION, blur: float = 0.0, profile: bool = False,
             rays: bool = False, cache: dict | None = None) -> dict:
    """Voxel IoU of two (vertices, triangles) meshes plus the voxel volumes (mm^3) it is based on.

    ``blur`` > 0 (in voxels) compares Gaussian-blurred occupancies instead, as sum(min)/sum(max): a smooth, wide
    basin for the optimiser's coarse stages (thin walls a little apart still overlap once blurred).
    ``profile=True`` returns ``1 / (1 + d)`` instead, where ``d`` sums over X, Y, Z the L1 distance between the two
    cumulative volume profiles along that axis (normalised by the target volume and the grid length): it responds
    to a part's position even when the two shapes do not overlap at all. ``rays=True`` measures the overlap along
    rays in X, Y and Z instead of in voxels (exact along each ray, sampled across it) and averages the three IoUs:
    a wall's thickness is then resolved exactly along its normal rather than rounded to whole voxels; the second
    mesh's ray crossings are kept in ``cache`` (a dict that lives with that mesh: the loaded target's) and
    measured once per cell size, not on every evaluation.
    """
    (v1, t1), (v2, t2) = first, second
    points = [v[t.ravel()] for v, t in ((v1, t1), (v2, t2)) if len(t)]
    if not points:
        return {"iou": 1.0, "intersection": 0.0, "union": 0.0, "voxel_mm": 0.0}
    stacked = np.concatenate(points)
    grid = Grid(stacked.min(axis=0), stacked.max(axis=0), resolution)
    if rays and len(t1) and len(t2):
        # Cells sized and anchored on the second mesh (the target): the same cells whatever the first one does.
        target_points = v2[t2.ravel()]
        target_lo, target_hi = target_points.min(axis=0), target_points.max(axis=0)
        own_h = max(float(np.max(target_hi - target_lo)), _floor(target_lo, target_hi)) / resolution
        h = max(own_h, float(np.max(stacked.max(axis=0) - stacked.min(axis=0))) / (4 * resolution))  # bound the work
        if h != own_h:
            cache = None  # a cell size set by a far larger model: one of many, not worth keeping
        grid = Grid(stacked.min(axis=0), stacked.max(axis=0), h=h, anchor=target_lo)
        first = (v1, oriented(v1, t1))
        ious = []
        for axis in range(3):
            common, either = ray_overlap(first, _second_crossings(second, h, target_lo, axis, cache), grid, axis)
            ious.append(common / either if either > 0 else 1.0)
        return {"iou": sum(ious) / 3, "intersection": None, "union": None, "voxel_mm": grid.h}
    occ1 = voxelise(v1, oriented(v1, t1), grid) if len(t1) else None
    occ2 = voxelise(v2, oriented(v2, t2), grid) if len(t2) else None
    if occ1 is None or occ2 is None:
        only = occ1 if occ1 is not None else occ2
        return {"iou": 0.0, "intersection": 0.0, "union": float(only.sum() * grid.voxel_volume()),
                "voxel_mm": grid.h}
    if profile:
        distance = 0.0
        for axis in range(3):
            others = tuple(k for k in range(3) if k != axis)
            cumulative1 = np.cumsum(occ1.sum(axis=others))
            cumulative2 = np.cumsum(occ2.sum(axis=others))
            distance += float(np.abs(cumulative1 - cumulative2).sum()) / (max(cumulative2[-1], 1) * len(cumulative2))
        return {"iou": 1.0 / (1.0 + distance), "intersection": None, "union": None, "voxel_mm": grid.h}
    if blur > 0:
        from scipy.ndimage import gaussian_filter

        soft1 = gaussian_filter(occ1.astype(np.float32), blur, mode="constant")
        soft2 = gaussian_filter(occ2.astype(np.float32), blur, mode="constant")
        larger = float(np.maximum(soft1, soft2).sum())
        return {"iou": float(np.minimum(soft1, soft2).sum()) / larger if larger else 1.0,
                "intersection": None, "union": None, "voxel_mm": grid.h}
    intersection = int(np.count_nonzero(occ1 & occ2))
    union = int(np.count_nonzero(occ1 | occ2))
    return {"iou": intersection / union if union else 1.0, "intersection": intersection * grid.voxel_volume(),
            "union": union * grid.voxel_volume(), "voxel_mm": grid.h}


def fractional_occupancy(vertices: np.ndarray, triangles: np.ndarray, grid: Grid) -> np.ndarray:
    """Partial-volume occupancy (nx, ny, nz) in 0..1, the mean of exact coverage along rays in X, Y and Z.

    Along each jittered ray the inside intervals (winding number > 0, so overlapping parts count once) are known
    exactly, so each cell gets the fraction of its length that lies inside. Unlike ``voxelise`` this moves
    continuously as a face moves along its normal, which lets the optimiser take finite differences.
    """
    counts = [int(c) for c in grid.counts]
    total = np.zeros(counts, dtype=np.float32)
    if not len(triangles):
        return total
    triangles = oriented(vertices, triangles)
    for axis in range(3):
        order_axes = _CYCLIC[axis]
        nu, nv, nw = (counts[k] for k in order_axes)
        column, depth, sign = crossings(vertices, triangles, grid, axis, jitter=True)
        cover = np.zeros((nu * nv, nw + 2), dtype=np.float64)
        if len(column):
            order = np.lexsort((depth, column))
            column, depth, sign = column[order], depth[order], sign[order]
            starts, (winding,) = _column_windings(column, (sign,))
            inside = winding > 0
            before = np.r_[False, inside[:-1]]
            before[starts] = False  # every ray starts outside
            change = np.flatnonzero(inside != before)
            step = np.where(inside[change], 1.0, -1.0)
            position = (depth[change] - grid.origin[order_axes[2]]) / grid.h
            cell = np.floor(position).astype(np.int64)
            fraction = np.where(cell < 0, 1.0, cell + 1 - position)  # inside share of the cell the change is in
            cell = np.clip(cell, 0, nw)
            np.add.at(cover, (column[change], cell), step * fraction)
            np.add.at(cover, (column[change], cell + 1), step * (1.0 - fraction))
            np.cumsum(cover, axis=1, out=cover)
        occupancy = np.clip(cover[:, :nw], 0.0, 1.0).reshape(nu, nv, nw)
        total += occupancy.transpose(np.argsort(order_axes)).astype(np.float32)
    return total / 3.0
