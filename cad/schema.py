"""Typed parameter schema of a CAD model and validation of user/VLM supplied values.

Pure Python: importing this module never imports cadquery.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from cad.errors import ParameterError

PARAMETER_TYPES = ("float", "int", "bool")


@dataclass(frozen=True)
class Parameter:
    name: str
    label: str
    unit: str
    type: str  # "float" | "int" | "bool"
    min: float | int | None
    max: float | int | None
    step: float | int | None
    default: float | int | bool
    group: str
    description: str
    inferred: bool = False  # the script gives no range: min/max were inferred from the default
    script_range: tuple | None = None  # (min, max) of the script when a session narrowed the range

    def to_json(self) -> dict:
        data = {
            "name": self.name, "label": self.label, "unit": self.unit, "type": self.type,
            "min": self.min, "max": self.max, "step": self.step, "default": self.default,
            "group": self.group, "description": self.description,
        }
        if self.inferred:
            data["inferred"] = True
        if self.script_range is not None:
            data["range_override"] = True
            data["script_min"], data["script_max"] = self.script_range
        return data

    def narrowed(self, low: float | int, high: float | int) -> "Parameter":
        """This parameter with its range narrowed to ``low..high`` (checked by the caller); the default is
        clamped into it."""
        script_range = self.script_range or (self.min, self.max)
        default = min(max(self.default, low), high)
        return replace(self, min=low, max=high, default=default, script_range=script_range)

    def _range_text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"between {_fmt(self.min)} and {_fmt(self.max)}{unit}"

    def coerce(self, value: Any) -> float | int | bool:
        """Return ``value`` converted to this parameter's type, or raise ParameterError."""
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            raise self._error(f"{self.name} must be true or false, got {_show(value)}")
        # bool is an int subclass in Python; JSON true/false for a number is a type error.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._error(f"{self.name} must be a number, got {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self._error(f"{self.name} must be a finite number, got {value}")
        if self.type == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    raise self._error(f"{self.name} must be a whole number, got {value}")
                value = int(value)
        else:
            value = float(value)
        if value < self.min or value > self.max:
            raise self._error(f"{self.name} must be {self._range_text()}, got {_fmt(value)}")
        return value

    def _error(self, message: str) -> ParameterError:
        return ParameterError(self.name, message, min=self.min, max=self.max)


class Schema:
    """Ordered collection of parameters (script order)."""

    def __init__(self, parameters: list[Parameter]):
        self.parameters = list(parameters)
        self._by_name = {p.name: p for p in self.parameters}

    def __iter__(self):
        return iter(self.parameters)

    def __len__(self) -> int:
        return len(self.parameters)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Parameter:
        return self._by_name[name]

    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def to_json(self) -> list[dict]:
        return [p.to_json() for p in self.parameters]

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.parameters}

    def validate(self, values: dict, *, partial: bool = True) -> dict:
        """Coerce and check ``values``; return a new dict. Nothing is applied on error.

        ``partial=False`` additionally requires every parameter to be present.
        """
        if not isinstance(values, dict):
            raise ParameterError(None, f"parameter values must be an object of name: value, got {_show(values)}")
        coerced = {}
        for name, value in values.items():
            parameter = self._by_name.get(name) if isinstance(name, str) else None
            if parameter is None:
                known = ", ".join(self.names())
                raise ParameterError(str(name), f"unknown parameter {name!r} (known: {known})")
            coerced[name] = parameter.coerce(value)
        if not partial:
            missing = [n for n in self.names() if n not in coerced]
            if missing:
                raise ParameterError(missing[0], f"missing parameter(s): {', '.join(missing)}")
        return coerced

    def with_ranges(self, ranges: dict[str, tuple]) -> "Schema":
        """A copy with the number parameters in ``ranges`` (name -> (min, max)) narrowed; others unchanged."""
        return Schema([p.narrowed(*ranges[p.name]) if p.name in ranges else p for p in self.parameters])

    def check_range(self, name: str, low, high) -> tuple:
        """``(low, high)`` coerced for parameter ``name`` when it narrows (or equals) its range; else
        ParameterError. Whole numbers for ints; bools have no range."""
        parameter = self._by_name.get(name) if isinstance(name, str) else None
        if parameter is None:
            raise ParameterError(str(name), f"unknown parameter {name!r} (known: {', '.join(self.names())})")
        if parameter.type == "bool":
            raise ParameterError(name, f"{name} is a bool: it has no range")
        bounds = parameter.script_range or (parameter.min, parameter.max)
        probe = Parameter(name, parameter.label, parameter.unit, parameter.type, bounds[0], bounds[1],
                          parameter.step, parameter.default, parameter.group, "")
        low, high = probe.coerce(low), probe.coerce(high)
        if not low < high:
            raise ParameterError(name, f"{name}: range min {_fmt(low)} must be below max {_fmt(high)}",
                                 min=bounds[0], max=bounds[1])
        return low, high

    def length_unit(self) -> str:
        """The unit the script's lengths are in (and so its geometry): the most common length unit among its
        parameters (``mm``, ``cm``, ``m``, ``in``, ...), ``mm`` when none names one."""
        units = [p.unit for p in self.parameters if p.unit in LENGTH_UNITS]
        return max(LENGTH_UNITS, key=units.count) if units else "mm"

    def complete(self, values: dict) -> dict:
        """Defaults overlaid with validated ``values``, in schema order (the canonical full state)."""
        merged = self.defaults()
        merged.update(self.validate(values))
        return {n: merged[n] for n in self.names()}


LENGTH_UNITS = ("mm", "cm", "m", "um", "µm", "in", "ft")  # ties go to the first (mm)


def _fmt(value: float | int | None) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
