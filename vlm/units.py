"""Interpret the values a model proposes: numbers, numbers with units, relative changes, booleans.

Grammar of string values (case-insensitive, spaces optional):
  absolute   "120", "120 mm", "12 cm", "0.1 m", "2 in", "30°", "15 deg", "0.5 rad"  -> converted to the param's unit
  percent    "+10%", "-25%", "25% larger", "10% smaller", "increase by 10%"          -> applied to the current value
  offset     "+5 mm", "+5", "increase by 5 mm", "reduce by 2 mm"                    -> added to the current value
  factor     "x1.5", "1.5x", "×2", "*0.5"                                            -> multiplies the current value
A leading "-" in a string ("-5 mm") is an offset when the parameter cannot be negative (min >= 0), and an
absolute value otherwise; numbers sent as JSON numbers are always absolute. A bare "50%" is refused as ambiguous
unless the parameter's own unit is "%".
"""
from __future__ import annotations

import math
import re
from typing import Any

# unit spelling -> (dimension, factor to the dimension's base unit)
_UNITS: dict[str, tuple[str, float]] = {}
for _dim, _factor, _spellings in [
    ("length", 1.0, "mm millimeter millimeters millimetre millimetres"),
    ("length", 10.0, "cm centimeter centimeters centimetre centimetres"),
    ("length", 1000.0, "m meter meters metre metres"),
    ("length", 0.001, "um µm micron microns"),
    ("length", 25.4, 'in inch inches "'),
    ("length", 304.8, "ft foot feet '"),
    ("angle", 1.0, "deg degs degree degrees °"),
    ("angle", 180.0 / math.pi, "rad rads radian radians"),
    ("mass", 1.0, "g gram grams"),
    ("mass", 1000.0, "kg kilogram kilograms"),
    ("time", 1.0, "s sec secs second seconds"),
    ("time", 0.001, "ms millisecond milliseconds"),
    ("ratio", 1.0, "%"),
]:
    for _s in _spellings.split():
        _UNITS[_s] = (_dim, _factor)
_DIMENSION_WORDS = {"length": "a length", "angle": "an angle", "mass": "a mass", "time": "a time", "ratio": "a ratio"}

_NUM = r"(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?"
_UNIT = r"([a-zµ°\"'%]*)"
_INCREASE = r"(?:larger|bigger|more|higher|longer|wider|taller|greater|up|increase|increased)"
_DECREASE = r"(?:smaller|less|lower|shorter|narrower|thinner|down|decrease|decreased|reduced)"
_ABS_RE = re.compile(rf"^([+-]?){_NUM}\s*{_UNIT}$")
_PCT_SUFFIX_RE = re.compile(rf"^{_NUM}\s*%\s*({_INCREASE}|{_DECREASE})$")
_BY_RE = re.compile(rf"^(increase|raise|grow|enlarge|extend|decrease|reduce|lower|shrink|shorten)\s+(?:it\s+)?by\s+"
                    rf"{_NUM}\s*{_UNIT}$")
_FACTOR_RE = re.compile(rf"^(?:[x×*]\s*{_NUM}|{_NUM}\s*[x×])$")
_TRUE = {"true", "yes", "y", "on", "1", "enable", "enabled"}
_FALSE = {"false", "no", "n", "off", "0", "disable", "disabled"}


class BadValue(Exception):
    """The proposed value cannot be used; the message is a sentence fragment after "<parameter>: "."""


def format_number(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.6g}"
    return str(v)


SIGNIFICANT_DIGITS = 3
_PLAIN_RANGE = (-6, 6)  # decimal exponents written without an exponent: 0.000001 .. 999999


def format_significant(value: Any, digits: int = SIGNIFICANT_DIGITS, reference: float | None = None,
                       signed: bool = False) -> str:
    """A measured quantity to ``digits`` significant digits at any scale: 0.0156, 75.2, 2040, 3.49e+09.

    Fixed decimals read "0.0" for a 0.02 mm plate and "0" for its volume; significant digits do not, and the same
    part at x0.01, x1 and x100 reads the same digits (0.257, 25.7, 2570). Trailing zeros are kept: they are
    significant (12 to three digits is 12.0). ``reference`` sets the precision instead of the value itself: a
    difference is written to the precision of the figures it compares (-2.1 beside 25.7, -210 beside 2570), so
    float noise (1e-13 on a 20 mm box) reads 0.0 and not 1.00e-13. ``signed`` writes a + before positive values
    (none before 0). Values from 1e6 up and below 1e-6 are written with an exponent. Not a number: "-".
    """
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    given = isinstance(reference, (int, float)) and not isinstance(reference, bool) and math.isfinite(reference) \
        and reference != 0
    scale = abs(reference) if given else abs(value)
    if scale == 0:
        return "0"
    exponent = math.floor(math.log10(scale))
    place = exponent - digits + 1  # the decimal place of the last significant digit
    if _PLAIN_RANGE[0] <= exponent < _PLAIN_RANGE[1]:
        # to the place, half away from zero (as static/js/viewer-units.js does, in the same float arithmetic)
        whole = math.copysign(math.floor(abs(value) / 10 ** place + 0.5) * 10 ** place, value)
        text = f"{value:.{-place}f}" if place < 0 else f"{whole:.0f}"
    else:
        own = math.floor(math.log10(abs(value))) if value else place - 1
        kept = own - place + 1  # significant digits of the value at the reference's precision
        text = f"{value:.{kept - 1}e}" if kept >= 1 else "0"
    if float(text) == 0:
        return text.lstrip("-")  # -0.0 is 0.0
    return f"+{text}" if signed and value > 0 else text


