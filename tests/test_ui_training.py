"""Browser test of "Train…" beside the LoRA picker (static/js/training.js): a real training child on the tiny
model, followed to the end, then picked in the LoRA menu; a bad name shows the server's message."""
from __future__ import annotations

import pytest

from tests.fixtures_server import TINY_FINETUNED_ENV, make_runs_dir, start_live_server
from tests.test_ui import (  # noqa: F401  (browser, page and playwright are fixtures used by name)
    browser, open_app, page, playwright, wait_text,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def live_server_training(tiny_vlm, tmp_path_factory):
    from vlm.synth import SynthConfig, synthesise

    root = tmp_path_factory.mktemp("live_server_training")
    runs = make_runs_dir(tiny_vlm, root / "runs")
    synthesise(SynthConfig(models=["bracket"], count=10, seed=5, styles={"absolute": 1}, render_share=0.0,
                           val=0.0, test=0.0, workers=1, check_text_builds=False), root / "dataset", progress=False)
    server = start_live_server({**TINY_FINETUNED_ENV, "FINETUNED_MODEL_PATH": str(runs / "tiny"),
                                "OPTIM_RUNS_DIR": str(runs), "OPTIM_DATASET_DIR": str(root / "dataset")},
                               root / "data")
    yield server
    server.stop()


def test_train_a_new_adapter_from_the_page(live_server_training, page):
    server = live_server_training
    open_app(page, server)
    page.locator("[data-testid=adapter-area]").wait_for(state="visible")
    page.click("[data-testid=train-open]")
    page.fill("[data-testid=train-name]", "../out")
    page.click("[data-testid=train-start]")
    assert "folder name" in wait_text(page, "train-progress", "folder name")
    page.fill("[data-testid=train-name]", "from-ui")
    page.click("[data-testid=train-start]")
    wait_text(page, "train-progress", "from-ui: (starting|training|validating)")
    page.wait_for_function("() => document.querySelector('[data-testid=train-area]').dataset.state === 'finished'",
                           timeout=240_000)
    assert "trained (" in page.text_content("[data-testid=train-progress]")
    page.shot("trained")
    # The new adapter is in the picker at once, and choosing it makes it the active one.
    select = page.locator("[data-testid=adapter-select]")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=adapter-select] option')]"
                           ".some(o => o.value === 'from-ui')")
    select.select_option("from-ui")
    page.wait_for_function("() => document.querySelector('[data-testid=adapter-area]').dataset.active === 'from-ui'")
    assert server.api("GET", "/api/vlm/adapters").json()["active"] == "from-ui"
    job = server.api("GET", "/api/vlm/train").json()["job"]
    assert job["state"] == "finished" and job["examples"] == 10
