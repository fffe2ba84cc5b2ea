"""Registry of CAD model scripts: the built-in ``cad/models/*.py`` plus any extra folders.

Scripts are parsed (never executed) to list them; a script is re-parsed when its file changes.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from cad.errors import ScriptError, UnknownModel
from cad.schema import Schema
from cad.script import parse_script

log = logging.getLogger(__name__)

BUILTIN_MODELS_DIR = Path(__file__).resolve().parent / "models"
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True)
class CadModel:
    name: str
    title: str
    description: str
    path: Path
    schema: Schema
    source_hash: str

    def summary(self) -> dict:
        return {"name": self.name, "title": self.title, "description": self.description}


class ModelRegistry:
    default_name = "rover"

    def __init__(self, extra_dirs: list[Path] | tuple[Path, ...] = ()):
        self.dirs = [BUILTIN_MODELS_DIR, *(Path(d) for d in extra_dirs)]
        self._lock = threading.Lock()
        self._parsed: dict[Path, tuple[tuple[int, int], CadModel | ScriptError]] = {}

    def _scripts(self) -> dict[str, Path]:
        """name -> path; on a name clash the earlier folder (built-ins first) wins."""
        found: dict[str, Path] = {}
        for folder in self.dirs:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.py")):
                name = path.stem
                if not _MODEL_NAME.match(name):
                    continue
                if name in found:
                    log.warning("CAD model %s in %s is shadowed by %s", name, path, found[name])
                    continue
                found[name] = path.resolve()
        return found

    def _load(self, name: str, path: Path) -> CadModel:
        try:
            stat = path.stat()
        except OSError as exc:
            raise ScriptError(str(path), None, f"cannot read script: {exc}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._parsed.get(path)
        if cached is None or cached[0] != stamp:
            try:
                info = parse_script(path)
                entry: CadModel | ScriptError = CadModel(name, info.title, info.description, path, info.schema,
                                                         info.source_hash)
            except ScriptError as exc:
                entry = exc
            with self._lock:
                self._parsed[path] = (stamp, entry)
            cached = (stamp, entry)
        if isinstance(cached[1], ScriptError):
            raise cached[1]
        return cached[1]

    def list(self) -> list[dict]:
        """Summaries of every loadable model; broken scripts are logged and left out."""
        models = []
        for name, path in self._scripts().items():
            try:
                models.append(self._load(name, path).summary())
            except ScriptError as exc:
                log.warning("skipping CAD model %s: %s", name, exc)
        return models

    def names(self) -> list[str]:
        return list(self._scripts())

    def get(self, name: str | None = None) -> CadModel:
        """The model ``name`` (default model when None). Raises UnknownModel, or ScriptError for a broken script."""
        name = name or self.default_name
        scripts = self._scripts()
        path = scripts.get(name) if isinstance(name, str) else None
        if path is None:
            raise UnknownModel(str(name), list(scripts))
        return self._load(name, path)
