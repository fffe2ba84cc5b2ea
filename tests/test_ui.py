"""The browser UI against the real server (subprocess), driven through the Debian chromium with Playwright.

Screenshots of every step go to test-artifacts/ui/. Two servers: `live_server` runs the fine-tuned backend on
the tiny LLaVA-OneVision (real worker process, gibberish text), `live_server_scripted` an Ollama backend whose
local engine always proposes the same changes, so the proposals table and its markup can be checked exactly.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with playwright_sync.sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright):
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()


@pytest.fixture()
def page(browser, request):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    p = context.new_page()
    p.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    # The page runs under the server's Content-Security-Policy: anything it blocks is a bug in the page or the policy
    p.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    p.shot = lambda step: _screenshot(p, request.node.name, step)
    yield p
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


# Console lines that are not the page's: failed fetches (a 404 for a missing target is expected) and the software
# GL driver's performance notes (screenshots read pixels back).
NOT_THE_PAGES = ("Failed to load resource", "GL Driver Message")


@pytest.fixture()
def strict_page(page):
    """The `page` fixture (which fails on page errors and CSP reports), failing on console errors and warnings
    too (three.js reports shader and geometry problems as console warnings)."""
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}")
            if m.type in ("error", "warning") and not any(n in m.text for n in NOT_THE_PAGES) else None)
    yield page
    assert not messages, messages


def _screenshot(p, test_name: str, step: str, locator=None) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{test_name}-{step}.png"
    (locator or p).screenshot(path=str(path))
    return path


def open_app(page, server):
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    wait_glb_loads(page, 1)


def glb_loads(page) -> int:
    return int(page.get_attribute("#viewer", "data-glb-loads") or 0)


def wait_glb_loads(page, at_least: int) -> None:
    page.wait_for_function(
        "n => Number(document.querySelector('#viewer').dataset.glbLoads) >= n"
        " && document.querySelector('#viewer').dataset.loading === 'false'", arg=at_least)


def wait_current_model_shown(page) -> None:
    """Wait until the 3D view shows the GLB of the page's current design version."""
    page.wait_for_function("""() => {
        const v = document.querySelector('#viewer');
        const shown = new URL(v.dataset.shownUrl || '/', location.href).searchParams.get('v');
        return v.dataset.loading === 'false' && shown === String(window.optim.state.version);
    }""")


def history_count(page) -> int:
    return page.locator("[data-testid=history-entry]").count()


def wait_history_count(page, count: int) -> None:
    page.wait_for_function("n => document.querySelectorAll('[data-testid=history-entry]').length === n", arg=count)


def server_values(server) -> dict:
    r = server.api("GET", "/api/params")
    assert r.status_code == 200
    return r.json()["values"]


def model_pixel_share(png_path: Path) -> float:
    """Share of canvas pixels that differ clearly from the viewer's background colour (grid hidden)."""
    img = Image.open(png_path).convert("RGB")
    bg = (243, 245, 248)
    pixels = list(img.getdata())
    hits = sum(1 for px in pixels if max(abs(c - b) for c, b in zip(px, bg)) > 24)
    return hits / len(pixels)


