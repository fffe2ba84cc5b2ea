"""Exceptions raised by the cad package. None of them carries a traceback meant for a client."""
from __future__ import annotations


class CadError(Exception):
    """Base class for every error the cad package raises on purpose."""


class ParameterError(CadError, ValueError):
    """A parameter value was rejected. ``parameter`` is the offending name (None when the whole input is bad)."""

    def __init__(self, parameter: str | None, message: str, min: float | None = None, max: float | None = None):
        super().__init__(message)
        self.parameter = parameter
        self.message = message
        self.min = min
        self.max = max


class UnknownModel(CadError, LookupError):
    """No CAD model with that name is registered."""

    def __init__(self, name: str, known: list[str] | tuple[str, ...] = ()):
        known_text = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown CAD model {name!r} (known: {known_text})")
        self.name = name


class _ScriptLocatedError(CadError):
    """An error that points at a model script's file and line, so its author can fix it."""

    def __init__(self, path: str, line: int | None, message: str):
        location = f"{path}:{line}" if line else str(path)
        super().__init__(f"{location}: {message}")
        self.path = str(path)
        self.line = line
        self.message = message


class ScriptError(_ScriptLocatedError):
    """A model script is malformed (syntax, schema comment, missing build function)."""


class BuildError(_ScriptLocatedError):
    """A model script raised while building, or produced something that is not a valid assembly."""


class EmptyGeometry(BuildError):
    """In-range values that leave a part with no solid (a cut larger than its body): one clear error for every
    export, render and comparison, which the optimiser scores as no overlap and moves away from."""
