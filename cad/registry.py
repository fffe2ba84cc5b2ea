"""Registry of CAD model scripts: the built-in ``cad/models/*.py`` plus any extra folders.

Scripts are parsed (never executed) to list them; a script is re-parsed when its file changes.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, replace
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
    kind: str = "build"  # "build" (a build(p) function) or "cqgi" (show_object calls)
    derived: tuple = ()  # cad.script.Derived values computed from the parameters

    def summary(self) -> dict:
        return {"name": self.name, "title": self.title, "description": self.description}


@dataclass(frozen=True)
class ScriptFile:
    """One ``.py`` file found in a models folder, whether or not it can be used."""
    name: str
    path: Path
    folder: Path
    builtin: bool
    problem: str | None = None  # "invalid_name" | "shadowed" | None
    shadowed_by: Path | None = None

    @property
    def file(self) -> str:
        """The path shown to clients: relative to its models folder (no absolute paths)."""
        return self.path.relative_to(self.folder).as_posix()


class ModelRegistry:
    """Models from ``cad/models`` (shipped) and the extra folders (searched recursively, in order).

    On a name clash the shipped model wins, then the earlier folder, then the file found first in a folder; the
    losers are listed as ``shadowed``. Files whose names are not ``[a-z0-9_]`` are listed as ``invalid_name``."""

    default_name = "rover"

    def __init__(self, extra_dirs: list[Path] | tuple[Path, ...] = ()):
        self.dirs = [BUILTIN_MODELS_DIR, *(Path(d) for d in extra_dirs)]
        self._lock = threading.Lock()
        self._parsed: dict[Path, tuple[tuple[int, int], CadModel | ScriptError]] = {}

    def _files(self) -> list[ScriptFile]:
        files: list[ScriptFile] = []
        winners: dict[str, Path] = {}
        for index, folder in enumerate(self.dirs):
            if not folder.is_dir():
                continue
            found = folder.glob("*.py") if index == 0 else folder.rglob("*.py")
            for path in sorted(found, key=lambda p: (len(p.relative_to(folder).parts), p.as_posix())):
                relative = path.relative_to(folder).parts
                if path.name == "__init__.py" or any(p.startswith((".", "__")) for p in relative[:-1]):
                    continue
                name, resolved = path.stem, path.resolve()
                entry = ScriptFile(name, resolved, folder.resolve(), index == 0)
                if not _MODEL_NAME.match(name):
                    entry = replace(entry, problem="invalid_name")
                elif name in winners:
                    entry = replace(entry, problem="shadowed", shadowed_by=winners[name])
                    log.warning("CAD model %s in %s is shadowed by %s", name, path, winners[name])
                else:
                    winners[name] = resolved
                files.append(entry)
        return files

    def _scripts(self) -> dict[str, Path]:
        """name -> path of the model that answers to each name."""
        return {f.name: f.path for f in self._files() if f.problem is None}

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
                                                         info.source_hash, info.kind, info.derived)
            except ScriptError as exc:
                entry = exc
            with self._lock:
                self._parsed[path] = (stamp, entry)
            cached = (stamp, entry)
        if isinstance(cached[1], ScriptError):
            raise cached[1]
        return cached[1]

    def list(self) -> list[dict]:
        """Summaries of every loadable model (the UI's model picker); ``scripts()`` lists every file."""
        return [s["summary"] for s in self._statuses() if s["status"] == "ok"]

    def scripts(self) -> list[dict]:
        """Every script file found: name, file (relative to its folder), origin, format, status
        (ok | error | invalid_name | shadowed) and, unless ok, the error; shadowed files name the winner."""
        return [{k: v for k, v in s.items() if k != "summary"} for s in self._statuses()]

    def _statuses(self) -> list[dict]:
        rows = []
        for f in self._files():
            row = {"name": f.name, "file": f.file, "origin": "shipped" if f.builtin else "user",
                   "status": "ok", "error": None, "summary": None}
            if f.problem == "invalid_name":
                row.update(status="invalid_name", error=f"file name {f.path.name!r} is not a model name: use "
                                                        "lower-case letters, digits and _ (e.g. my_part.py)")
            elif f.problem == "shadowed":
                winner = "the shipped model" if f.shadowed_by.parent == BUILTIN_MODELS_DIR else "the script"
                row.update(status="shadowed", shadowed_by=self._shown(f.shadowed_by),
                           error=f"hidden by {winner} {self._shown(f.shadowed_by)} of the same name, which "
                                 f"wins; rename this file to use it")
            else:
                try:
                    model = self._load(f.name, f.path)
                    row.update(summary=model.summary(), title=model.title, format=model.kind,
                               parameters=len(model.schema), derived=[d.name for d in model.derived])
                except ScriptError as exc:
                    row.update(status="error", error=exc.message, line=exc.line)
            rows.append(row)
        return rows

    def _shown(self, path: Path) -> str:
        for folder in self.dirs:
            try:
                relative = path.relative_to(folder.resolve()).as_posix()
            except ValueError:
                continue
            return f"cad/models/{relative}" if folder == BUILTIN_MODELS_DIR else relative
        return path.name

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
