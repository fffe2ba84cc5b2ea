"""Browser tests for the adapter picker, rejecting proposals, the model library and targets/optimise.

Real server subprocesses (tests/fixtures_server.py) driven through the Debian chromium; screenshots go to
test-artifacts/ui/. The target is made with the server's own STEP export of other parameter values.
"""
from __future__ import annotations

import json

import pytest

from tests.test_ui import (  # noqa: F401  (browser, page and playwright are fixtures used by name)
    ARTIFACTS, browser, history_count, model_pixel_share, open_app, page, playwright, wait_current_model_shown,
    wait_history_count, wait_text, wait_value,
)

pytestmark = pytest.mark.browser

TARGET_VALUES = {"base_length": 70.0, "upright_height": 75.0}  # the bracket's defaults are 80 and 60


def wait_model(page, name: str) -> None:
    """Wait until the page shows `name`'s state and its 3D view."""
    page.wait_for_function("m => window.optim.state && window.optim.state.model === m", arg=name)
    wait_current_model_shown(page)


def shown_iou(page) -> float:
    return float(page.get_attribute("[data-testid=target-iou]", "data-iou"))


def canvas_shot(page, name: str):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.wait_for_timeout(250)  # the viewer renders on the next animation frame
    page.locator("[data-testid=viewer-canvas]").screenshot(path=str(path))
    return path


# --- LoRA adapters -----------------------------------------------------------------------------------------------
def test_adapter_picker_switches_and_explains_failures(live_server_adapters, page):
    server = live_server_adapters
    open_app(page, server)
    area = page.locator("[data-testid=adapter-area]")
    area.wait_for(state="visible")
    select = page.locator("[data-testid=adapter-select]")
    assert area.get_attribute("data-active") == "tiny"
    assert select.input_value() == "tiny"
    names = select.locator("option").evaluate_all("os => os.map(o => o.value)")
    assert names == ["broken", "tiny", "tiny-alt"]

    # Not loaded: the choice is remembered for the next load.
    select.select_option("tiny-alt")
    assert wait_text(page, "adapter-result", "next load") == "applies at next load"
    page.wait_for_function("() => document.querySelector('[data-testid=adapter-area]').dataset.active === 'tiny-alt'")
    assert server.api("GET", "/api/vlm/adapters").json()["active"] == "tiny-alt"
    page.shot("next-load")

    # A corrupt adapter is refused with the server's message; the active one stays.
    select.select_option("broken")
    message = wait_text(page, "adapter-result", "corrupt|cannot")
    assert "broken" in message
    page.wait_for_function("() => document.querySelector('[data-testid=adapter-select]').value === 'tiny-alt'")
    assert area.get_attribute("data-active") == "tiny-alt"
    page.shot("refused")

    # Loaded: the switch happens at once, without reloading the base.
    page.click("[data-testid=vlm-load]")
    page.wait_for_function("() => document.querySelector('[data-testid=vlm-status]').dataset.state === 'ready'",
                           timeout=120_000)
    select.select_option("tiny")
    assert "switched in" in wait_text(page, "adapter-result", r"switched in \d+\.\d\d s")
    page.wait_for_function("() => document.querySelector('[data-testid=adapter-area]').dataset.active === 'tiny'")
    status = server.api("GET", "/api/vlm/status").json()
    assert status["state"] == "ready" and status["adapter"].endswith("tiny")
    assert "tiny" in page.get_attribute("[data-testid=vlm-backend]", "title")
    page.shot("switched")


