"""Fixtures for the VLM tests: a tiny LLaVA-OneVision + LoRA built offline.

`tiny_vlm` (session): the model folders. `finetuned_backend_factory`: FinetunedBackend instances that are
always unloaded at teardown, so no worker process outlives a test. `png_bytes`: a small real PNG.
"""
from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TinyVLM:
    root: Path
    base_dir: Path
    adapter_dir: Path

    def copy_adapter(self, dest: Path) -> Path:
        """A private copy of the adapter (for tests that corrupt or edit it)."""
        shutil.copytree(self.adapter_dir, dest)
        return dest


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> TinyVLM:
    from vlm.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny_vlm")
    base_dir, adapter_dir = build_tiny_model(root)
    return TinyVLM(root=root, base_dir=base_dir, adapter_dir=adapter_dir)


@pytest.fixture
def finetuned_backend_factory():
    from vlm.finetuned import FinetunedBackend

    made = []

    def make(adapter_path, base_model=None, **kwargs):
        backend = FinetunedBackend(adapter_path, base_model, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.unload()


def make_png(color=(200, 30, 30), size=(64, 48)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def png_bytes() -> bytes:
    return make_png()
