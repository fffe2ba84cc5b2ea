"""In-range values that cut everything away: one clear error everywhere, and the optimiser moves away from it."""
from __future__ import annotations

import pytest

from tests.test_web_targets import cube_stl
from web import create_app
from web.config import Config

HOLLOW_MODEL = '''"""Hollow block

A block with a square pocket cut through it; a pocket as wide as the block leaves nothing.
"""
import cadquery as cq

size: float = 20.0  # mm, 5..50, Block, step=1: Side of the block
pocket: float = 10.0  # mm, 0..60, Block, step=1: Side of the pocket cut through the block


def build(p):
    body = cq.Workplane("XY").box(p.size, p.size, p.size)
    if p.pocket > 0:
        body = body.cut(cq.Workplane("XY").box(p.pocket, p.pocket, p.size * 2))
    return cq.Assembly(name="hollow").add(body, name="block")
'''


@pytest.fixture()
def client(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "hollow.py").write_text(HOLLOW_MODEL)
    app = create_app(Config(data_dir=tmp_path / "data", cad_warmup=False, testing=True, models_dir=models))
    try:
        yield app.test_client()
    finally:
        app.extensions["optim"].shutdown()


@pytest.mark.parametrize("path", ["/api/model.glb", "/api/model.stl", "/api/model.step", "/api/render.png"])
def test_every_export_of_an_empty_state_is_one_clear_error(client, path):
    assert client.patch("/api/params?model=hollow", json={"values": {"pocket": 30}}).status_code == 200
    r = client.get(path + "?model=hollow")
    assert r.status_code == 422, r.get_data(as_text=True)[:300]
    body = r.get_json()
    assert body["error"] == "empty_geometry"
    assert "no solid geometry" in body["message"] and "pocket=30" in body["message"]
    assert "/tmp" not in body["message"] and "Traceback" not in r.get_data(as_text=True)


def test_the_optimiser_moves_away_from_an_empty_state(client):
    assert client.put("/api/target?model=hollow", data=cube_stl(20)).status_code == 201  # a solid cube
    assert client.patch("/api/params?model=hollow", json={"values": {"pocket": 30}}).status_code == 200
    r = client.post("/api/optimise?model=hollow", json={"max_steps": 60})
    assert r.status_code == 200, r.get_json()
    report = r.get_json()["optimise"]
    assert report["iou_before"] == 0.0 and report["iou_after"] > 0.9, report
    values = client.get("/api/params?model=hollow").get_json()["values"]
    assert values["pocket"] < 20
