"""Browser tests for the viewer's CAD tools: part tree, measure, feature edges, section plane, keyboard orbit.

One real server (subprocess, Ollama backend on the scripted local engine) driven through the Debian chromium;
screenshots go to test-artifacts/ui/viewer-tools-*.png. The bracket's dimensions come from its parameters
(base leg along X, width along Y, upright along Z, in mm), so the measured figures are checked against them.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.fixtures_server import start_live_server
from tests.test_ui import (  # noqa: F401  (browser, page, playwright, strict_page: fixtures)
    ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, browser, page, playwright, strict_page,
)

pytestmark = pytest.mark.browser

# Model-axes point (mm) -> page coordinates of its projection on the canvas.
PROJECT = """([x, y, z]) => {
    const v = window.optim.viewer;
    const k = v.mmPerUnit();
    const p = new v.bounds.min.constructor(x / k, z / k, -y / k).project(v.camera);
    const r = v.renderer.domElement.getBoundingClientRect();
    return {x: r.left + (p.x + 1) / 2 * r.width, y: r.top + (1 - p.y) / 2 * r.height};
}"""


@pytest.fixture(scope="module")
def server(scripted_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer_tools")
    s = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": scripted_engine.url,
                           "OLLAMA_MODEL": "llava:latest", "PRELOAD_MODEL": "0"}, root / "data")
    yield s
    s.stop()




@pytest.fixture()
def tool_page(strict_page):
    return strict_page


def open_model(page, server, model: str, axes: bool = False) -> None:
    page.goto(f"{server.url}/?model={model}")
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_function("""m => {
        const v = document.querySelector('#viewer');
        return window.optim.state && window.optim.state.model === m && v.dataset.loading === 'false'
            && Number(v.dataset.glbLoads) >= 1;
    }""", arg=model)
    page.uncheck("[data-testid=toggle-grid]")
    if axes is False:
        page.uncheck("[data-testid=toggle-axes]")  # the triad's corner would count as model pixels


def canvas_shot(page, step: str, prefix: str = "viewer-tools") -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{prefix}-{step}.png"
    page.wait_for_timeout(250)  # the viewer renders on the next animation frame
    page.locator("[data-testid=viewer-canvas]").screenshot(path=str(path))
    return path


def shot(page, step: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(150)
    page.locator(".viewer-panel").screenshot(path=str(ARTIFACTS / f"viewer-tools-{step}.png"))


def model_pixels(path: Path, box=None) -> int:
    """Pixels that differ clearly from the light background, optionally within a (left, top, right, bottom) box."""
    img = Image.open(path).convert("RGB")
    if box:
        img = img.crop(box)
    bg = (243, 245, 248)
    return sum(1 for px in img.getdata() if max(abs(c - b) for c, b in zip(px, bg)) > 24)


def click_model_point(page, point_mm) -> None:
    xy = page.evaluate(PROJECT, list(point_mm))
    page.mouse.click(xy["x"], xy["y"])


def bracket_values(server) -> dict:
    assert server.api("POST", "/api/reset?model=bracket", json={}).status_code == 200
    return server.api("GET", "/api/params?model=bracket").json()["values"]


# --- part tree ---------------------------------------------------------------------------------------------------
def test_part_tree_lists_parts_hides_shows_and_highlights(server, tool_page):
    page = tool_page
    open_model(page, server, "rover")
    page.click("[data-testid=toggle-parts]")
    assert page.get_attribute("[data-testid=toggle-parts]", "aria-pressed") == "true"
    names = page.evaluate("() => window.optim.viewer.partNames()")
    rows = page.locator("[data-testid=part-row]")
    assert len(names) >= 5 and "chassis" in names
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.part)") == names
    assert page.text_content("[data-testid=parts-count]") == str(len(names))
    full = canvas_shot(page, "parts-all")
    shot(page, "part-tree")

    # Hide the chassis: it leaves the picture and can no longer be picked.
    chassis = page.locator("[data-testid=part-row][data-part=chassis]")
    chassis.locator("[data-testid=part-visible]").uncheck()
    assert chassis.get_attribute("data-visible") == "false"
    assert page.evaluate("() => window.optim.viewer.parts().find(p => p.name === 'chassis').visible") is False
    hidden = canvas_shot(page, "parts-chassis-hidden")
    assert model_pixels(hidden) < model_pixels(full) * 0.9
    centre = page.evaluate("""() => {
        const v = window.optim.viewer;
        const part = v.parts().find(p => p.name === 'chassis');
        const c = new v.bounds.constructor().setFromObject(part).getCenter(v.bounds.min.clone()).project(v.camera);
        const hit = v.pickAt({x: c.x, y: c.y});
        return hit ? hit.part.name : null;
    }""")
    assert centre != "chassis"

    # "only" isolates a part; "Show all" brings everything back.
    wheel = next(n for n in names if n.startswith("wheel"))
    page.locator(f"[data-testid=part-row][data-part={wheel}] [data-testid=part-only]").click()
    visible = page.evaluate("() => window.optim.viewer.parts().filter(p => p.visible).map(p => p.name)")
    assert visible == [wheel]
    canvas_shot(page, "parts-isolated")
    page.click("[data-testid=parts-show-all]")
    assert page.evaluate("() => window.optim.viewer.parts().every(p => p.visible)")
    assert rows.locator("[data-testid=part-visible]:checked").count() == len(names)

    # A name selects (highlights) its part, keyboard included; a click in the view marks its row.
    page.locator(f"[data-testid=part-row][data-part={wheel}] [data-testid=part-name]").focus()
    page.keyboard.press("Enter")
    assert page.get_attribute("[data-testid=picked-part]", "data-part") == wheel
    assert "picked" in page.get_attribute(f"[data-testid=part-row][data-part={wheel}]", "class")
    emissive = page.evaluate("""w => {
        const part = window.optim.viewer.parts().find(p => p.name === w);
        let e = 0; part.traverse(o => { if (o.isMesh && !o.userData.overlay) e = o.material.emissive.b; });
        return e;
    }""", wheel)
    assert emissive > 0.2, "the selected part is not highlighted"
    shot(page, "part-selected")
    hit = page.evaluate("""() => {
        const v = window.optim.viewer; const r = v.renderer.domElement.getBoundingClientRect();
        const h = v.pickAt({x: 0, y: 0});
        return h && {name: h.part.name, x: r.left + r.width / 2, y: r.top + r.height / 2};
    }""")
    assert hit, "nothing under the middle of the view"
    page.mouse.click(hit["x"], hit["y"])
    page.wait_for_function("n => document.querySelector('[data-testid=picked-part]').dataset.part === n", arg=hit["name"])
    assert page.locator("[data-testid=part-row].picked").evaluate_all("rs => rs.map(r => r.dataset.part)") == [hit["name"]]

    # The hidden set survives a rebuild of the same model (an edit) and the tree follows the new GLB.
    chassis.locator("[data-testid=part-visible]").uncheck()
    loads = int(page.get_attribute("#viewer", "data-glb-loads"))
    state = server.api("GET", "/api/params?model=rover").json()
    wheel_d = state["values"]["wheel_diameter"]
    page.evaluate("v => window.optim.commitValues({wheel_diameter: v})", 110 if wheel_d != 110 else 120)
    page.wait_for_function("n => Number(document.querySelector('#viewer').dataset.glbLoads) > n"
                           " && document.querySelector('#viewer').dataset.loading === 'false'", arg=loads)
    assert page.evaluate("() => window.optim.viewer.parts().find(p => p.name === 'chassis').visible") is False
    assert page.locator("[data-testid=part-row][data-part=chassis]").get_attribute("data-visible") == "false"
    assert server.api("POST", "/api/reset?model=rover", json={}).status_code == 200


# --- measure -----------------------------------------------------------------------------------------------------
def test_measure_part_size_and_point_distance_in_mm(server, tool_page):
    page = tool_page
    p = bracket_values(server)
    open_model(page, server, "bracket")
    page.click("[data-testid=tool-measure]")
    assert page.get_attribute("[data-testid=tool-measure]", "aria-pressed") == "true"
    panel = page.locator("[data-testid=measure-panel]")
    assert panel.is_visible() and "Click a part" in panel.text_content()

    # Two points on the base leg's top face (Z = thickness), clear of the holes (on Y = 0) and the gussets.
    t = p["thickness"]
    a = (p["base_length"] - 35.0, 5.0, t)
    b = (p["base_length"] - 5.0, 5.0, t)
    click_model_point(page, a)
    size = page.locator("[data-testid=measure-size]")
    size.wait_for()
    dims = [float(size.get_attribute(f"data-{k}")) for k in "xyz"]
    assert dims == pytest.approx([p["base_length"], p["width"], p["upright_height"]], abs=0.05), dims
    assert f"{p['base_length']:.1f} × {p['width']:.1f} × {p['upright_height']:.1f} mm" in size.text_content()
    assert page.get_attribute("#viewer", "data-measure-points") == "1"
    # three.js renames the part "bracket" (the model's root node has that name); the panels show the GLB's name
    assert page.text_content("[data-testid=picked-part]") == "Selected: bracket"
    assert size.locator("strong").text_content() == "bracket"

    click_model_point(page, b)
    distance = page.locator("[data-testid=measure-distance]")
    distance.wait_for()
    mm = float(distance.get_attribute("data-mm"))
    assert mm == pytest.approx(30.0, abs=1.0), mm  # a click lands within a pixel of the projected point
    assert "mm" in distance.text_content()
    assert page.get_attribute("#viewer", "data-measure-points") == "2"
    line = page.evaluate("""() => {
        const g = window.optim.viewer.scene.getObjectByName('measure-overlay');
        return {markers: g.children.filter(o => o.isMesh).length, lines: g.children.filter(o => o.isLine).length};
    }""")
    assert line == {"markers": 2, "lines": 1}
    assert float(page.get_attribute("[data-testid=measure-angle]", "data-deg")) == pytest.approx(0.0, abs=0.5)
    shot(page, "measure")

    # The base's top face and the upright's inner face (X = thickness) meet at a right angle.
    click_model_point(page, a)
    click_model_point(page, (t, 5.0, p["upright_height"] - 15.0))
    page.wait_for_function("() => document.querySelector('[data-testid=measure-angle]')")
    assert float(page.get_attribute("[data-testid=measure-angle]", "data-deg")) == pytest.approx(90.0, abs=0.5)
    assert float(page.get_attribute("[data-testid=measure-distance]", "data-mm")) == pytest.approx(
        ((a[0] - t) ** 2 + (p["upright_height"] - 15.0 - t) ** 2) ** 0.5, abs=1.0)
    shot(page, "measure-angle")

    # A third click starts a new pair; Escape clears; Escape again leaves the tool.
    click_model_point(page, a)
    assert page.get_attribute("#viewer", "data-measure-points") == "1"
    assert distance.count() == 0
    page.keyboard.press("Escape")
    assert page.get_attribute("#viewer", "data-measure-points") == "0"
    assert "Click a part" in panel.text_content()
    page.keyboard.press("Escape")
    assert page.get_attribute("[data-testid=tool-measure]", "aria-pressed") == "false"
    assert panel.is_hidden()


# --- edges and section -------------------------------------------------------------------------------------------
def test_edges_overlay_and_section_plane(server, tool_page):
    page = tool_page
    p = bracket_values(server)
    open_model(page, server, "bracket")
    plain = canvas_shot(page, "edges-off")
    page.check("[data-testid=toggle-edges]")
    edges = int(page.get_attribute("#viewer", "data-edges"))
    assert edges >= 12, edges  # at least the outline of the L; holes and fillet add more
    assert page.get_attribute("#viewer", "data-edges-source") == "brep"  # the GLB's own CAD edges
    assert page.locator("[data-testid=edges-angle]").is_disabled()  # no threshold for B-rep edges
    lined = canvas_shot(page, "edges-on")
    assert lined.read_bytes() != plain.read_bytes()
    # A GLB without B-rep edges (a foreign file) falls back to the mesh's crease edges, where a lower threshold
    # angle finds more (the fillet's and holes' facets).
    page.evaluate("""() => {
        const v = window.optim.viewer; const doomed = [];
        v.model.traverse(o => { if (o.userData.optim === 'brep_edges') doomed.push(o); });
        for (const o of doomed) o.removeFromParent();
        v.events.dispatchEvent(new Event('model'));
    }""")
    assert page.get_attribute("#viewer", "data-edges-source") == "mesh"
    crease = int(page.get_attribute("#viewer", "data-edges"))
    assert crease >= 12 and page.locator("[data-testid=edges-angle]").is_enabled()
    page.fill("[data-testid=edges-angle]", "5")
    page.press("[data-testid=edges-angle]", "Enter")
    page.wait_for_function("n => Number(document.querySelector('#viewer').dataset.edges) > n", arg=crease)
    page.fill("[data-testid=edges-angle]", "30")
    page.press("[data-testid=edges-angle]", "Enter")
    # The same GLB loaded again brings the B-rep edges back (the section below cuts them too).
    assert page.evaluate("() => window.optim.viewer.load(document.querySelector('#viewer').dataset.shownUrl)")
    assert page.get_attribute("#viewer", "data-edges-source") == "brep"
    assert int(page.get_attribute("#viewer", "data-edges")) == edges

    # Section across X at the middle, seen from the top (model X is screen right there): the right half goes.
    page.click("[data-testid=view-top]")
    top = canvas_shot(page, "section-off-top")
    width, height = Image.open(top).size
    mid = page.evaluate(PROJECT, [p["base_length"] / 2, 0, 0])["x"] - page.locator("#viewer-canvas").bounding_box()["x"]
    height -= 30  # the hint line at the bottom of the view is not the model
    right, left = (int(mid) + 3, 0, width, height), (0, 0, int(mid) - 3, height)
    assert model_pixels(top, right) > 1000 and model_pixels(top, left) > 1000
    assert page.locator("[data-testid=section-offset]").is_disabled()
    page.select_option("[data-testid=section-axis]", "x")
    assert page.locator("[data-testid=section-offset]").is_enabled()
    assert page.get_attribute("#viewer", "data-section") == "x"
    assert float(page.get_attribute("#viewer", "data-section-mm")) == pytest.approx(p["base_length"] / 2, abs=0.01)
    assert page.text_content("[data-testid=section-value]") == f"X = {p['base_length'] / 2:.1f} mm"
    cut = canvas_shot(page, "section-x-top")
    assert model_pixels(cut, right) < model_pixels(top, right) * 0.05
    assert model_pixels(cut, left) > model_pixels(top, left) * 0.8
    # What is cut away cannot be picked or measured.
    assert page.evaluate("""xy => {
        const v = window.optim.viewer; const r = v.renderer.domElement.getBoundingClientRect();
        return v.pickAt({x: (xy.x - r.left) / r.width * 2 - 1, y: -((xy.y - r.top) / r.height) * 2 + 1});
    }""", page.evaluate(PROJECT, [p["base_length"] - 5.0, 5.0, p["thickness"]])) is None

    # The cut is capped: seen from the iso view, the section face shows the cap colour.
    page.click("[data-testid=view-iso]")
    iso = canvas_shot(page, "section-x-iso")
    caps = sum(1 for r, g, b in Image.open(iso).convert("RGB").getdata() if r > 180 and g < 80 and b < 110)
    assert caps > 200, caps
    shot(page, "section")
    # A click on the cap lands on the section face (X = the plane), not on the inside of the solid behind it.
    hit = page.evaluate("""xy => {
        const v = window.optim.viewer; const r = v.renderer.domElement.getBoundingClientRect();
        const h = v.pickAt({x: (xy.x - r.left) / r.width * 2 - 1, y: -((xy.y - r.top) / r.height) * 2 + 1});
        return h && {x: h.point.x * v.mmPerUnit(), section: Boolean(h.section), part: h.part.name};
    }""", page.evaluate(PROJECT, [p["base_length"] / 2, 0, p["thickness"] / 2]))
    assert hit and hit["section"] and hit["x"] == pytest.approx(p["base_length"] / 2, abs=0.01), hit

    # The slider moves the plane (keyboard too); flip keeps the other side.
    slider = page.locator("[data-testid=section-offset]")
    slider.focus()
    page.keyboard.press("End")
    assert float(page.get_attribute("#viewer", "data-section-mm")) == pytest.approx(p["base_length"], abs=0.01)
    slider.fill("250")
    assert float(page.get_attribute("#viewer", "data-section-mm")) == pytest.approx(p["base_length"] / 4, abs=0.01)
    page.check("[data-testid=section-flip]")
    page.click("[data-testid=view-top]")
    flipped = canvas_shot(page, "section-x-flipped-top")
    # (a perspective view: the plane's top edge, nearer the camera, projects further left than its foot)
    left_edge = min(page.evaluate(PROJECT, [p["base_length"] / 4, 0, z])["x"] for z in (0, p["upright_height"]))
    quarter = left_edge - page.locator("#viewer-canvas").bounding_box()["x"]
    assert model_pixels(flipped, (0, 0, int(quarter) - 3, height)) < 300
    # Section off: the whole model is back; a model rebuild keeps edges on.
    page.select_option("[data-testid=section-axis]", "")
    back = canvas_shot(page, "section-off-again")
    assert model_pixels(back, right) > model_pixels(top, right) * 0.9
    assert page.get_attribute("#viewer", "data-section") is None
    loads = int(page.get_attribute("#viewer", "data-glb-loads"))
    page.evaluate("v => window.optim.commitValues({width: v})", p["width"] + 10)
    page.wait_for_function("n => Number(document.querySelector('#viewer').dataset.glbLoads) > n"
                           " && document.querySelector('#viewer').dataset.loading === 'false'", arg=loads)
    assert int(page.get_attribute("#viewer", "data-edges")) >= 12
    assert server.api("POST", "/api/reset?model=bracket", json={}).status_code == 200


# --- keyboard orbit ----------------------------------------------------------------------------------------------
CAMERA = """() => {
    const v = window.optim.viewer;
    return {pos: v.camera.position.toArray(), dist: v.camera.position.distanceTo(v.controls.target)};
}"""


def test_keyboard_orbit_and_zoom(server, tool_page):
    page = tool_page
    open_model(page, server, "rover")
    canvas = page.locator("[data-testid=viewer-canvas]")
    assert canvas.get_attribute("tabindex") == "0" and "Arrow keys" in canvas.get_attribute("aria-label")
    # Reachable with Tab from the toolbar before it.
    page.focus("[data-testid=view-fit]")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "viewer-canvas":
            break
    assert page.evaluate("() => document.activeElement.id") == "viewer-canvas"
    start = page.evaluate(CAMERA)
    page.keyboard.press("ArrowLeft")
    turned = page.evaluate(CAMERA)
    assert turned["pos"] != start["pos"] and turned["dist"] == pytest.approx(start["dist"], rel=1e-3)
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowRight")
    assert page.evaluate(CAMERA)["pos"] != turned["pos"]
    before = page.evaluate(CAMERA)["dist"]
    page.keyboard.press("+")
    closer = page.evaluate(CAMERA)["dist"]
    assert closer < before * 0.9
    page.keyboard.press("-")
    page.keyboard.press("-")
    assert page.evaluate(CAMERA)["dist"] > before * 1.1
    assert page.evaluate("() => window.scrollY") == 0  # the arrows moved the view, not the page
    canvas_shot(page, "keyboard-orbit")
    page.keyboard.press("Home")
    fitted = page.evaluate(CAMERA)["dist"]
    page.click("[data-testid=view-fit]")
    assert page.evaluate(CAMERA)["dist"] == pytest.approx(fitted, rel=1e-3)


# --- views, projection, axes triad -------------------------------------------------------------------------------
DIRECTION = """() => {
    const v = window.optim.viewer;
    return v.camera.position.clone().sub(v.controls.target).normalize().toArray();
}"""


def colour_pixels(path: Path, box) -> dict:
    img = Image.open(path).convert("RGB").crop(box)
    counts = {"red": 0, "green": 0, "blue": 0}
    for r, g, b in img.getdata():
        if r > 170 and g < 110 and b < 110:
            counts["red"] += 1
        elif g > 120 and r < 110 and b < 120:
            counts["green"] += 1
        elif b > 170 and r < 100 and g < 170:
            counts["blue"] += 1
    return counts


def test_views_orthographic_projection_and_axes_triad(server, tool_page):
    page = tool_page
    p = bracket_values(server)
    open_model(page, server, "bracket", axes=True)
    # Back, left and bottom: the camera looks from -X, from the model's +Y (scene -Z) and from below.
    for view, expected in (("back", [-1, 0, 0]), ("left", [0, 0, -1]), ("bottom", [0, -1, 0])):
        page.click(f"[data-testid=view-{view}]")
        assert page.evaluate(DIRECTION) == pytest.approx(expected, abs=1e-3), view
        # the server renders four views; the others download as iso
        assert "view=iso" in page.get_attribute("[data-testid=download-png]", "href")
    canvas_shot(page, "view-bottom")
    page.click("[data-testid=view-side]")
    assert "view=side" in page.get_attribute("[data-testid=download-png]", "href")

    # The triad sits in the bottom-left corner with the three axis colours; it can be hidden.
    page.click("[data-testid=view-iso]")
    with_axes = canvas_shot(page, "axes-triad")
    width, height = Image.open(with_axes).size
    corner = (0, height - 110, 110, height)
    counts = colour_pixels(with_axes, corner)
    assert all(n > 20 for n in counts.values()), counts
    page.uncheck("[data-testid=toggle-axes]")
    assert page.get_attribute("#viewer", "data-triad") == "hidden"
    assert sum(colour_pixels(canvas_shot(page, "axes-hidden"), corner).values()) < 10

    # Orthographic: same view direction, parallel projection; Fit frames the model; picking and measuring work.
    perspective = canvas_shot(page, "perspective")
    before = page.evaluate(DIRECTION)
    page.check("[data-testid=toggle-ortho]")
    assert page.get_attribute("#viewer", "data-projection") == "orthographic"
    assert page.evaluate("() => window.optim.viewer.camera.isOrthographicCamera") is True
    assert page.evaluate(DIRECTION) == pytest.approx(before, abs=1e-6)
    ortho = canvas_shot(page, "orthographic")
    assert ortho.read_bytes() != perspective.read_bytes()
    assert model_pixels(ortho) == pytest.approx(model_pixels(perspective), rel=0.35)
    page.click("[data-testid=view-fit]")
    page.click("[data-testid=tool-measure]")
    t = p["thickness"]
    click_model_point(page, (p["base_length"] - 35.0, 5.0, t))
    click_model_point(page, (p["base_length"] - 5.0, 5.0, t))
    page.locator("[data-testid=measure-distance]").wait_for()
    assert float(page.get_attribute("[data-testid=measure-distance]", "data-mm")) == pytest.approx(30.0, abs=1.0)
    shot(page, "orthographic-measure")
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    # The keyboard zooms the orthographic view too (its zoom, not its distance).
    page.focus("#viewer-canvas")
    zoom = page.evaluate("() => window.optim.viewer.camera.zoom")
    page.keyboard.press("+")
    assert page.evaluate("() => window.optim.viewer.camera.zoom") > zoom * 1.1
    page.uncheck("[data-testid=toggle-ortho]")
    assert page.get_attribute("#viewer", "data-projection") == "perspective"
    assert page.evaluate(DIRECTION) == pytest.approx(before, abs=1e-6)


def test_tools_by_keyboard_in_dark_mode(server, tool_page):
    """The part tree and Measure without a mouse (select a part from the tree: its size shows), in dark mode."""
    page = tool_page
    page.emulate_media(color_scheme="dark")
    open_model(page, server, "rover", axes=True)
    page.focus("[data-testid=toggle-parts]")
    page.keyboard.press("Enter")
    page.focus("[data-testid=tool-measure]")
    page.keyboard.press("Enter")
    assert page.get_attribute("[data-testid=tool-measure]", "aria-pressed") == "true"
    page.locator("[data-testid=part-row][data-part=chassis] [data-testid=part-name]").focus()
    page.keyboard.press("Enter")
    size = page.locator("[data-testid=measure-size]")
    size.wait_for()
    values = server.api("GET", "/api/params?model=rover").json()["values"]
    assert float(size.get_attribute("data-x")) == pytest.approx(values["chassis_length"], abs=0.05)
    assert float(size.get_attribute("data-y")) == pytest.approx(values["chassis_width"], abs=0.05)
    assert float(size.get_attribute("data-z")) == pytest.approx(values["chassis_thickness"], abs=0.05)
    page.locator("[data-testid=part-row][data-part=chassis] [data-testid=part-visible]").focus()
    page.keyboard.press("Space")
    assert page.get_attribute("[data-testid=part-row][data-part=chassis]", "data-visible") == "false"
    page.keyboard.press("Space")
    for testid in ("part-tree", "measure-panel"):
        bg = page.evaluate("t => getComputedStyle(document.querySelector(`[data-testid=${t}]`)).backgroundColor", testid)
        r, g, b = (int(x) for x in bg[bg.index("(") + 1:bg.index(")")].split(",")[:3])
        assert r + g + b < 150, (testid, bg)
    page.check("[data-testid=toggle-edges]")
    page.select_option("[data-testid=section-axis]", "y")
    shot(page, "dark")


def test_without_webgl_the_tools_are_hidden(server, playwright):  # noqa: F811
    """The no-WebGL fallback (server renders of four views) hides the tools and the views it cannot show."""
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + ["--disable-3d-apis"])
    try:
        p = b.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        p.on("pageerror", lambda exc: errors.append(str(exc)))
        p.goto(server.url + "/")
        p.wait_for_selector("body[data-ready=true]")
        p.locator("[data-testid=viewer-fallback]").wait_for()
        for testid in ("toggle-parts", "tool-measure", "toggle-edges", "section-axis", "toggle-ortho", "toggle-axes",
                       "view-back", "view-left", "view-bottom"):
            assert p.locator(f"[data-testid={testid}]").is_hidden(), testid
        for testid in ("view-front", "view-side", "view-top", "view-iso"):
            assert p.locator(f"[data-testid={testid}]").is_visible(), testid
        assert not errors, errors
    finally:
        b.close()
