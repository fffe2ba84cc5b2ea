"""Browser test for issue 18's "preview before apply": the ticked proposals (with corrected values) shown as a violet
ghost over the current design, built by POST /api/preview.glb without touching the session, and gone once the
proposals are applied or rejected or the model changes. One real server (Ollama backend on the scripted engine:
wheel_diameter 120, pan_tilt_z 70, chassis_length 9999 rejected). Screenshots go to test-artifacts/ui/.
"""
from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.fixtures_server import start_live_server
from tests.test_ui import (  # noqa: F401  (browser, page, playwright, strict_page: fixtures)
    ARTIFACTS, browser, open_app, page, playwright, strict_page, wait_current_model_shown,
)
from tests.test_ui_layout import ask

pytestmark = pytest.mark.browser
VIOLET = (139, 92, 246)


@pytest.fixture(scope="module")
def server(scripted_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui_preview")
    s = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": scripted_engine.url, "OLLAMA_MODEL": "llava:latest",
                           "PRELOAD_MODEL": "0", "CAD_WARMUP": "0"}, root / "data")
    yield s
    s.stop()


@pytest.fixture()
def ui(strict_page):
    return strict_page


def session(server, model="rover"):
    state = server.api("GET", f"/api/params?model={model}").json()
    history = server.api("GET", f"/api/history?model={model}").json()
    return state["version"], state["values"], len(history["entries"])


def preview_state(page) -> str:
    return page.get_attribute("#viewer", "data-preview")


def wait_preview(page, state: str) -> None:
    page.wait_for_function("s => document.querySelector('#viewer').dataset.preview === s", arg=state)


def shown_values(page) -> dict:
    return json.loads(page.get_attribute("#viewer", "data-preview-values") or "{}")


def violet_share(page, step: str) -> float:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"preview-{step}.png"
    page.wait_for_timeout(300)  # the viewer renders on the next animation frame
    page.locator(".viewer-panel").screenshot(path=str(path))
    canvas = ARTIFACTS / f"preview-{step}-canvas.png"
    page.locator("[data-testid=viewer-canvas]").screenshot(path=str(canvas))
    img = Image.open(canvas).convert("RGB")
    pixels = list(img.getdata())
    # Translucent violet over grey parts or the light background: clearly more blue than green, and more red
    # than green (the model's greys and the target's orange are not).
    hits = sum(1 for r, g, b in pixels if b - g > 40 and r - g > 12)
    return hits / len(pixels)


def diff_shown(page) -> str | None:
    """The before/after figures beside the proposals table, or None while they are hidden."""
    diff = page.locator("[data-testid=preview-diff]")
    return diff.inner_text() if diff.is_visible() else None


def expected_diff(server, values: dict) -> tuple[dict, str]:
    """The server's figures for `values` and the sentence the page should write from them (three significant
    digits: vlm.units.format_significant, whose rules static/js/viewer-units.js follows)."""
    from vlm.units import format_significant as sig

    diff = server.api("POST", "/api/preview/diff?model=rover", json={"values": values}).json()
    assert diff["units"] == "mm"
    before, after = diff["before"]["volume"], diff["after"]["volume"]
    scale, unit = (1e-3, "cm³") if max(before, after) >= 1e3 else (1, "mm³")
    size = [" × ".join(sig(v) for v in diff[k]["size"]) for k in ("before", "after")]
    share = sig(diff["volume_relative"] * 100, reference=100, digits=4, signed=True)
    return diff, (f"size {size[0]} → {size[1]} mm, volume {sig(before * scale)} → {sig(after * scale)} {unit} "
                  f"({share} %)")


