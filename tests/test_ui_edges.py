"""Browser tests for issue 18's B-rep edges: the viewer's "Edges" toggle draws the edges the server exported in the
GLB (one LINES object per part), hides a part's edges with the part, and clips them with the section plane.

One real server (Ollama backend on the scripted engine), the Debian chromium; screenshots go to
test-artifacts/ui/edges-*.png.
"""
from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.test_ui import ARTIFACTS, browser, page, playwright, strict_page  # noqa: F401  (fixtures)
from tests.test_ui_viewer_tools import PROJECT, bracket_values, canvas_shot, model_pixels, open_model
from tests.test_ui_viewer_tools import server  # noqa: F401  (the module's live server)

pytestmark = pytest.mark.browser

EDGE_LINES = """() => {
    const out = [];
    window.optim.viewer.model.traverse(o => {
        if (o.isLineSegments && o.userData.optim === 'brep_edges') {
            let shown = true; for (let n = o; n; n = n.parent) shown = shown && n.visible;
            out.push({part: o.parent.name, edges: o.userData.edges, shown, segments: o.geometry.index.count / 2});
        }
    });
    return out;
}"""


def exported_edges(server, model: str) -> dict:
    """{part: (B-rep edges, line segments)} as the server's GLB of the model's current design carries them."""
    data = server.api("GET", f"/api/model.glb?model={model}").content
    length = int.from_bytes(data[12:16], "little")
    doc = json.loads(data[20:20 + length])
    out = {}
    for node in doc["nodes"]:
        for child in node.get("children", []):
            edge_node = doc["nodes"][child]
            if edge_node.get("extras", {}).get("optim") == "brep_edges":
                (primitive,) = doc["meshes"][edge_node["mesh"]]["primitives"]
                assert primitive["mode"] == 1
                out[node["name"]] = (edge_node["extras"]["edges"], doc["accessors"][primitive["indices"]]["count"] // 2)
    return out


def dark_pixels(path) -> int:
    """Pixels of the edges' near-black colour (#111827); shaded parts are never that dark."""
    return sum(1 for r, g, b in Image.open(path).convert("RGB").getdata() if r < 45 and g < 50 and b < 65)


def test_the_edges_are_the_brep_edges_the_server_exported(server, strict_page):
    page = strict_page
    assert server.api("POST", "/api/reset?model=rover", json={}).status_code == 200
    open_model(page, server, "rover")
    exported = exported_edges(server, "rover")
    assert len(exported) >= 5 and all(n > 0 for n, _ in exported.values())
    lines = page.evaluate(EDGE_LINES)
    assert {line["part"] for line in lines} == set(exported) and not any(line["shown"] for line in lines)  # off
    off = canvas_shot(page, "off", prefix="edges")
    page.check("[data-testid=toggle-edges]")
    viewer = page.locator("#viewer")
    assert viewer.get_attribute("data-edges-source") == "brep"
    assert int(viewer.get_attribute("data-edge-objects")) == len(lines) == len(exported) > 0
    assert int(viewer.get_attribute("data-edges")) == sum(n for n, _ in exported.values())
    assert int(viewer.get_attribute("data-edges-shown")) == sum(n for n, _ in exported.values())
    lines = page.evaluate(EDGE_LINES)
    assert all(line["shown"] for line in lines)
    assert {line["part"]: (line["edges"], line["segments"]) for line in lines} == exported
    on = canvas_shot(page, "on", prefix="edges")
    assert dark_pixels(on) > dark_pixels(off) + 500, (dark_pixels(on), dark_pixels(off))


def test_a_hidden_part_hides_its_edges(server, strict_page):
    page = strict_page
    open_model(page, server, "rover")
    exported = exported_edges(server, "rover")
    page.check("[data-testid=toggle-edges]")
    page.click("[data-testid=toggle-parts]")
    viewer = page.locator("#viewer")
    total = sum(n for n, _ in exported.values())
    page.locator("[data-testid=part-row][data-part=chassis] [data-testid=part-visible]").uncheck()
    assert int(viewer.get_attribute("data-edges-shown")) == total - exported["chassis"][0]
    by_part = {line["part"]: line["shown"] for line in page.evaluate(EDGE_LINES)}
    assert by_part.pop("chassis") is False and all(by_part.values())
    # Isolate one wheel, then hide it too: no part is shown, and no edge line is left in the picture.
    wheel = next(name for name in exported if name.startswith("wheel"))
    page.locator(f"[data-testid=part-row][data-part={wheel}] [data-testid=part-only]").click()
    assert int(viewer.get_attribute("data-edges-shown")) == exported[wheel][0]
    isolated = canvas_shot(page, "isolated", prefix="edges")
    assert dark_pixels(isolated) > 100  # the wheel's own edges
    page.locator(f"[data-testid=part-row][data-part={wheel}] [data-testid=part-visible]").uncheck()
    assert int(viewer.get_attribute("data-edges-shown")) == 0
    page.click("[data-testid=toggle-parts]")  # the tree's panel lies over the view
    empty = canvas_shot(page, "all-hidden", prefix="edges")
    width, height = Image.open(empty).size
    assert model_pixels(empty, (0, 0, width, height - 30)) == 0  # (the hint line at the bottom is not the model)
    page.uncheck("[data-testid=toggle-edges]")
    assert canvas_shot(page, "all-hidden-off", prefix="edges").read_bytes() == empty.read_bytes()
    page.check("[data-testid=toggle-edges]")
    page.click("[data-testid=toggle-parts]")
    page.click("[data-testid=parts-show-all]")
    assert int(viewer.get_attribute("data-edges-shown")) == total


def test_the_section_plane_cuts_the_edges(server, strict_page):
    """Seen from the top with only edges drawing dark lines: past the section plane no edge is left."""
    page = strict_page
    p = bracket_values(server)
    open_model(page, server, "bracket")
    page.check("[data-testid=toggle-edges]")
    page.click("[data-testid=view-top]")
    full = canvas_shot(page, "section-off", prefix="edges")
    x0 = page.locator("#viewer-canvas").bounding_box()["x"]
    mid = int(page.evaluate(PROJECT, [p["base_length"] / 2, 0, 0])["x"] - x0)
    width, height = Image.open(full).size

    def right_dark(path) -> int:
        img = Image.open(path).convert("RGB").crop((mid + 3, 0, width, height - 30))
        # anti-aliased 1-pixel lines over the light grey plate (155, 163, 174): far darker than any of its faces
        return sum(1 for r, g, b in img.getdata() if r + g + b < 330 and r < 120)  # (not the red cap)

    assert right_dark(full) > 200
    page.select_option("[data-testid=section-axis]", "x")
    cut = canvas_shot(page, "section-x", prefix="edges")
    assert right_dark(cut) < 20, right_dark(cut)
    page.select_option("[data-testid=section-axis]", "")