def png_file(size=(64, 48), color=(200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


# --- the 3D view -----------------------------------------------------------------------------------------------
def test_page_shows_model_and_viewer_controls(live_server, page):
    open_app(page, live_server)
    canvas = page.locator("[data-testid=viewer-canvas]")
    page.shot("loaded")
    page.uncheck("[data-testid=toggle-grid]")
    page.wait_for_timeout(300)
    iso = _screenshot(page, "viewer", "iso", canvas)
    assert model_pixel_share(iso) > 0.08, "the canvas shows (almost) no model"

    # Parameter panel generated from the schema: every parameter has a row, grouped, units and ranges shown.
    schema = live_server.api("GET", "/api/params").json()["schema"]
    assert page.locator("[data-testid^=row-]").count() == len(schema)
    groups = {p["group"] for p in schema}
    assert set(page.locator("details.param-group").evaluate_all("els => els.map(e => e.dataset.group)")) == groups
    first_numeric = next(p for p in schema if p["type"] != "bool")
    assert page.input_value(f"#param-{first_numeric['name']}") != ""

    # Preset views and wireframe visibly change the picture.
    page.click("[data-testid=view-top]")
    page.wait_for_timeout(300)
    top = _screenshot(page, "viewer", "top", canvas)
    assert top.read_bytes() != iso.read_bytes()
    page.check("[data-testid=toggle-wireframe]")
    page.wait_for_timeout(300)
    wire = _screenshot(page, "viewer", "top-wireframe", canvas)
    assert model_pixel_share(wire) < model_pixel_share(top)
    page.uncheck("[data-testid=toggle-wireframe]")
    page.click("[data-testid=view-iso]")

    # Picking: click the projected centre of a named part and its name is shown.
    target = page.evaluate("""() => {
        const v = window.optim.viewer;
        const names = v.partNames();
        let best = null;
        v.model.traverse(o => { if (!best && o.name && names.includes(o.name)) best = o; });
        const box = new v.bounds.constructor().setFromObject(best);
        const c = box.getCenter(box.min.clone()).project(v.camera);
        const r = v.renderer.domElement.getBoundingClientRect();
        return {name: best.name, names, x: r.left + (c.x + 1) / 2 * r.width, y: r.top + (1 - c.y) / 2 * r.height};
    }""")
    assert len(target["names"]) >= 3, f"expected one GLB node per part, got {target['names']}"
    page.mouse.click(target["x"], target["y"])
    picked = page.locator("[data-testid=picked-part]")
    picked.wait_for(state="visible")
    assert picked.get_attribute("data-part") in target["names"]
    page.shot("picked")

    # Downloads point at the API and serve files.
    for fmt in ("glb", "stl", "step"):
        href = page.get_attribute(f"[data-testid=download-{fmt}]", "href")
        r = live_server.api("GET", href)
        assert r.status_code == 200 and len(r.content) > 100, fmt


# --- editing, history, undo ------------------------------------------------------------------------------------
def test_edit_updates_model_and_history_and_undo_restores(live_server, page):
    open_app(page, live_server)
    glb_requests: list[str] = []
    page.on("request", lambda req: glb_requests.append(req.url) if "/api/model.glb" in req.url else None)
    before = server_values(live_server)
    entries, loads = history_count(page), glb_loads(page)
    old = before["wheel_diameter"]
    new = 130 if old != 130 else 110

    page.fill("#param-wheel_diameter", str(new))
    page.press("#param-wheel_diameter", "Enter")
    wait_history_count(page, entries + 1)
    wait_glb_loads(page, loads + 1)
    assert server_values(live_server)["wheel_diameter"] == new
    assert glb_requests, "the GLB was not fetched again after the edit"
    newest = page.locator("[data-testid=history-entry]").first
    assert newest.get_attribute("data-state") == "current"
    assert "wheel_diameter" in (newest.get_attribute("title") or "")
    page.shot("after-edit")

    # The slider commits on release, as one more history entry.
    slider = page.locator("[data-testid=param-axle_spacing-slider]")
    slider_old = before["axle_spacing"]
    slider_new = 120 if slider_old != 120 else 100
    slider.fill(str(slider_new))
    wait_history_count(page, entries + 2)
    assert server_values(live_server)["axle_spacing"] == slider_new
    assert page.input_value("#param-axle_spacing") == str(slider_new)

    # Ctrl+Z (focus outside any text input) undoes, twice; Ctrl+Shift+Z and the Redo button redo.
    page.click("h2 >> text=Parameters")
    loads = glb_loads(page)
    page.keyboard.press("Control+z")
    wait_value(page, "axle_spacing", slider_old)
    page.keyboard.press("Control+z")
    wait_value(page, "wheel_diameter", old)
    wait_current_model_shown(page)
    assert glb_loads(page) > loads
    assert server_values(live_server)["wheel_diameter"] == old
    assert page.locator("[data-testid=history-entry][data-state=redoable]").count() == 2
    page.shot("after-undo")
    page.keyboard.press("Control+Shift+z")
    wait_value(page, "wheel_diameter", new)
    assert server_values(live_server)["wheel_diameter"] == new
    page.click("[data-testid=redo]")
    wait_value(page, "axle_spacing", slider_new)
    assert page.locator("[data-testid=redo]").is_disabled()

    # Clicking the first edit's row shows that state as a ghost (nothing applied); Restore makes it one new entry,
    # which one undo takes back.
    version = live_server.api("GET", "/api/history").json()["version"]
    page.click(f"[data-testid=history-entry][data-index='{entries}']")
    page.wait_for_function("() => document.querySelector('#viewer').dataset.preview === 'shown'")
    assert json.loads(page.get_attribute("#viewer", "data-preview-values")) == {"axle_spacing": slider_old}
    assert "Axle" in wait_text(page, "history-restore", "would change")
    assert live_server.api("GET", "/api/history").json()["version"] == version
    page.shot("history-preview")
    page.click("[data-testid=history-restore-apply]")
    wait_value(page, "axle_spacing", slider_old)
    # The history list is drawn again after the values (its own request): wait for the new row, then check it leads.
    page.wait_for_selector("[data-testid=history-entry][data-source=restore]")
    assert page.locator("[data-testid=history-entry]").first.get_attribute("data-source") == "restore"
    assert page.get_attribute("#viewer", "data-preview") == "none"
    assert page.locator("[data-testid=history-restore]").is_hidden()
    assert server_values(live_server)["wheel_diameter"] == new
    page.click("[data-testid=undo]")
    wait_value(page, "axle_spacing", slider_new)

    # Ctrl+Z while typing in a number input is the input's own undo, not a design undo.
    version = live_server.api("GET", "/api/history").json()["version"]
    page.click("#param-chassis_width")
    page.keyboard.press("Control+z")
    page.wait_for_timeout(300)
    assert live_server.api("GET", "/api/history").json()["version"] == version


def _fmt(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def wait_text(page, testid: str, pattern: str, timeout: float = 30_000) -> str:
    page.wait_for_function("([id, re]) => new RegExp(re).test("
                           "document.querySelector(`[data-testid=${id}]`).textContent)", arg=[testid, pattern],
                           timeout=timeout)
    return page.text_content(f"[data-testid={testid}]")


def wait_value(page, name: str, value) -> None:
    """Wait until the parameter's number input shows `value`."""
    page.wait_for_function("([id, v]) => document.getElementById(id).value === v", arg=[f"param-{name}", _fmt(value)])


def test_invalid_values_are_explained_and_change_nothing(live_server, page):
    open_app(page, live_server)
    before = server_values(live_server)
    patches: list[str] = []
    page.on("request", lambda req: patches.append(req.url) if req.method == "PATCH" else None)

    # Client-side range check: nothing is sent.
    page.fill("#param-chassis_length", "9999")
    page.press("#param-chassis_length", "Enter")
    error = page.locator("[data-testid=param-chassis_length-error]")
    error.wait_for(state="visible")
    assert "between 80 and 400" in error.text_content()
    assert not patches
    page.shot("client-error")

    # The server's 422 message is shown too (sent past the client check, as a stale page could).
    page.evaluate("() => window.optim.params.commit(window.optim.params.rows.get('chassis_length'), 5000)")
    page.wait_for_function("() => /must be between/.test(document.querySelector("
                           "'[data-testid=param-chassis_length-error]').textContent)")
    assert patches, "the out-of-range value should have reached the server"
    assert server_values(live_server) == before
    page.shot("server-error")


def test_version_conflict_banner_and_reload(live_server, page):
    open_app(page, live_server)
    state = live_server.api("GET", "/api/params").json()
    # Another client edits behind this page's back.
    other = 150 if state["values"]["chassis_width"] != 150 else 160
    r = live_server.api("PATCH", "/api/params", json={"version": state["version"], "values": {"chassis_width": other}})
    assert r.status_code == 200
    page.fill("#param-fork_width", "60" if state["values"]["fork_width"] != 60 else "70")
    page.press("#param-fork_width", "Enter")
    banner = page.locator("[data-testid=banner]")
    banner.wait_for(state="visible")
    assert "changed elsewhere" in banner.text_content()
    assert server_values(live_server)["fork_width"] == state["values"]["fork_width"]
    page.shot("conflict")
    page.click("[data-testid=banner-reload]")
    banner.wait_for(state="hidden")
    wait_value(page, "chassis_width", other)


# --- model status ----------------------------------------------------------------------------------------------
def test_model_load_shows_progress_and_page_stays_usable(live_server, page):
    assert live_server.api("POST", "/api/vlm/unload").status_code == 200
    open_app(page, live_server)
    status = page.locator("[data-testid=vlm-status]")
    page.wait_for_function("() => document.querySelector('[data-testid=vlm-status]').dataset.state === 'unloaded'")
    assert page.text_content("[data-testid=vlm-backend]") == "Fine-tuned"
    page.click("[data-testid=vlm-load]")
    page.locator("[data-testid=vlm-progress]").wait_for(state="visible")
    assert re.search(r"\d+%", page.text_content("[data-testid=vlm-progress-text]"))
    page.shot("loading")
    # The page keeps working while the model loads.
    page.click("[data-testid=view-side]")
    page.wait_for_function("() => document.querySelector('[data-testid=vlm-status]').dataset.state === 'ready'",
                           timeout=120_000)
    assert page.locator("[data-testid=vlm-progress]").is_hidden()
    assert "RAM" in page.text_content("[data-testid=vlm-memory]")
    assert status.get_attribute("data-state") == "ready"
    page.shot("ready")


# --- assistant -------------------------------------------------------------------------------------------------
def test_assistant_streams_tiny_model_answer(live_server, page):
    open_app(page, live_server)
    # Record every length the answer panel passes through: streamed text grows in steps, not all at once.
    page.evaluate("""() => {
        window.__answerLengths = [];
        const node = document.querySelector('[data-testid=vlm-answer]');
        new MutationObserver(() => window.__answerLengths.push(node.textContent.length))
            .observe(node, {childList: true, characterData: true, subtree: true});
    }""")
    page.fill("[data-testid=vlm-prompt]", "make the wheels bigger")
    page.click("[data-testid=vlm-send]")
    page.wait_for_function("() => document.querySelector('[data-testid=vlm-answer]').dataset.state === 'done'",
                           timeout=120_000)
    lengths = [n for n in page.evaluate("window.__answerLengths") if n > 0]
    assert len(set(lengths)) >= 2, f"the answer did not stream in: {lengths}"
    assert page.text_content("[data-testid=vlm-answer]").strip()
    assert page.locator("[data-testid=vlm-error]").is_hidden()
    page.shot("answered")


def test_assistant_proposals_apply_and_undo(live_server_scripted, page):
    server = live_server_scripted
    open_app(page, server)
    before = server_values(server)
    page.fill("[data-testid=vlm-prompt]", "more ground clearance please")
    page.set_input_files("[data-testid=vlm-image]",
                         files=[{"name": "photo.png", "mimeType": "image/png", "buffer": png_file()}])
    page.locator("[data-testid=image-preview]").wait_for(state="visible")
    page.check("[data-testid=vlm-include-render]")
    page.click("[data-testid=vlm-send]")
    page.locator("[data-testid=proposals]").wait_for(state="visible")
    page.shot("proposals")

    rows = page.locator("[data-testid=proposal-row]")
    assert rows.count() == 3
    verdicts = {r.get_attribute("data-valid") for r in rows.all()}
    assert verdicts == {"true", "false"}
    rejected = page.locator("[data-testid=proposal-row][data-valid=false]")
    assert not rejected.locator("[data-testid=proposal-check]").is_checked()  # never ticked for the user
    assert "rejected" in rejected.locator("[data-testid=proposal-verdict]").text_content()
    assert rejected.locator("[data-testid=proposal-value]").input_value() == "9999"

    # Markup in the model's text is shown as text and never becomes an element.
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("img[src=x]").count() == 0
    assert "<img src=x onerror=" in page.text_content("[data-testid=vlm-summary]")
    assert "<img src=x onerror=" in page.text_content("[data-testid=proposals-table]")

    # Apply only the wheel change.
    entries = history_count(page)
    page.uncheck("[data-testid=proposal-check][data-parameter=pan_tilt_z]")
    page.click("[data-testid=apply-selected]")
    wait_value(page, "wheel_diameter", 120)
    wait_history_count(page, entries + 1)
    newest = page.locator("[data-testid=history-entry]").first
    assert newest.get_attribute("data-source") == "vlm"
    after = server_values(server)
    assert after["wheel_diameter"] == 120 and after["pan_tilt_z"] == before["pan_tilt_z"]
    assert after["chassis_length"] == before["chassis_length"]

    # "Apply all" applies what is left (the rejected row never), then undo reverts it like any edit.
    page.click("[data-testid=apply-all]")
    wait_value(page, "pan_tilt_z", 70)
    assert server_values(server)["chassis_length"] == before["chassis_length"]
    page.shot("applied")
    page.click("[data-testid=undo]")
    wait_value(page, "pan_tilt_z", before["pan_tilt_z"])
    assert server_values(server)["wheel_diameter"] == 120
    page.shot("undone")


def test_a_corrected_and_an_added_value_are_applied_and_logged(live_server_scripted, page):
    server = live_server_scripted
    open_app(page, server)
    page.fill("[data-testid=vlm-prompt]", "wheels of 125 mm and a longer chassis")
    page.uncheck("[data-testid=vlm-include-render]")
    page.click("[data-testid=vlm-send]")
    page.locator("[data-testid=proposals]").wait_for(state="visible")
    wheel = page.locator("[data-testid=proposal-row]", has=page.locator("[data-parameter=wheel_diameter]"))
    wheel.locator("[data-testid=proposal-value]").fill("125,5")  # a decimal comma means 125.5
    assert "your value" in wheel.locator("[data-testid=proposal-verdict]").text_content()
    chassis = page.locator("[data-testid=proposal-row]", has=page.locator("[data-parameter=chassis_length]"))
    chassis.locator("[data-testid=proposal-value]").fill("300")  # the model's 9999 was out of range
    page.uncheck("[data-testid=proposal-check][data-parameter=pan_tilt_z]")
    page.select_option("[data-testid=add-proposal-parameter]", "wheel_width")
    page.click("[data-testid=add-proposal]")
    added = page.locator("[data-testid=proposal-row][data-added=true]")
    added.locator("[data-testid=proposal-value]").fill("44")
    page.click("[data-testid=apply-selected]")
    wait_value(page, "wheel_width", 44)
    assert "Applied 3 changes" in wait_text(page, "proposals-status", "Applied")
    values = server_values(server)
    assert (values["wheel_diameter"], values["chassis_length"], values["wheel_width"]) == (125.5, 300, 44)
    example = json.loads((server.data_dir / "dataset" / "examples.jsonl").read_text().splitlines()[-1])
    assert {c["parameter"]: c["value"] for c in example["target"]["changes"]} == \
        {"wheel_diameter": 125.5, "chassis_length": 300, "wheel_width": 44}
    page.shot("corrected")


def test_too_large_photo_is_refused_in_the_page(live_server_scripted, page):
    open_app(page, live_server_scripted)
    limit_text = page.text_content("[data-testid=image-limit]")
    limit_mb = float(re.search(r"([\d.]+) MB", limit_text).group(1))
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * int((limit_mb + 0.5) * 1024 * 1024)
    page.set_input_files("[data-testid=vlm-image]", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": big}])
    error = page.locator("[data-testid=image-error]")
    error.wait_for(state="visible")
    assert "limit" in error.text_content()
    assert page.locator("[data-testid=image-preview]").is_hidden()
    page.shot("too-large")

    # A photo dropped on the drop zone is attached (and replaces the error).
    transfer = page.evaluate_handle("""bytes => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'}));
        return dt;
    }""", list(png_file()))
    page.dispatch_event("[data-testid=drop-zone]", "drop", {"dataTransfer": transfer})
    page.locator("[data-testid=image-preview]").wait_for(state="visible")
    assert "dropped.png" in page.text_content("[data-testid=image-preview]")
    assert page.locator("[data-testid=image-error]").is_hidden()
    page.shot("dropped")


def test_without_webgl_the_page_shows_server_renders(live_server_scripted, playwright):
    """A browser without WebGL still gets a working page: the server's PNG render replaces the 3D view."""
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + ["--disable-3d-apis"])
    try:
        p = b.new_page(viewport={"width": 1280, "height": 800})
        p.set_default_timeout(TIMEOUT_MS)
        open_app(p, live_server_scripted)
        img = p.locator("[data-testid=viewer-fallback]")
        assert img.evaluate("i => i.naturalWidth") > 0
        assert "no WebGL" in p.text_content("[data-testid=viewer-status]")
        p.click("[data-testid=view-top]")
        p.wait_for_function("() => /view=top/.test(document.querySelector('[data-testid=viewer-fallback]').src)")
        _screenshot(p, "test_without_webgl", "fallback")
    finally:
        b.close()