def wait_diff(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('[data-testid=preview-diff]').textContent === t", arg=text)


def test_proposal_preview_shows_ticked_values_without_changing_the_session(server, ui):
    page = ui
    open_app(page, server)
    page.uncheck("[data-testid=toggle-grid]")
    before = session(server)
    assert violet_share(page, "0-before") < 0.002
    ask(page)
    assert preview_state(page) == "none"
    page.check("[data-testid=preview-proposal]")
    wait_preview(page, "shown")
    assert shown_values(page) == {"wheel_diameter": 120, "pan_tilt_z": 70}  # the rejected 9999 is not ticked
    assert violet_share(page, "1-shown") > 0.01
    assert session(server) == before  # no history entry, no new version, same values
    assert "not applied" in page.locator("[data-testid=preview-status]").inner_text()
    # Beside the table: the size and volume of the current design -> the previewed one, as the server measured.
    diff, text = expected_diff(server, {"wheel_diameter": 120, "pan_tilt_z": 70})
    wait_diff(page, text)
    assert diff_shown(page) == text and "→" in text and diff["volume_change"] > 0  # bigger wheels: more volume
    assert diff["after"]["size"][0] > diff["before"]["size"][0]  # and a longer rover (120 mm wheels)
    assert diff["before"]["size"][0] == pytest.approx(json.loads(page.get_attribute(
        "[data-testid=preview-diff]", "data-diff"))["before"]["size"][0])
    page.locator(".proposals").screenshot(path=str(ARTIFACTS / "preview-1-diff.png"))

    # Unticking a row and correcting another refresh the preview to what Apply selected would apply.
    page.uncheck("[data-testid=proposal-check] >> nth=1")
    page.locator("[data-testid=proposal-value]").nth(0).fill("100")
    page.wait_for_function("() => document.querySelector('#viewer').dataset.preview === 'shown' && "
                           "JSON.parse(document.querySelector('#viewer').dataset.previewValues || '{}')"
                           ".wheel_diameter === 100")
    assert shown_values(page) == {"wheel_diameter": 100}
    wait_diff(page, expected_diff(server, {"wheel_diameter": 100})[1])  # the figures follow the ticks and edits
    assert session(server) == before

    # Toggling it off removes the ghost; on again shows it.
    page.uncheck("[data-testid=preview-proposal]")
    wait_preview(page, "none")
    assert diff_shown(page) is None
    assert violet_share(page, "2-off") < 0.002
    page.check("[data-testid=preview-proposal]")
    wait_preview(page, "shown")

    # Applying: the preview goes, the design becomes what it showed.
    page.click("[data-testid=apply-selected]")
    page.wait_for_function("() => document.querySelector('[data-testid=proposals-status]').textContent"
                           ".startsWith('Applied')")
    wait_preview(page, "none")
    assert diff_shown(page) is None  # applied: the figures go with the ghost
    assert not page.is_checked("[data-testid=preview-proposal]")
    version, values, entries = session(server)
    assert values["wheel_diameter"] == 100 and version == before[0] + 1 and entries == before[2] + 1
    wait_current_model_shown(page)
    assert violet_share(page, "3-applied") < 0.002

    # Rejecting the next answer clears its preview too.
    ask(page)
    page.check("[data-testid=preview-proposal]")
    wait_preview(page, "shown")
    page.wait_for_function("() => document.querySelector('[data-testid=preview-diff]').dataset.diff")
    assert diff_shown(page)
    page.click("[data-testid=reject-proposals]")
    page.wait_for_function("() => document.querySelector('#proposals').dataset.decision === 'rejected'")
    wait_preview(page, "none")
    assert diff_shown(page) is None  # dismissed: gone too
    assert page.is_disabled("[data-testid=preview-proposal]")

    # And a model switch drops the answer with its preview.
    ask(page)
    page.check("[data-testid=preview-proposal]")
    wait_preview(page, "shown")
    page.select_option("[data-testid=model-select]", "bracket")
    page.wait_for_function("() => window.optim.state.model === 'bracket'")
    wait_preview(page, "none")
    assert page.locator("[data-testid=proposals]").is_hidden()
    assert session(server)[0] == version


def test_include_render_sends_the_camera_on_screen(server, ui, scripted_engine):
    page = ui
    open_app(page, server)
    assert page.locator("[data-testid=vlm-render-view]").inner_text() == "the current 3D view"
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/api/vlm") else None)

    def ask_with_render(prompt):
        page.fill("[data-testid=vlm-prompt]", prompt)
        page.check("[data-testid=vlm-include-render]")
        page.click("[data-testid=vlm-send]")
        page.locator("[data-testid=proposals]").wait_for(state="visible")
        return sent[-1]

    page.click("[data-view=top]")
    top = ask_with_render("bigger wheels, seen from the top")
    camera = page.evaluate("""() => {
        const v = window.optim.viewer, k = v.mmPerUnit(), p = v.camera.position;
        return [p.x * k, -p.z * k, p.y * k];
    }""")
    assert top["include_render"] is True and top["camera"]["projection"] == "perspective"
    assert top["camera"]["position"] == pytest.approx(camera)
    assert top["camera"]["position"][2] > 5 * abs(top["camera"]["position"][0])  # from above (Z up)
    assert page.get_attribute("[data-testid=vlm-include-render]", "data-sent") == "camera"
    top_image = scripted_engine.posts("/api/chat")[-1]["messages"][-1]["images"][0]

    page.check("[data-testid=toggle-ortho]")
    page.click("[data-view=front]")
    front = ask_with_render("bigger wheels, seen from the front")
    assert front["camera"]["projection"] == "orthographic" and front["camera"]["height"] > 0
    assert front["camera"]["position"][0] > 5 * abs(front["camera"]["position"][2] - front["camera"]["target"][2])
    assert scripted_engine.posts("/api/chat")[-1]["messages"][-1]["images"][0] != top_image
    page.shot("camera-sent")

    page.uncheck("[data-testid=vlm-include-render]")
    page.fill("[data-testid=vlm-prompt]", "no render this time")
    page.click("[data-testid=vlm-send]")
    page.wait_for_selector("#vlm-answer[data-state=done]")
    assert page.get_attribute("[data-testid=vlm-include-render]", "data-sent") == "none"
    assert "camera" not in sent[-1] and sent[-1]["include_render"] is False