# --- rejecting proposals -----------------------------------------------------------------------------------------
def test_reject_records_and_disables_apply(live_server_scripted, page):
    server = live_server_scripted
    open_app(page, server)
    # The Ollama backend serves a fixed model: no adapter picker.
    assert page.locator("[data-testid=adapter-area]").is_hidden()
    before = server.api("GET", "/api/params").json()
    page.fill("[data-testid=vlm-prompt]", "a lower head please")
    page.uncheck("[data-testid=vlm-include-render]")
    page.click("[data-testid=vlm-send]")
    page.locator("[data-testid=proposals]").wait_for(state="visible")
    assert not page.locator("[data-testid=apply-all]").is_disabled()

    page.click("[data-testid=reject-proposals]")
    assert "recorded" in wait_text(page, "proposals-status", "recorded")
    for testid in ("apply-selected", "apply-all", "reject-proposals"):
        assert page.locator(f"[data-testid={testid}]").is_disabled(), testid
    assert page.locator("[data-testid=proposal-check]:enabled").count() == 0
    page.shot("rejected")

    examples = (server.data_dir / "dataset" / "examples.jsonl").read_text().splitlines()
    last = json.loads(examples[-1])
    assert last["outcome"] == "rejected" and last["request"] == "a lower head please"
    assert last["target"] is None  # a rejected answer, not a "no change" example

    # "nothing should change" is what makes a reject teach "no change"
    page.fill("[data-testid=vlm-prompt]", "is the head fine as it is?")
    page.click("[data-testid=vlm-send]")
    page.wait_for_function("() => document.querySelector('[data-testid=reject-proposals]').textContent === 'Reject'")
    page.check("[data-testid=reject-no-change]")
    page.click("[data-testid=reject-proposals]")
    assert "nothing should change" in wait_text(page, "proposals-status", "nothing should change")
    last = json.loads((server.data_dir / "dataset" / "examples.jsonl").read_text().splitlines()[-1])
    assert last["outcome"] == "no_change" and last["target"]["changes"] == []
    after = server.api("GET", "/api/params").json()
    assert after["values"] == before["values"] and after["version"] == before["version"]


# --- model library -----------------------------------------------------------------------------------------------
def test_model_selector_switches_schema_history_and_view(live_server_scripted, page):
    server = live_server_scripted
    open_app(page, server)
    select = page.locator("[data-testid=model-select]")
    assert select.is_visible()
    models = [m["name"] for m in server.api("GET", "/api/models").json()["models"]]
    assert {"rover", "enclosure", "bracket", "pillow_block"} <= set(models)
    assert select.locator("option").count() == len(models)

    select.select_option("enclosure")
    enclosure = server.api("GET", "/api/params?model=enclosure").json()
    page.wait_for_function("n => document.querySelectorAll('[data-testid^=row-]').length === n",
                           arg=len(enclosure["schema"]))
    wait_current_model_shown(page)
    assert "model=enclosure" in page.url
    assert "model=enclosure" in page.get_attribute("#viewer", "data-shown-url")
    assert page.text_content("#model-title") == enclosure["title"]
    numeric = next(p for p in enclosure["schema"] if p["type"] == "float")
    assert page.locator(f"#param-{numeric['name']}").count() == 1
    page.shot("enclosure")

    # An edit here lands in the enclosure's own history, not the rover's.
    rover_version = server.api("GET", "/api/history?model=rover").json()["version"]
    entries = history_count(page)
    new = numeric["min"] if enclosure["values"][numeric["name"]] != numeric["min"] else numeric["max"]
    page.fill(f"#param-{numeric['name']}", str(new))
    page.press(f"#param-{numeric['name']}", "Enter")
    wait_history_count(page, entries + 1)
    assert server.api("GET", "/api/params?model=enclosure").json()["values"][numeric["name"]] == new
    assert server.api("GET", "/api/history?model=rover").json()["version"] == rover_version

    select.select_option("pillow_block")
    pillow = server.api("GET", "/api/history?model=pillow_block").json()
    wait_model(page, "pillow_block")
    wait_history_count(page, len(pillow["entries"]))
    page.shot("pillow_block")

    select.select_option("enclosure")
    wait_model(page, "enclosure")
    wait_value(page, numeric["name"], new)
    wait_history_count(page, entries + 1)
    assert numeric["name"] in page.locator("[data-testid=history-entry]").first.get_attribute("title")
    # Reloading the page keeps the chosen model (it is in the URL).
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert select.input_value() == "enclosure"


