"""Where built artifacts are kept: a bounded in-memory LRU in front of a size-limited on-disk cache.

Keys are ``<state hash>-<artifact>[-options]-v<version>`` (``cad.build.Builder`` makes them); files are written
atomically (temporary + rename) and the least recently used are pruned when the disk share is over its limit.
Thread-safe. A full or read-only disk only costs the disk half: serving from memory goes on.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_DISK_LIMIT_BYTES = 512 * 1024 * 1024  # CAD_CACHE_MB
PRUNE_TO = 0.8  # a full disk cache is pruned to this share of its limit, oldest use first
TEMPORARY_PREFIX = ".tmp-"  # web.housekeeping sweeps what a killed writer left


class ArtifactCache:
    def __init__(self, cache_dir: Path, memory_items: int = 32, disk_limit_bytes: int = DEFAULT_DISK_LIMIT_BYTES):
        self.cache_dir = Path(cache_dir)
        self.memory_items = max(int(memory_items), 1)
        self.disk_limit_bytes = max(int(disk_limit_bytes), 0)
        self._disk_bytes: int | None = None  # measured on the first write, then kept up to date
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = {"hits": 0, "memory_hits": 0, "disk_hits": 0}

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
                self._stats["hits"] += 1
                self._stats["memory_hits"] += 1
                return data
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used files are the last to be pruned
        except OSError:
            return None
        with self._lock:
            self._stats["hits"] += 1
            self._stats["disk_hits"] += 1
            self._remember(key, data)
        return data

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._remember(key, data)
        self._write_disk(key, data)

    def stats(self) -> dict:
        with self._lock:
            return {**self._stats, "memory_items": len(self._memory)}

    def _path(self, key: str) -> Path:
        artifact = key.split("-")[1]
        extension = "json" if artifact in ("bbox", "measure") else artifact
        return self.cache_dir / key[:2] / f"{key}.{extension}"

    def _remember(self, key: str, data: bytes) -> None:
        self._memory[key] = data
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _write_disk(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=TEMPORARY_PREFIX, delete=False) as handle:
                handle.write(data)
                temporary = handle.name
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("could not write CAD cache file %s: %s", path, exc)
            return
        with self._lock:
            if self._disk_bytes is None:
                self._disk_bytes = sum(f.stat().st_size for f in self._files())
            else:
                self._disk_bytes += len(data)
            over = self._disk_bytes > self.disk_limit_bytes
        if over:
            self._prune()

    def _files(self) -> list[Path]:
        return [f for f in self.cache_dir.glob("*/*") if f.is_file() and not f.name.startswith(TEMPORARY_PREFIX)]

    def _prune(self) -> None:
        """Delete the least recently used cache files until the cache is at PRUNE_TO of its limit."""
        files = []
        for path in self._files():
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files)
        goal = int(self.disk_limit_bytes * PRUNE_TO)
        removed = 0
        for _, size, path in files:
            if total <= goal:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        with self._lock:
            self._disk_bytes = total
        log.info("CAD cache pruned: %d files removed, %.1f MB kept", removed, total / 1e6)
