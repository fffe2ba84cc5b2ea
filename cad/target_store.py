"""Target files on disk: one STEP or STL target per model under ``<data dir>/targets/``, written atomically.

File handling only (the web process); the geometry of a target is in ``cad.target`` and runs in the build worker.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
import threading
from pathlib import Path

from cad.errors import CadError
from cad.target import TARGET_FORMATS, TargetError, detect_format

log = logging.getLogger(__name__)
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class TargetNotSaved(CadError):
    """The target could not be written or removed (disk full, read-only, not a directory). Nothing changed.

    ``status``: 507 Insufficient Storage when the disk or quota is full (freeing space helps), else 503 (the data
    dir is unusable until an operator fixes it)."""

    def __init__(self, action: str, directory: Path, exc: OSError):
        self.status = 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 503
        self.code = "insufficient_storage" if self.status == 507 else "target_not_saved"
        reason = exc.strerror or type(exc).__name__
        super().__init__(f"the target could not be {action}: {reason} in {directory}; the previous target is "
                         f"unchanged. Free disk space or make OPTIM_DATA_DIR writable")


class TargetStore:
    """One target file per model: ``<data_dir>/targets/<model>.step|stl``, written atomically."""

    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir) / "targets"
        self._lock = threading.Lock()

    def path(self, model: str) -> Path | None:
        self._check_name(model)
        for fmt in TARGET_FORMATS:
            candidate = self.dir / f"{model}.{fmt}"
            if candidate.is_file():
                return candidate
        return None

    def save(self, model: str, data: bytes, check) -> tuple[Path, dict]:
        """Store ``data`` as the model's target once ``check(temporary_path)`` accepted it (it returns metadata).

        Nothing changes when the format is unknown or ``check`` raises: the previous target stays in place.
        """
        self._check_name(model)
        fmt = detect_format(data)
        temporary = None
        try:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd, temporary = tempfile.mkstemp(prefix=f".{model}.", suffix=f".{fmt}", dir=self.dir)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise TargetNotSaved("saved", self.dir, exc) from exc
            info = check(Path(temporary))
            final = self.dir / f"{model}.{fmt}"
            with self._lock:
                try:
                    os.replace(temporary, final)
                    for other in TARGET_FORMATS:
                        if other != fmt:
                            (self.dir / f"{model}.{other}").unlink(missing_ok=True)
                except OSError as exc:
                    raise TargetNotSaved("saved", self.dir, exc) from exc
            return final, info
        finally:
            if temporary is not None:
                try:
                    Path(temporary).unlink(missing_ok=True)
                except OSError:  # e.g. the directory turned read-only mid-way; start-up removes leftovers
                    log.warning("could not remove the temporary target file %s", temporary)

    def delete(self, model: str) -> bool:
        with self._lock:
            path = self.path(model)
            if path is None:
                return False
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise TargetNotSaved("removed", self.dir, exc) from exc
            return True

    @staticmethod
    def _check_name(model: str) -> None:
        if not isinstance(model, str) or not _MODEL_NAME.match(model):
            raise TargetError(f"invalid model name {model!r}")
