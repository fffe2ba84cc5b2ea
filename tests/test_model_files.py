"""The worker's pre-read of the weights (vlm.model_files.pre_read) and the page-cache check it uses
(vlm.page_cache): bytes the cache lacks are read once, a file it holds whole is not read again, corrupt files fail."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from vlm.model_files import pre_read
from vlm.page_cache import resident_fraction
from vlm.worker_errors import WorkerError


def _weights(path: Path, mib: int = 8) -> Path:
    save_file({"w": np.arange(mib * 2**18, dtype=np.float32)}, str(path))
    return path


def _evict(path: Path) -> float:
    """Drop the file's clean pages from the page cache; returns what is still resident."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    left = resident_fraction(path)
    if left is None:
        pytest.skip("no page-cache residency on this system (mincore)")
    if left > 0.5:
        pytest.skip(f"this filesystem kept {left:.0%} of an evicted file's pages")
    return left


def test_resident_fraction_follows_the_page_cache(tmp_path):
    path = _weights(tmp_path / "a.safetensors")
    _evict(path)
    assert resident_fraction(path) < 0.5
    path.read_bytes()
    assert resident_fraction(path) == 1.0
    assert resident_fraction(tmp_path / "missing.safetensors") is None
    (tmp_path / "empty").write_bytes(b"")
    assert resident_fraction(tmp_path / "empty") is None


def test_pre_read_reads_what_the_cache_lacks_and_skips_what_it_holds(tmp_path):
    cold, warm = _weights(tmp_path / "cold.safetensors"), _weights(tmp_path / "warm.safetensors", mib=2)
    _evict(cold)
    warm.read_bytes()
    seen = []
    result = pre_read([(cold, "base model weights"), (warm, "adapter")], lambda f, phase: seen.append((f, phase)))
    assert result == {"read_bytes": cold.stat().st_size, "cached_bytes": warm.stat().st_size}
    assert resident_fraction(cold) == 1.0  # read into the cache for the load that follows
    assert {phase for _, phase in seen} == {"reading weights"} and seen[-1][0] == 1.0
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)

    again = pre_read([(cold, "base model weights"), (warm, "adapter")], lambda f, phase: None)
    assert again == {"read_bytes": 0, "cached_bytes": cold.stat().st_size + warm.stat().st_size}


def test_pre_read_fails_on_a_truncated_file_even_when_cached(tmp_path):
    path = _weights(tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    path.read_bytes()  # cached: the header check still runs
    with pytest.raises(WorkerError) as err:
        pre_read([(path, "base model weights")], lambda f, phase: None)
    assert err.value.code == "corrupt_weights" and "truncated" in err.value.message
