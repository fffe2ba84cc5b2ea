"""VLM_PREWARM inside the worker (vlm.worker_prewarm through vlm.worker.Engine, in this process on the tiny model):
what the pre-warm prepares for a base folder is what the load uses, and only while the folder is unchanged."""
from __future__ import annotations

import os
import shutil

from vlm.worker import Engine
from vlm.worker_prewarm import folder_key


class Channel:
    def __init__(self):
        self.events = []

    def send(self, event, **fields):
        self.events.append((event, fields))


def _load(engine: Engine, base) -> None:
    engine.load({"op": "load", "base": str(base), "adapter": None, "dtype": "float32", "device_map": "cpu"})


def test_the_load_uses_what_the_prewarm_prepared(tiny_vlm, tmp_path):
    base = shutil.copytree(tiny_vlm.base_dir, tmp_path / "base")
    engine = Engine(Channel())
    info = engine.prewarm({"base": str(base), "dtype": "float32"})
    assert set(info) == {"import_s", "prepare_s"}, info
    prepared = engine.prepared
    assert prepared is not None and prepared.key == folder_key(base) and prepared.constraint is not None
    assert engine.model is None  # no weights were loaded

    _load(engine, base)
    assert engine.info["used_prewarm"] is True and engine.prepared is None
    assert engine.processor is prepared.processor and engine.constraint is prepared.constraint
    assert engine.info["cached_bytes"] + engine.info["read_bytes"] == sum(
        p.stat().st_size for p in base.glob("*.safetensors"))
    engine.generate({"id": "g1", "system": "You are a CAD assistant.", "prompt": "Widen the chassis.",
                     "max_new_tokens": 4})
    event, fields = engine.channel.events[-1]
    assert event == "done" and fields["id"] == "g1" and fields["completion_tokens"] >= 1


def test_a_folder_changed_after_the_prewarm_is_prepared_again_by_the_load(tiny_vlm, tmp_path):
    base = shutil.copytree(tiny_vlm.base_dir, tmp_path / "base")
    engine = Engine(Channel())
    engine.prewarm({"base": str(base), "dtype": "float32"})
    stale = engine.prepared
    config = base / "tokenizer_config.json"
    st = config.stat()
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten in place, say

    _load(engine, base)
    assert engine.info["used_prewarm"] is False
    assert engine.processor is not stale.processor and engine.constraint is not stale.constraint


def test_a_prewarm_for_a_missing_base_only_imports(tmp_path):
    engine = Engine(Channel())
    info = engine.prewarm({"base": str(tmp_path / "no-such-model"), "dtype": "auto"})
    assert set(info) == {"import_s"} and engine.prepared is None