def format_size(value: Any, unit: str = "mm", digits: int = SIGNIFICANT_DIGITS, **options) -> str:
    """``format_significant`` followed by its unit: "0.0156 mm", "2040 mm^3"."""
    return f"{format_significant(value, digits, **options)} {unit}".rstrip()


def tidy_number(value: Any) -> Any:
    """Whole floats as integers (300, not 300.0), as the prompt's parameter table writes them."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


def format_quantity(v: Any, unit: str) -> str:
    if not unit:
        return format_number(v)
    sep = "" if unit in ("°", "%") else " "
    return f"{format_number(v)}{sep}{unit}"


def _num(mantissa: str, exponent: str | None) -> float:
    value = float(f"{mantissa}e{exponent or 0}")
    if not math.isfinite(value):
        raise BadValue("is too large")
    return value


def _tidy(v: float) -> float:
    """Drop float noise from conversions (0.1 m -> 100.00000000000001 mm)."""
    return float(f"{v:.12g}")


def _convert(amount: float, unit: str, param_unit: str, text: str) -> float:
    """`amount` in `unit` expressed in the parameter's unit."""
    unit = unit.strip()
    if not unit or unit == param_unit.strip().lower():
        return amount
    given = _UNITS.get(unit)
    if given is None:
        raise BadValue(f"{text!r} has a unit I do not know ({unit!r})")
    target = _UNITS.get(param_unit.strip().lower())
    if target is None:
        raise BadValue(f"{text!r} is in {unit}, which cannot be converted to {param_unit or 'a plain number'}")
    if given[0] != target[0]:
        raise BadValue(f"{text!r} is {_DIMENSION_WORDS[given[0]]}, but this parameter is "
                       f"{_DIMENSION_WORDS[target[0]]} in {param_unit}")
    return amount * given[1] / target[1]


def _needs_current(current: Any, text: str) -> float:
    if isinstance(current, bool) or not isinstance(current, (int, float)) or not math.isfinite(current):
        raise BadValue(f"{text!r} is a relative change but the current value is unknown")
    return float(current)


_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _commas(s: str) -> str:
    """Thousands separators go ("1,200" is 1200); any other comma between digits is a decimal comma ("12,5")."""
    if _THOUSANDS.search(s):
        return _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s)
    return re.sub(r"(?<=\d),(?=\d)", ".", s)


def _parse_numeric_text(text: str, param: dict, current: Any) -> float:
    unit = str(param.get("unit") or "")
    s = _commas(text.strip().lower())
    s = re.sub(r"^(?:~|≈|about|approx\.?|approximately|around|roughly|circa|ca\.)\s*", "", s)
    s = re.sub(r"\s+", " ", s)
    if m := _PCT_SUFFIX_RE.match(s):
        pct = _num(m.group(1), m.group(2))
        sign = 1.0 if re.fullmatch(_INCREASE, m.group(3)) else -1.0
        return _needs_current(current, text) * (1.0 + sign * pct / 100.0)
    if m := _BY_RE.match(s):
        amount = _num(m.group(2), m.group(3))
        sign = 1.0 if m.group(1) in ("increase", "raise", "grow", "enlarge", "extend") else -1.0
        base = _needs_current(current, text)
        if m.group(4) == "%":
            return base * (1.0 + sign * amount / 100.0)
        return base + sign * _convert(amount, m.group(4), unit, text)
    if m := _FACTOR_RE.match(s):
        factor = _num(m.group(1), m.group(2)) if m.group(1) else _num(m.group(3), m.group(4))
        return _needs_current(current, text) * factor
    if m := _ABS_RE.match(s):
        sign, amount, given_unit = m.group(1), _num(m.group(2), m.group(3)), m.group(4)
        relative = sign == "+" or (sign == "-" and (param.get("min") is not None and param["min"] >= 0))
        if given_unit == "%" and unit != "%":
            if not sign:
                raise BadValue(f"{text!r} is ambiguous: write +{text.strip()}, -{text.strip()} or an absolute value")
            base = _needs_current(current, text)
            return base * (1.0 + (amount if sign == "+" else -amount) / 100.0)
        converted = _convert(amount, given_unit, unit, text)
        if relative:
            base = _needs_current(current, text)
            return base + (converted if sign == "+" else -converted)
        return -converted if sign == "-" else converted
    raise BadValue(f"{text!r} is not a number")


def coerce_value(raw: Any, param: dict, current: Any) -> Any:
    """The value to set for `param`, in its unit and type. Raises BadValue with the reason."""
    kind = param.get("type", "float")
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, float)) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise BadValue(f"{format_number(raw) if not isinstance(raw, str) else repr(raw)} is not true or false")
    if isinstance(raw, bool):
        raise BadValue(f"expects a number, got {format_number(raw)}")
    if isinstance(raw, int) and abs(raw) > 10**300:
        raise BadValue("is far too large")
    if isinstance(raw, (int, float)):
        value = raw
    elif isinstance(raw, str):
        if len(raw) > 100:
            raise BadValue("the value is not a number")
        value = _tidy(_parse_numeric_text(raw, param, current))
    else:
        raise BadValue(f"{type(raw).__name__} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadValue(f"{format_number(value)} is not a finite number")
    if kind == "int":
        if isinstance(value, float):
            if value != round(value):
                raise BadValue(f"{format_number(value)} is not a whole number")
            value = int(round(value))
        return value
    return float(value)
