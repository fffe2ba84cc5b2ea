"""Browser test: the same part at x0.01, x1 and x100 (issue 16, "Units") is framed alike in the 3D view and its
target comparison reads the same digits.

The server gets one folder of user models (OPTIM_MODELS_DIR): seed 3 of bench/random_models.py (a 20 mm box with
holes and a rib) at x0.01 (0.26 mm), x1 and x100 (2.6 m). Before, the view was blank for parts under ~5 mm (the
near plane was kept at >= 0.01 m) and the target panel read "Size Z 0.0" and "Volume 0". Screenshots go to
test-artifacts/ui/scale-*.png.
"""
from __future__ import annotations

import re

import pytest
from PIL import Image

from bench.random_models import generate
from tests.fixtures_server import start_live_server
from tests.test_ui import (  # noqa: F401  (browser, page and playwright are fixtures used by name)
    ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, browser, page, playwright,
)
from tests.test_ui_viewer_tools import canvas_shot, open_model

pytestmark = pytest.mark.browser

SEED = 3
SCALES = {"scale_tiny": 0.01, "scale_unit": 1.0, "scale_huge": 100.0}
BACKGROUND = (243, 245, 248)  # the view's light background


@pytest.fixture(scope="module")
def server(scripted_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui_scale")
    models = root / "models"
    models.mkdir()
    for name, scale in SCALES.items():
        (models / f"{name}.py").write_text(generate(SEED, scale, "medium").source, encoding="utf-8")
    s = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": scripted_engine.url, "OLLAMA_MODEL": "llava:latest",
                           "PRELOAD_MODEL": "0", "OPTIM_MODELS_DIR": str(models)}, root / "data")
    yield s
    s.stop()


def coverage(page, name: str) -> dict:
    """Share of the canvas the model covers, and the share of the canvas' width and height its pixels span."""
    img = Image.open(canvas_shot(page, name, prefix="scale")).convert("RGB")
    width, height = img.size
    img = img.crop((0, 0, width, height - 30))  # the hint line at the bottom of the view is not the model
    pixels = img.load()
    xs, ys, count = [], [], 0
    w, h = img.size
    for y in range(0, h, 2):  # every other row and column: 1/4 of the pixels is plenty for shares
        for x in range(0, w, 2):
            if max(abs(c - b) for c, b in zip(pixels[x, y], BACKGROUND)) > 24:
                count += 1
                xs.append(x)
                ys.append(y)
    samples = ((w + 1) // 2) * ((h + 1) // 2)
    return {"fill": count / samples, "span_x": (max(xs) - min(xs)) / w if xs else 0.0,
            "span_y": (max(ys) - min(ys)) / h if ys else 0.0}


def camera(page) -> dict:
    return page.evaluate("""() => {
        const v = window.optim.viewer;
        return {near: v.camera.near, far: v.camera.far, distance: v.camera.position.distanceTo(v.controls.target),
                radius: v.bounds.min.distanceTo(v.bounds.max) / 2, grid: v.gridStep,
                size: v.bounds.max.clone().sub(v.bounds.min).length()};
    }""")


def test_the_part_is_framed_alike_at_x001_x1_x100(server, page):
    shares, cameras = {}, {}
    for name in SCALES:
        open_model(page, server, name)
        cameras[name] = camera(page)
        shares[name] = coverage(page, name)
        for view in ("top", "front"):
            page.click(f"[data-testid=view-{view}]")
            shares[f"{name}-{view}"] = coverage(page, f"{name}-{view}")
    print("canvas shares", shares)
    for name, scale in SCALES.items():
        c = cameras[name]
        # the clipping planes follow the part: the near plane in front of it, the far one behind it
        assert c["near"] < c["distance"] - c["radius"] and c["far"] > c["distance"] + c["radius"], (name, c)
        assert c["size"] == pytest.approx(cameras["scale_unit"]["size"] * scale, rel=1e-4)
        assert c["grid"] == pytest.approx(cameras["scale_unit"]["grid"] * scale, rel=1e-6)  # grid steps scale too
    unit = shares["scale_unit"]
    # a sensible share of the canvas: visible, not a speck and not cropped
    assert 0.05 < unit["fill"] < 0.8 and 0.3 < max(unit["span_x"], unit["span_y"]) < 0.98, unit
    for name in ("scale_tiny", "scale_huge"):
        for suffix in ("", "-top", "-front"):
            got, want = shares[name + suffix], shares["scale_unit" + suffix]
            assert got["fill"] == pytest.approx(want["fill"], rel=0.03, abs=0.002), (name + suffix, got, want)
            assert got["span_x"] == pytest.approx(want["span_x"], abs=0.01), (name + suffix, got, want)
            assert got["span_y"] == pytest.approx(want["span_y"], abs=0.01), (name + suffix, got, want)


def comparison_rows(page) -> list[list[str]]:
    return page.evaluate("""() => [...document.querySelectorAll('#target-compare-body tr')]
        .map(tr => [...tr.children].map(c => c.textContent.trim()))""")


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]\d+)?", text)]


def test_the_target_panel_reads_the_same_digits_at_any_scale(server, page):
    rows = {}
    for name in SCALES:
        query = f"?model={name}"
        values = server.api("GET", "/api/params" + query).json()["values"]
        assert server.api("PATCH", "/api/params" + query,
                          json={"values": {"base_height": values["base_height"] * 1.2}}).status_code == 200
        step = server.api("GET", "/api/model.step" + query).content
        assert server.api("POST", "/api/reset" + query, json={}).status_code == 200
        assert server.api("PUT", "/api/target" + query, data=step).status_code == 201
        try:
            open_model(page, server, name)
            page.locator("[data-testid=target-info]").wait_for(state="visible")
            page.wait_for_function("() => document.querySelectorAll('#target-compare-body tr').length >= 5")
            rows[name] = comparison_rows(page)
            page.locator("[data-testid=target-panel]").screenshot(path=str(ARTIFACTS / f"scale-target-{name}.png"))
        finally:
            server.api("DELETE", "/api/target" + query)
    print("target panels", rows)
    tiny, unit = rows["scale_tiny"], rows["scale_unit"]
    volume = dict(zip(("label", "model", "target", "difference"), tiny[0]))
    assert volume["label"].startswith("Volume") and volume["model"] not in ("0", "0.0") and volume["target"] != "0"
    size_z = tiny[3]
    assert size_z[0].startswith("Size Z") and "0.0" not in (size_z[1], size_z[2])
    for name, scale in SCALES.items():
        for row, reference in zip(rows[name], unit):
            assert row[0] == reference[0]  # the labels
            power = 3 if row[0].startswith("Volume") else 1
            got = numbers(" ".join(row[1:]))
            want = numbers(" ".join(reference[1:]))
            assert len(got) == len(want), (row, reference)
            for g, w, is_share in zip(got, want, [False] * 3 + [True] if power == 3 else [False] * len(got)):
                expected = w if is_share else w * scale ** power  # the volume's share (%) is scale-free
                assert g == pytest.approx(expected, rel=6e-3, abs=1e-12), (name, row, reference)
