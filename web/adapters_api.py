"""LoRA adapters under runs/: list them and switch the active one at run time (the base model stays loaded).

Adapter names come from requests, so they are only ever looked up in the listing of `config.runs_dir`: a name
is a folder name (no slashes, no "..", not absolute) and the path used is the one the listing found.
"""
from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from flask import Blueprint, jsonify

from vlm.model_files import check_safetensors

from .contract.requests import AdapterRequest
from .contract.validate import validate
from .errors import ApiError
from .parse import json_body
from .services import services

log = logging.getLogger(__name__)
bp = Blueprint("adapters_api", __name__, url_prefix="/api/vlm")

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_LOSS_POINTS = 200  # the listing carries a downsampled loss curve, enough for a sparkline


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _training_summary(folder: Path) -> dict | None:
    summary = _read_json(folder / "training_summary.json")
    if summary is None:
        return None
    losses = summary.get("loss_per_step")
    if isinstance(losses, list) and len(losses) > MAX_LOSS_POINTS:
        stride = -(-len(losses) // MAX_LOSS_POINTS)
        summary["loss_per_step"] = losses[::stride]
        summary["loss_per_step_stride"] = stride
    return summary


def _same_folder(a: Path, b: str | None) -> bool:
    if not b:
        return False
    try:
        return a.resolve() == Path(b).resolve()
    except OSError:
        return False


def list_adapters(runs_dir: Path, active_path: str | None) -> list[dict]:
    """Every folder directly under runs_dir with an adapter_config.json, sorted by name."""
    try:
        children = sorted(runs_dir.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    adapters = []
    for folder in children:
        config_path = folder / "adapter_config.json"
        if not ADAPTER_NAME.match(folder.name) or not folder.is_dir() or not config_path.is_file():
            continue
        config = _read_json(config_path)
        weights = sorted(folder.glob("*.safetensors"))
        entry = {
            "name": folder.name, "path": str(folder),
            "base_model": (config or {}).get("base_model_name_or_path"),
            "r": (config or {}).get("r"), "lora_alpha": (config or {}).get("lora_alpha"),
            "target_modules": (config or {}).get("target_modules"),
            "created": _iso(max(p.stat().st_mtime for p in [config_path, *weights])),
            "size_bytes": sum(p.stat().st_size for p in weights),
            "training": _training_summary(folder),
            "active": _same_folder(folder, active_path),
        }
        if config is None:
            entry["error"] = "adapter_config.json is not valid JSON"
        elif not weights:
            entry["error"] = "no .safetensors weights"
        adapters.append(entry)
    return adapters


@bp.get("/adapters")
def get_adapters():
    svc = services()
    status = svc.manager.status()
    adapters = list_adapters(svc.config.runs_dir, status.get("adapter"))
    active = next((a["name"] for a in adapters if a["active"]), None)
    return jsonify({"runs_dir": str(svc.config.runs_dir), "backend": status.get("backend"),
                    "switchable": svc.manager.supports_adapters, "active": active,
                    "active_path": status.get("adapter"), "adapters": adapters})


@bp.post("/adapter")
def switch_adapter():
    svc = services()
    name = validate(AdapterRequest, json_body()).name  # the contract's model (400 missing_name)
    if not svc.manager.supports_adapters:
        raise ApiError(409, "adapters_unsupported",
                       f"the {svc.manager.backend.name} backend serves a fixed model; switching adapters needs the "
                       "fine-tuned backend (VLM_BACKEND=finetuned)")
    if not ADAPTER_NAME.match(name) or ".." in name:
        raise ApiError(422, "invalid_adapter_name",
                       "an adapter name is a folder name under runs/ (letters, digits, '.', '_', '-'), not a path")
    listing = {a["name"]: a for a in list_adapters(svc.config.runs_dir, svc.manager.status().get("adapter"))}
    entry = listing.get(name)
    if entry is None:
        raise ApiError(404, "unknown_adapter", f"no adapter {name!r} under {svc.config.runs_dir}",
                       available=sorted(listing))
    folder = Path(entry["path"])
    if entry.get("error"):
        raise ApiError(422, "bad_adapter", f"adapter {name!r} cannot be used: {entry['error']}")
    for weights in folder.glob("*.safetensors"):  # checked here too, so a remembered adapter is a sound one
        try:
            check_safetensors(weights)
        except (OSError, ValueError) as exc:
            raise ApiError(422, "bad_adapter", f"adapter {name!r} is corrupt ({weights.name}: {exc})") from None
    t0 = time.perf_counter()
    info = svc.manager.switch_adapter(folder)
    # Answers are cached per adapter path; a folder retrained in place must not serve its old answers.
    svc.responses.clear()
    log.info("adapter switched to %s (%s) in %.3f s", name, info.get("applied"), time.perf_counter() - t0)
    return jsonify({"name": name, "applied": info.get("applied"), "switch_s": round(time.perf_counter() - t0, 4),
                    "cached": info.get("cached"), "status": svc.manager.status()})
