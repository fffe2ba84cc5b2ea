"""Headless PNG rendering of triangle meshes: a vectorised numpy z-buffer rasteriser, Pillow for PNG encoding.

No display and no GL: orthographic views of the model (Z up, X forward), flat Lambert shading with one colour per
part and dark outlines where parts or depth change. Imports only numpy and Pillow.
"""
from __future__ import annotations

import io
import json
import math
import struct

import numpy as np
from PIL import Image

from cad.mesh import MAX_SIZE, MIN_SIZE, PALETTE, VIEWS, PartMesh, linear_to_srgb  # noqa: F401 (re-exported)

BACKGROUND = np.array([246, 247, 250], dtype=np.float32)
_MARGIN = 0.06
DEGENERATE = 1e-12  # of the model's extent (squared for areas): faces and views smaller than this are points
_CHUNK_PIXELS = 1_500_000  # candidate pixels per vectorised batch: bounds peak memory at large sizes


def _camera(view: str) -> tuple[np.ndarray, np.ndarray]:
    """(direction from the model towards the camera, up hint)."""
    z_up = np.array([0.0, 0.0, 1.0])
    if view == "front":
        return np.array([1.0, 0.0, 0.0]), z_up
    if view == "side":
        return np.array([0.0, -1.0, 0.0]), z_up
    if view == "top":
        return np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
    if view == "iso":
        direction = np.array([1.0, -1.0, 0.8])
        return direction / np.linalg.norm(direction), z_up
    raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")


def check_camera(camera: dict) -> dict:
    """A camera as the viewer has it, in model coordinates (mm, Z up): position, target, up (three finite numbers
    each), projection perspective (fov: vertical degrees) or orthographic (height: the visible height in mm), aspect
    (width / height of the view). Returns it with floats and defaults; ValueError says what is wrong."""
    def vector(name):
        v = camera.get(name)
        if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise ValueError(f"camera {name} must be three finite numbers")
        return np.array(v, dtype=np.float64)

    position, target, up = vector("position"), vector("target"), vector("up")
    forward = target - position
    distance = float(np.linalg.norm(forward))
    if not distance > 0:
        raise ValueError("camera position and target must differ")
    if not np.linalg.norm(np.cross(forward / distance, up)) > 1e-6 * max(float(np.linalg.norm(up)), 1e-300):
        raise ValueError("camera up must not be along the view direction")
    projection = camera.get("projection", "perspective")
    if projection not in ("perspective", "orthographic"):
        raise ValueError("camera projection must be perspective or orthographic")
    fov, height, aspect = (float(camera.get(k) if camera.get(k) is not None else d)
                           for k, d in (("fov", 40.0), ("height", distance), ("aspect", 1.0)))
    if not (1.0 <= fov <= 170.0 and 0.0 < height < math.inf and 0.1 <= aspect <= 10.0):
        raise ValueError("camera fov must be 1..170 degrees, height a positive number, aspect 0.1..10")
    return {"position": position, "target": target, "up": up, "projection": projection, "fov": fov,
            "height": height, "aspect": aspect}


def meshes_from_glb(data: bytes) -> list[PartMesh]:
    """The parts (triangles; edge lines are skipped) of a GLB written by cad.export.glb_bytes (metres, Y up) back
    in model coordinates (mm, Z up), with their sRGB colours (cad.export writes them into glTF's linear
    baseColorFactor, converted)."""
    json_length = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20:20 + json_length])
    binary = data[20 + json_length + 8:]
    views, accessors = doc.get("bufferViews", []), doc.get("accessors", [])

    def read(index: int, dtype, width: int) -> np.ndarray:
        accessor = accessors[index]
        view = views[accessor["bufferView"]]
        start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
        count = accessor["count"] * (3 if accessor["type"] == "VEC3" else 1)
        return np.frombuffer(binary, dtype=dtype, count=count, offset=start).reshape(-1, width)

    meshes = []
    for node in doc.get("nodes", []):
        if "mesh" not in node:
            continue
        for primitive in doc["meshes"][node["mesh"]]["primitives"]:
            if primitive.get("mode", 4) != 4:  # B-rep edge lines (cad.export): not surfaces
                continue
            points = read(primitive["attributes"]["POSITION"], "<f4", 3).astype(np.float64)
            vertices = np.stack([points[:, 0], -points[:, 2], points[:, 1]], axis=1) * 1000.0
            triangles = read(primitive["indices"], "<u4", 3).astype(np.int64)
            material = doc["materials"][primitive["material"]] if "material" in primitive else {}
            linear = material.get("pbrMetallicRoughness", {}).get("baseColorFactor", [0.6, 0.6, 0.6, 1])[:3]
            colour = [linear_to_srgb(float(c)) for c in linear]  # glTF's factor is linear; renders draw sRGB
            meshes.append(PartMesh(node.get("name", "part"), vertices, triangles, tuple(colour)))
    return meshes


