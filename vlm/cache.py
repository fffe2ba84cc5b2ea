"""An LRU of model answers, so repeating the same deterministic request does not run the model again.

Only greedy (temperature 0) requests are cached: `key()` returns None for sampled ones, and `get(None)`/
`put(None, ...)` do nothing, so callers need no special case. The key holds the model's identity as loaded
(`ModelManager.cache_identity()`: base and adapter *content*, see `content_fingerprint`), so an adapter retrained
in place and reloaded is a different key; callers store only answers that parsed.
"""
from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

# Files that decide a model's answers; anything else in the folder (logs, checkpoints' metadata) does not.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.json", "*.model", "*.txt", "*.jinja")


def content_fingerprint(path: str | Path | None) -> str | None:
    """A hash of the names, sizes and modification times of a model folder's files (cheap: stat calls only), or
    None when `path` is not a local folder (a hub name: the name is the identity). Rewriting a weight file in
    place changes it even when the size stays."""
    if path is None:
        return None
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return None
    parts = []
    try:
        files = sorted({f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern) if f.is_file()})
        for f in files:
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    except OSError as exc:  # a folder being rewritten: an identity nothing else shares
        parts.append(f"unreadable:{exc}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


class ResponseCache:
    def __init__(self, max_items: int = 64):
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @staticmethod
    def key(backend: str, model, adapter, system: str, prompt: str, images: list[bytes],
            max_new_tokens: int, temperature: float = 0.0, json_schema: dict | None = None,
            extra: dict | None = None) -> str | None:
        """A stable hash of everything that decides the answer, or None when the request is not deterministic.
        `model` and `adapter` may be any JSON value (e.g. an identity dict with content fingerprints)."""
        if temperature != 0:
            return None
        material = {
            "backend": backend, "model": model, "adapter": adapter, "system": system, "prompt": prompt,
            "images": [hashlib.sha256(bytes(img)).hexdigest() for img in images],
            "max_new_tokens": int(max_new_tokens), "json_schema": json_schema,
        }
        if extra:  # e.g. the vote that merged several sampled answers (vlm.voting)
            material["extra"] = extra
        encoded = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(encoded.encode("utf-8")).hexdigest()

    def get(self, key: str | None) -> Any | None:
        if key is None:
            return None
        with self._lock:
            if key not in self._items:
                self._misses += 1
                return None
            self._hits += 1
            self._items.move_to_end(key)
            value = self._items[key]
        return copy.deepcopy(value)  # callers may annotate the result (timings) without changing the cache

    def put(self, key: str | None, value: Any) -> None:
        if key is None:
            return
        stored = copy.deepcopy(value)
        with self._lock:
            self._items[key] = stored
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def stats(self) -> dict:
        with self._lock:
            lookups = self._hits + self._misses
            return {"items": len(self._items), "max_items": self.max_items, "hits": self._hits,
                    "misses": self._misses, "hit_rate": (self._hits / lookups) if lookups else 0.0}
