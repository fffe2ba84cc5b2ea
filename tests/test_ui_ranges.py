"""Browser tests for parameter ranges and script statuses in the editor (static/js/ranges.js, scripts.js).

One real server (subprocess, Ollama backend on the scripted local engine) whose OPTIM_MODELS_DIR holds the CQGI
fixture `hinge_pair.py` (no ranges in the script: the server infers them, `box_length` 40 mm -> 20..80 mm), a
script with a syntax error and one with an unusable file name; driven through the Debian chromium. Screenshots go
to test-artifacts/ui/ranges-*.png.
"""
from __future__ import annotations

import shutil

import pytest

from tests.fixtures_server import start_live_server
from tests.test_ui import (  # noqa: F401  (browser, page, playwright, strict_page: fixtures)
    ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, browser, page, playwright, strict_page,
)
from tests.test_cqgi_scripts import SCRIPTS

pytestmark = pytest.mark.browser

MODEL = "hinge_pair"


@pytest.fixture(scope="module")
def server(scripted_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui_ranges")
    models = root / "models"
    models.mkdir()
    shutil.copy(SCRIPTS / "hinge_pair.py", models / "hinge_pair.py")
    (models / "broken.py").write_text("import cadquery as cq\ndef build(p)\n    pass\n")
    (models / "Bad-Name.py").write_text("show_object(1)\n")
    s = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": scripted_engine.url, "OLLAMA_MODEL": "llava:latest",
                           "PRELOAD_MODEL": "0", "OPTIM_MODELS_DIR": str(models)}, root / "data")
    yield s
    s.stop()


@pytest.fixture()
def ui(strict_page):
    return strict_page


def shot(page, step: str, selector: str = "body") -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(selector).first.screenshot(path=str(ARTIFACTS / f"ranges-{step}.png"))


def open_model(page, server) -> None:
    page.goto(f"{server.url}/?model={MODEL}")
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_function("m => window.optim.state && window.optim.state.model === m", arg=MODEL)


def slider_bounds(page, name: str) -> tuple[float, float]:
    slider = page.locator(f"[data-testid=param-{name}-slider]")
    return float(slider.get_attribute("min")), float(slider.get_attribute("max"))


def schema_of(server, name: str) -> dict:
    state = server.api("GET", f"/api/params?model={MODEL}").json()
    return next(p for p in state["schema"] if p["name"] == name)