def render_png(meshes: list[PartMesh], view: str = "iso", size: int = 384, camera: dict | None = None) -> bytes:
    """PNG of the meshes from a preset view, or from `camera` (see check_camera) when given."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be a whole number between {MIN_SIZE} and {MAX_SIZE}, got {size!r}")
    image = render_array(meshes, view, size, camera=check_camera(camera) if camera is not None else None)
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def render_array(meshes: list[PartMesh], view: str, size: int, *, direction=None,
                 background=None, camera: dict | None = None) -> np.ndarray:
    """RGB uint8 image (size, size, 3). ``direction`` (from the model towards the camera) overrides the view's own,
    keeping its up hint, e.g. for a slightly jittered camera; ``background`` is an RGB triple in 0..255."""
    towards_camera, up_hint = _camera(view)
    if direction is not None:
        towards_camera = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
        if abs(float(towards_camera @ up_hint)) > 0.98:  # looking along the up hint: take another one
            up_hint = np.array([1.0, 0.0, 0.0])
    if camera is not None:  # checked by check_camera: the view is the camera's, not the model's fit
        forward = camera["target"] - camera["position"]
        towards_camera, up_hint = -forward / np.linalg.norm(forward), camera["up"]
    right = np.cross(-towards_camera, up_hint)
    right /= np.linalg.norm(right)
    up = np.cross(right, -towards_camera)
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = BACKGROUND if background is None else np.asarray(background, dtype=np.float32)
    meshes = [m for m in meshes if len(m.triangles)]
    if not meshes:
        return image.astype(np.uint8)

    corners = np.concatenate([m.vertices[m.triangles] for m in meshes])  # (T, 3, 3)
    part_of_triangle = np.concatenate([np.full(len(m.triangles), i) for i, m in enumerate(meshes)])
    colours = np.array([m.color for m in meshes], dtype=np.float32)

    # Flat Lambert shading; normals flipped towards the camera so face orientation cannot blacken a face.
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    extent = float(np.ptp(corners.reshape(-1, 3), axis=0).max())
    keep = lengths > DEGENERATE * extent * extent  # relative to the model's size: a 5 um part has 1e-12 mm^2 faces
    corners, part_of_triangle, normals = corners[keep], part_of_triangle[keep], normals[keep] / lengths[keep, None]
    if not len(corners):
        return image.astype(np.uint8)
    normals *= np.where(normals @ towards_camera < 0, -1.0, 1.0)[:, None]
    light = towards_camera + 0.6 * up - 0.4 * right
    light /= np.linalg.norm(light)
    shade = 0.38 + 0.62 * np.clip(normals @ light, 0.0, 1.0)
    triangle_rgb = colours[part_of_triangle] * shade[:, None].astype(np.float32) * 255.0

    if camera is not None:
        px, py, depth, keep, scale = _camera_projection(corners, camera, right, up, towards_camera, size)
        corners, part_of_triangle, triangle_rgb = corners[keep], part_of_triangle[keep], triangle_rgb[keep]
        px, py, depth = px[keep], py[keep], depth[keep]
        return _draw(image, px, py, depth, triangle_rgb, part_of_triangle, size, scale,
                     linear=None if camera["projection"] == "orthographic" else camera)

    # Orthographic projection fitted to the image with a margin.
    screen_x, screen_y, depth = corners @ right, corners @ up, corners @ towards_camera
    low = np.array([screen_x.min(), screen_y.min()])
    high = np.array([screen_x.max(), screen_y.max()])
    scale = size * (1 - 2 * _MARGIN) / max(float((high - low).max()), DEGENERATE * max(extent, 1e-300))
    centre = (low + high) / 2
    px = (screen_x - centre[0]) * scale + size / 2
    py = size / 2 - (screen_y - centre[1]) * scale

    return _draw(image, px, py, depth, triangle_rgb, part_of_triangle, size, scale)


def _camera_projection(corners, camera, right, up, towards_camera, size):
    """Pixel coordinates, depth (larger is nearer), the triangles to draw and pixels per mm at the target, for the
    viewer's camera. The square image covers the view's wider side, so everything on screen is in it. A
    perspective view draws triangles wholly in front of the camera (depth 1/distance, which is linear on screen)."""
    eye, target = camera["position"], camera["target"]
    distance = float(np.linalg.norm(target - eye))
    if camera["projection"] == "orthographic":
        half = camera["height"] / 2 * max(1.0, camera["aspect"])
        scale = size / (2 * half)
        rel = corners - target
        px = rel @ right * scale + size / 2
        py = size / 2 - rel @ up * scale
        return px, py, corners @ towards_camera, np.ones(len(corners), dtype=bool), scale
    tan_half = math.tan(math.radians(camera["fov"]) / 2) * max(1.0, camera["aspect"])
    rel = corners - eye
    along = rel @ -towards_camera  # distance in front of the camera
    keep = (along > distance * 1e-3).all(axis=1)
    along = np.where(along > distance * 1e-3, along, distance)
    half = size / 2
    px = half + (rel @ right) / (along * tan_half) * half
    py = half - (rel @ up) / (along * tan_half) * half
    # a triangle reaching far outside the image would make a huge raster batch: drop what lies beyond 4 images
    keep &= (np.abs(px - half) < 4 * size).all(axis=1) & (np.abs(py - half) < 4 * size).all(axis=1)
    return px, py, 1.0 / along, keep, size / (2 * distance * tan_half)


def _draw(image, px, py, depth, triangle_rgb, part_of_triangle, size, scale, linear=None):
    zbuffer = np.full(size * size, -np.inf)
    part_buffer = np.full(size * size, -1, dtype=np.int64)
    colour_buffer = image.reshape(-1, 3)
    if len(px):
        for batch in _batches(px, py, size):
            _rasterise(batch, px, py, depth, triangle_rgb, part_of_triangle, size, zbuffer, colour_buffer,
                       part_buffer)
    zbuffer = zbuffer.reshape(size, size)
    if linear is not None:  # perspective: outline on distances (mm), not on their inverses
        zbuffer = np.where(np.isfinite(zbuffer) & (zbuffer > 0), -1.0 / np.where(zbuffer > 0, zbuffer, 1.0), -np.inf)
    _outline(image, zbuffer, part_buffer.reshape(size, size), scale)
    return np.clip(image, 0, 255).astype(np.uint8)


def _batches(px: np.ndarray, py: np.ndarray, size: int):
    """Split triangle indices into groups whose pixel bounding boxes hold at most _CHUNK_PIXELS in total."""
    x0 = np.clip(np.floor(px.min(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    x1 = np.clip(np.ceil(px.max(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    y0 = np.clip(np.floor(py.min(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    y1 = np.clip(np.ceil(py.max(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    counts = (x1 - x0 + 1) * (y1 - y0 + 1)
    cumulative = np.cumsum(counts)
    start = 0
    while start < len(counts):
        base = cumulative[start - 1] if start else 0
        stop = int(np.searchsorted(cumulative, base + _CHUNK_PIXELS, side="right"))
        stop = max(stop, start + 1)
        index = np.arange(start, stop)
        yield index, x0[index], y0[index], (x1 - x0 + 1)[index], counts[index]
        start = stop


def _rasterise(batch, px, py, depth, triangle_rgb, part_of_triangle, size, zbuffer, colour_buffer, part_buffer):
    index, x0, y0, widths, counts = batch
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(index)), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    x = np.repeat(x0, counts) + offsets % np.repeat(widths, counts)
    y = np.repeat(y0, counts) + offsets // np.repeat(widths, counts)
    triangle = index[owner]
    ax, bx, cx = px[triangle, 0], px[triangle, 1], px[triangle, 2]
    ay, by, cy = py[triangle, 0], py[triangle, 1], py[triangle, 2]
    sample_x, sample_y = x + 0.5, y + 0.5
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    valid = np.abs(area) > 1e-12
    area = np.where(valid, area, 1.0)
    weight_a = ((bx - sample_x) * (cy - sample_y) - (by - sample_y) * (cx - sample_x)) / area
    weight_b = ((cx - sample_x) * (ay - sample_y) - (cy - sample_y) * (ax - sample_x)) / area
    weight_c = 1.0 - weight_a - weight_b
    eps = -1e-6
    inside = valid & (weight_a >= eps) & (weight_b >= eps) & (weight_c >= eps)
    pixel = (y * size + x)[inside]
    triangle = triangle[inside]
    d = depth[triangle]
    z = weight_a[inside] * d[:, 0] + weight_b[inside] * d[:, 1] + weight_c[inside] * d[:, 2]
    np.maximum.at(zbuffer, pixel, z)
    winner = z >= zbuffer[pixel]
    colour_buffer[pixel[winner]] = triangle_rgb[triangle[winner]]
    part_buffer[pixel[winner]] = part_of_triangle[triangle[winner]]


def _outline(image: np.ndarray, zbuffer: np.ndarray, parts: np.ndarray, scale: float) -> None:
    """Darken pixels where the part changes or depth jumps (silhouettes and steps), like a technical drawing."""
    depth = np.where(np.isfinite(zbuffer), zbuffer, -1e9)
    jump = 4.0 / scale  # a depth step worth a few pixels in model units
    edge = np.zeros(parts.shape, dtype=bool)
    for axis in (0, 1):
        part_change = np.diff(parts, axis=axis) != 0
        depth_change = np.abs(np.diff(depth, axis=axis)) > jump
        change = part_change | depth_change
        if axis == 0:
            edge[1:] |= change
        else:
            edge[:, 1:] |= change
    image[edge & (parts >= 0)] *= 0.45
    # Background pixels next to the model get a soft line too, so silhouettes stay crisp.
    image[edge & (parts < 0)] = image[edge & (parts < 0)] * 0.55 + 0.45 * 60
