"""A small, realistic training dataset for the fine-tuning tests: prompts from the real prompt builder, generated
PNG "renders" and "photos", decisions as the UI logs them (applied and rejected), with their values, targets and splits."""
from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path

from vlm.dataset import DatasetLog, changes_between, make_target
from vlm.prompts import build_prompt

SCHEMA = [
    {"name": "wheel_diameter", "label": "Wheel diameter", "unit": "mm", "type": "float", "min": 40, "max": 200,
     "step": 1, "default": 90, "group": "wheels", "description": "outer diameter of each wheel"},
    {"name": "chassis_length", "label": "Chassis length", "unit": "mm", "type": "float", "min": 120, "max": 400,
     "step": 1, "default": 220, "group": "chassis", "description": "length of the chassis plate"},
    {"name": "wheel_count", "label": "Wheels", "unit": "", "type": "int", "min": 4, "max": 8, "step": 2,
     "default": 4, "group": "wheels", "description": "number of wheels"},
]
REQUESTS = ["make it climb kerbs", "shorter please", "six wheels", "bigger wheels and longer body",
            "nothing changes", "match the photo"]


def png(color, size=(48, 40)) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (240, 240, 240))
    ImageDraw.Draw(img).rectangle([4, 8, size[0] - 4, size[1] - 8], fill=color)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def make_dataset(root: Path, count: int = 12) -> DatasetLog:
    """`count` decisions as the UI logs them: applied ones (target: the applied change) and every fourth one
    rejected (no target). Every sixth is in the validation split, the rest in train."""
    log = DatasetLog(root)
    values = {p["name"]: p["default"] for p in SCHEMA}
    for i in range(count):
        request = REQUESTS[i % len(REQUESTS)]
        with_photo = i % 3 == 0
        system, user = build_prompt(SCHEMA, values, request, model_title="Rover", has_images=with_photo,
                                    has_render=True)
        images = [("render", png((20 * i % 256, 80, 160)))]
        if with_photo:
            images.append(("reference", png((200, 30 * i % 256, 40), size=(64, 48))))
        applied = i % 4 != 3
        target_values = {**values, "wheel_diameter": 100 + 5 * i} if applied else None
        target = make_target(f"Larger wheels ({i})", changes_between(values, target_values, {
            "wheel_diameter": "more ground clearance"})) if applied else None
        log.record(outcome="applied" if applied else "rejected", system=system, user=user,
                   answer=f'{{"summary": "answer {i}", "changes": []}}', target=target, values=values,
                   target_values=target_values, images=images, request=request, cad_model="rover",
                   backend="finetuned", model="tiny", adapter="runs/tiny", proposal_id=f"p{i}",
                   split="val" if i % 6 == 5 else "train")
    return log


@contextlib.contextmanager
def serve(app):
    """The Flask app on a real HTTP server on 127.0.0.1 (a free port), in a thread; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
