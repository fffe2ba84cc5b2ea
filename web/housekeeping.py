"""Start-up housekeeping of the data dir: the temporary files of atomic writes that a killed server left behind.

Every store writes a temporary file next to its target and renames it into place, so a SIGKILL or a power cut
mid-write leaves the temporary behind (the real file is intact). Nothing else ever reads or renames them, so at
start, when this process owns the data dir, they are only clutter that can fill a disk over many crashes.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

# (folder relative to the data dir, file pattern): the names each writer gives its temporaries.
DATA_DIR_TEMPORARIES = (
    (".", ".*.tmp"),  # vlm.dataset.atomic_write from vlm.load_progress: .vlm_load_timings.json.<hex>.tmp
    ("sessions", ".*.tmp"),  # the JSON session files of earlier releases: .<model>.json.<random>.tmp
    ("targets", ".*.step"),  # cad.target_store.TargetStore.save: .<model>.<random>.step|stl (real ones: <model>.stl)
    ("targets", ".*.stl"),
    ("cache/*", ".tmp-*"),  # cad.artifact_cache (TEMPORARY_PREFIX)
)
DATASET_TEMPORARY = ".*.tmp"  # vlm.dataset.atomic_write: .<name>.<hex>.tmp, in any folder of the dataset


def _candidates(data_dir: Path, dataset_dir: Path) -> set[Path]:
    found: set[Path] = set()
    for folder, pattern in DATA_DIR_TEMPORARIES:
        found.update(data_dir.glob(f"{folder}/{pattern}"))
    if dataset_dir.is_dir():
        found.update(dataset_dir.rglob(DATASET_TEMPORARY))
    return {p for p in found if p.is_file() and not p.is_symlink()}


def remove_leftover_temporaries(data_dir: Path, dataset_dir: Path | None = None) -> int:
    """Delete the temporaries of interrupted atomic writes; returns how many were removed. Never raises: a data dir
    that cannot be cleaned is reported by the first real write."""
    data_dir = Path(data_dir)
    removed = 0
    try:
        candidates = _candidates(data_dir, Path(dataset_dir) if dataset_dir else data_dir / "dataset")
    except OSError as exc:
        log.warning("could not look for leftover temporary files in %s: %s", data_dir, exc)
        return 0
    for path in sorted(candidates):
        try:
            path.unlink()
            removed += 1
        except OSError as exc:
            log.warning("could not remove leftover temporary file %s: %s", path, exc)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write in %s", removed, data_dir)
    return removed