def test_inferred_range_is_marked_narrowed_persisted_and_reset(server, ui):
    page = ui
    server.api("DELETE", f"/api/params/range?model={MODEL}&parameter=box_length")
    assert server.api("POST", f"/api/reset?model={MODEL}", json={}).status_code == 200
    open_model(page, server)
    button = page.locator("[data-testid=range-btn-box_length]")
    assert button.is_visible() and button.get_attribute("data-inferred") == "true"
    assert page.locator("[data-testid=range-tag-box_length]").text_content() == "inferred"
    # The marker explains itself: a tooltip and the button's accessible description say where the range came from.
    assert "inferred from the default 40: 20 – 80" in button.get_attribute("title")
    described = page.evaluate("""() => { const b = document.querySelector('[data-testid=range-btn-box_length]');
        return document.getElementById(b.getAttribute('aria-describedby')).textContent; }""")
    assert "inferred from the default 40" in described
    assert slider_bounds(page, "box_length") == (20, 80)
    shot(page, "inferred", ".params-panel")

    # Keyboard: Enter on the range button opens the editor with the focus in "min"; Enter in a field applies.
    button.focus()
    page.keyboard.press("Enter")
    editor = page.locator("[data-testid=range-editor-box_length]")
    assert editor.is_visible() and button.get_attribute("aria-expanded") == "true"
    assert page.evaluate("() => document.activeElement.dataset.testid") == "range-min-box_length"
    page.fill("[data-testid=range-min-box_length]", "25")
    page.fill("[data-testid=range-max-box_length]", "30")
    shot(page, "editor", ".params-panel")
    version = page.evaluate("() => window.optim.state.version")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('[data-testid=param-box_length-slider]').max === '30'")
    assert slider_bounds(page, "box_length") == (25, 30)
    # The default 40 no longer fits: clamped to 30 as one history entry, and the slider follows at once.
    page.wait_for_function("v => window.optim.state.version > v", arg=version)
    assert page.input_value("[data-testid=param-box_length]") == "30"
    assert page.get_attribute("[data-testid=param-box_length-slider]", "max") == "30"
    assert page.locator("[data-testid=range-tag-box_length]").text_content() == "narrowed"
    assert page.evaluate("() => document.activeElement.dataset.testid") == "range-btn-box_length"
    page.wait_for_selector("[data-testid=history-entry][data-source=range]")
    # Number inputs follow the new range: 35 is refused before it is sent.
    page.fill("[data-testid=param-box_length]", "35")
    assert "between 25 and 30" in page.text_content("[data-testid=param-box_length-error]")
    page.keyboard.press("Escape")
    p = schema_of(server, "box_length")
    assert (p["min"], p["max"], p["range_override"]) == (25, 30, True)
    shot(page, "narrowed", ".params-panel")

    # After a reload the narrowed range is still there (it lives next to the session).
    open_model(page, server)
    assert slider_bounds(page, "box_length") == (25, 30)
    button = page.locator("[data-testid=range-btn-box_length]")
    assert button.get_attribute("data-override") == "true" and "script's range is 20 – 80" in button.get_attribute("title")

    # Outside the script's range: the server's message is shown inline and nothing changes.
    before = server.api("GET", f"/api/params?model={MODEL}").json()
    button.click()
    page.fill("[data-testid=range-min-box_length]", "10")
    page.fill("[data-testid=range-max-box_length]", "30")
    with page.expect_response(lambda r: "/api/params/range" in r.url and r.request.method == "PUT") as answer:
        page.click("[data-testid=range-apply-box_length]")
    assert answer.value.status == 422
    message = answer.value.json()["message"]
    error = page.locator("[data-testid=range-error-box_length]")
    error.wait_for(state="visible")
    assert error.text_content() == message and message
    assert page.get_attribute("[data-testid=range-min-box_length]", "aria-invalid") == "true"
    assert server.api("GET", f"/api/params?model={MODEL}").json() == before
    assert slider_bounds(page, "box_length") == (25, 30)
    shot(page, "refused", ".params-panel")
    # min >= max is the server's to refuse too.
    page.fill("[data-testid=range-min-box_length]", "30")
    # Wait for the answer itself: the editor clears its error when it sends, so a changed text alone is not the
    # answer, and a click while the request is pending is ignored (under load the reset below was lost so).
    with page.expect_response(lambda r: "/api/params/range" in r.url and r.request.method == "PUT") as answer:
        page.click("[data-testid=range-apply-box_length]")
    assert answer.value.status == 422
    page.wait_for_function("m => { const e = document.querySelector('[data-testid=range-error-box_length]');"
                           " return e.textContent && e.textContent !== m "
                           "&& !document.querySelector('[data-testid=range-editor-box_length]')"
                           ".classList.contains('pending'); }", arg=message)
    assert server.api("GET", f"/api/params?model={MODEL}").json() == before

    # Reset range: back to the inferred 20..80 (the value stays where it was clamped).
    page.click("[data-testid=range-reset-box_length]")
    page.wait_for_function("() => document.querySelector('[data-testid=param-box_length-slider]').max === '80'")
    assert slider_bounds(page, "box_length") == (20, 80)
    assert page.locator("[data-testid=range-tag-box_length]").text_content() == "inferred"
    assert "range_override" not in schema_of(server, "box_length")
    # Escape closes an open editor and gives the focus back to its button.
    page.click("[data-testid=range-btn-box_length]")
    page.keyboard.press("Escape")
    assert page.locator("[data-testid=range-editor-box_length]").is_hidden()
    assert page.evaluate("() => document.activeElement.dataset.testid") == "range-btn-box_length"


def test_scripts_that_did_not_load_are_listed_with_their_message(server, ui):
    page = ui
    scripts = server.api("GET", "/api/models").json()["scripts"]
    failed = {s["file"]: s for s in scripts if s["status"] != "ok"}
    assert {"broken.py", "Bad-Name.py"} <= set(failed)
    open_model(page, server)
    box = page.locator("[data-testid=script-issues]")
    assert box.is_visible()
    assert page.text_content("[data-testid=script-issues-count]") == f"{len(failed)} scripts not loaded"
    assert page.locator("[data-testid=script-issues-list]").is_hidden()
    page.focus("[data-testid=script-issues-summary]")
    page.keyboard.press("Enter")  # a <details>: keyboard-operable as it is
    items = page.locator("[data-testid=script-issue]")
    items.first.wait_for(state="visible")
    shown = {i.get_attribute("data-file"): i for i in items.all()}
    assert set(shown) == set(failed)
    broken = shown["broken.py"]
    assert broken.get_attribute("data-status") == "error"
    assert broken.locator("[data-testid=script-message]").text_content() == failed["broken.py"]["error"]
    assert "line 2" in broken.text_content()
    assert "lower-case" in shown["Bad-Name.py"].text_content()
    shot(page, "scripts", ".topbar")
    page.screenshot(path=str(ARTIFACTS / "ranges-scripts-open.png"))
    page.keyboard.press("Escape")
    assert page.locator("[data-testid=script-issues-list]").is_hidden()
    # Working scripts are in the picker; broken ones are not.
    options = page.locator("[data-testid=model-select] option").evaluate_all("os => os.map(o => o.value)")
    assert MODEL in options and "broken" not in options