# --- targets and optimise ----------------------------------------------------------------------------------------
def test_target_upload_ghost_optimise_and_undo(live_server_scripted, page, tmp_path):
    server = live_server_scripted
    # The target: the bracket at other values, exported by the server itself; then the design goes back.
    assert server.api("PATCH", "/api/params?model=bracket", json={"values": TARGET_VALUES}).status_code == 200
    step = server.api("GET", "/api/model.step?model=bracket").content
    assert server.api("POST", "/api/reset?model=bracket", json={}).status_code == 200
    target_file = tmp_path / "bracket-target.step"
    target_file.write_bytes(step)

    page.goto(server.url + "/?model=bracket")
    page.wait_for_selector("body[data-ready=true]")
    wait_current_model_shown(page)
    page.uncheck("[data-testid=toggle-grid]")
    assert page.locator("[data-testid=target-empty]").is_visible()
    assert "20 MB" in page.text_content("[data-testid=target-limit]")
    bare = canvas_shot(page, "target-bare")

    # A file that is not a shape is refused in the page, and nothing is stored.
    page.set_input_files("[data-testid=target-input]", files=[
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    assert "not a STEP" in wait_text(page, "target-error", "STEP")
    page.set_input_files("[data-testid=target-input]", files=[
        {"name": "fake.stl", "mimeType": "application/octet-stream", "buffer": b"solid nothing\nendsolid\n"}])
    page.wait_for_function("() => !/not a STEP/.test(document.querySelector('[data-testid=target-error]').textContent)"
                           " && !document.querySelector('[data-testid=target-error]').hidden")
    assert server.api("GET", "/api/target?model=bracket").status_code == 404

    page.set_input_files("[data-testid=target-input]", str(target_file))
    page.locator("[data-testid=target-info]").wait_for(state="visible")
    assert page.locator("[data-testid=target-error]").is_hidden()
    iou_start = shown_iou(page)
    assert 0.3 < iou_start < 0.99
    assert page.text_content("[data-testid=target-iou]") == f"{iou_start:.3f}"
    compare = page.text_content("[data-testid=target-compare]")
    assert "Volume" in compare and "+10.0" in compare and "-15.0" in compare  # X 80 vs 70, Z 60 vs 75
    page.wait_for_function("() => document.querySelector('#viewer').dataset.ghost === 'shown'")
    ghosted = canvas_shot(page, "target-ghost")
    assert model_pixel_share(ghosted) > model_pixel_share(bare) + 0.01, "the ghost adds nothing to the view"
    page.uncheck("[data-testid=toggle-ghost]")
    assert page.get_attribute("#viewer", "data-ghost") == "hidden"
    page.check("[data-testid=toggle-ghost]")
    page.shot("target-loaded")

    # Optimise: progress streams in, the IoU goes up, and it is ONE history entry.
    page.evaluate("""() => {
        window.__progress = [];
        const node = document.querySelector('[data-testid=optimise-progress-text]');
        new MutationObserver(() => window.__progress.push(node.textContent))
            .observe(node, {childList: true, characterData: true, subtree: true});
    }""")
    entries = history_count(page)
    page.fill("[data-testid=optimise-steps]", "40")
    page.click("[data-testid=optimise]")
    page.wait_for_function("() => document.body.dataset.locked === 'true'")
    assert page.locator("#param-base_length").is_disabled()
    result = page.locator("[data-testid=optimise-result]")
    page.wait_for_function("() => document.querySelector('[data-testid=optimise-result]').dataset.applied", timeout=60_000)
    assert result.get_attribute("data-applied") == "true"
    assert any("step" in text for text in page.evaluate("window.__progress")), "no progress was shown"
    iou_after = float(result.get_attribute("data-iou-after"))
    assert float(result.get_attribute("data-iou-before")) == pytest.approx(iou_start, abs=1e-9)
    assert iou_after > iou_start
    assert f"{iou_start:.3f} → {iou_after:.3f}" in result.text_content()
    wait_history_count(page, entries + 1)
    newest = page.locator("[data-testid=history-entry]").first
    assert newest.get_attribute("data-source") == "optimise"
    page.wait_for_function("v => Number(document.querySelector('[data-testid=target-iou]').dataset.iou) === v",
                           arg=iou_after)
    assert not page.locator("#param-base_length").is_disabled()
    wait_current_model_shown(page)
    page.shot("optimised")

    # Undo restores the design and the comparison.
    page.click("[data-testid=undo]")
    page.wait_for_function("v => Number(document.querySelector('[data-testid=target-iou]').dataset.iou) === v",
                           arg=iou_start)
    wait_value(page, "base_length", 80)
    page.shot("undone")

    # The target belongs to the bracket: another model shows none, and removing it clears the ghost.
    page.select_option("[data-testid=model-select]", "rover")
    page.wait_for_function("() => document.querySelector('[data-testid=target-panel]').dataset.state === 'none'")
    assert page.get_attribute("#viewer", "data-ghost") == "none"
    page.select_option("[data-testid=model-select]", "bracket")
    wait_model(page, "bracket")
    page.wait_for_function("() => document.querySelector('#viewer').dataset.ghost === 'shown'")
    page.click("[data-testid=target-remove]")
    page.locator("[data-testid=target-empty]").wait_for(state="visible")
    assert page.get_attribute("#viewer", "data-ghost") == "none"
    assert server.api("GET", "/api/target?model=bracket").status_code == 404


def test_the_optimise_button_cancels_a_running_search(live_server_scripted, scripted_engine, page):
    server = live_server_scripted
    chats_before = len(scripted_engine.posts("/api/chat"))
    query = "?model=pillow_block"
    assert server.api("PATCH", "/api/params" + query,
                      json={"values": {"base_length": 170.0, "centre_height": 50.0}}).status_code == 200
    step = server.api("GET", "/api/model.step" + query).content
    assert server.api("POST", "/api/reset" + query, json={}).status_code == 200
    assert server.api("PUT", "/api/target" + query, data=step).status_code == 201
    try:
        page.goto(server.url + "/" + query)
        page.wait_for_selector("body[data-ready=true]")
        wait_model(page, "pillow_block")
        page.locator("[data-testid=target-info]").wait_for(state="visible")
        button = page.locator("[data-testid=optimise]")
        assert button.text_content().strip() == "Optimise"
        page.fill("[data-testid=optimise-steps]", "2000")
        page.check("[data-testid=optimise-use-vlm]")  # the scripted engine answers about another model
        button.click()
        page.wait_for_function("() => /step \\d+/.test("
                               "document.querySelector('[data-testid=optimise-progress-text]').textContent)")
        assert button.text_content() == "Cancel" and button.is_enabled()
        assert page.get_attribute("body", "data-locked") == "true"
        # While it runs, the best state so far is drawn as a ghost over the design
        page.wait_for_function("() => document.querySelector('#viewer').dataset.preview === 'shown' && "
                               "document.querySelector('#viewer').dataset.previewSource === 'optimise'",
                               timeout=60_000)
        shown = json.loads(page.get_attribute("#viewer", "data-preview-values"))
        names = {p["name"] for p in server.api("GET", "/api/params" + query).json()["schema"]}
        assert shown and set(shown) <= names  # the changes of a real state of this model
        page.shot("optimise-best-so-far")
        button.click()
        page.wait_for_function("() => document.querySelector('[data-testid=optimise-result]').dataset.applied",
                               timeout=60_000)
        assert "cancelled" in page.text_content("[data-testid=optimise-result]")
        # The VLM was asked first (with the design and the target as images); its answer was of no use, and the
        # page says so while the numeric search ran anyway.
        assert "VLM not used" in page.text_content("[data-testid=optimise-result]")
        chats = [c for c in scripted_engine.posts("/api/chat")[chats_before:] if c.get("messages")]  # not loads
        assert len(chats) == 1 and len(chats[0]["messages"][1]["images"]) == 2
        assert button.text_content() == "Optimise" and button.is_enabled()
        assert page.get_attribute("body", "data-locked") == "false"
        page.wait_for_function("() => document.querySelector('#viewer').dataset.preview === 'none'")  # ghost gone
        assert page.get_attribute("#viewer", "data-preview-source") is None
        assert server.api("DELETE", "/api/optimise" + query).status_code == 404  # nothing runs any more
        page.shot("optimise-cancelled")
    finally:
        server.api("DELETE", "/api/target" + query)
