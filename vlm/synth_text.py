"""Requests a designer would type, derived from a change between two parameter states (`vlm.synth`).

Styles:
    photo      "Match the reference photo." (the reference images show the target state)
    absolute   "The chassis length should be about 300 mm."
    relative   "Increase the wheel diameter by 20 mm."
    direction  "Make the wheel diameter larger." (the amount is the designer's and only the answer knows it)
    no_change  a request that needs no change ("This matches the photo; keep it as it is.")
Every style has several phrasings; names are the parameter's label in words, sometimes its code name.
"""
from __future__ import annotations

import random

from vlm.units import format_quantity

STYLES = ("photo", "absolute", "relative", "direction")

PHOTO_REQUESTS = (
    "Match the reference photo.",
    "Make the design look like the reference image.",
    "Change the parameters so the model matches the photo.",
    "Here is a photo of the part I want: match it.",
    "Adjust the model to match the attached reference.",
)
NO_CHANGE_REQUESTS = (
    "This already looks right; keep it as it is.",
    "Leave the design as it is.",
    "No changes please, it is fine the way it is.",
)
_ABSOLUTE = (
    "the {name} should be about {value}",
    "set the {name} to {value}",
    "make the {name} {value}",
    "I need a {name} of {value}",
    "change {name} to {value}",
)
_INT_ABSOLUTE = ("use {value} for the {name}", "set the {name} to {value}", "the {name} should be {value}")
_UP = ("increase the {name} by {amount}", "raise the {name} by {amount}", "add {amount} to the {name}")
_DOWN = ("decrease the {name} by {amount}", "reduce the {name} by {amount}", "take {amount} off the {name}")
_LARGER = ("make the {name} larger", "increase the {name}", "the {name} should be bigger")
_SMALLER = ("make the {name} smaller", "reduce the {name}", "the {name} should be smaller")


def spoken_name(param: dict, rng: random.Random) -> str:
    """The label in lower case ("chassis length"), or now and then the code name ("chassis_length")."""
    label = str(param.get("label") or param["name"].replace("_", " "))
    return param["name"] if rng.random() < 0.2 else label[:1].lower() + label[1:]


def _bool_phrase(param: dict, value: bool, rng: random.Random) -> str:
    label = str(param.get("label") or param["name"].replace("_", " "))
    thing = label[5:] if label.lower().startswith("show ") else label
    thing = thing[:1].lower() + thing[1:]
    if label.lower().startswith("show "):
        return rng.choice((f"show the {thing}", f"include the {thing}")) if value else \
            rng.choice((f"hide the {thing}", f"remove the {thing}", f"leave out the {thing}"))
    return f"turn {thing} {'on' if value else 'off'}"


def change_phrase(param: dict, old, new, style: str, rng: random.Random) -> str:
    """One clause asking for `param` to go from `old` to `new` in the given style."""
    if param.get("type") == "bool":
        return _bool_phrase(param, bool(new), rng)
    unit = param.get("unit") or ""
    name = spoken_name(param, rng)
    if style == "relative" and old != new:
        amount = format_quantity(abs(new - old), unit)
        return rng.choice(_UP if new > old else _DOWN).format(name=name, amount=amount)
    if style == "direction" and old != new:
        return rng.choice(_LARGER if new > old else _SMALLER).format(name=name)
    templates = _INT_ABSOLUTE if param.get("type") == "int" else _ABSOLUTE
    return rng.choice(templates).format(name=name, value=format_quantity(new, unit))


def join_clauses(clauses: list[str]) -> str:
    text = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return text[:1].upper() + text[1:] + "."


def request_text(changes: list[tuple[dict, object, object]], style: str, rng: random.Random) -> str:
    """The designer's request for `changes` ((param, old, new) triples) in `style`."""
    if style == "photo":
        return rng.choice(PHOTO_REQUESTS)
    if not changes:
        return rng.choice(NO_CHANGE_REQUESTS)
    return join_clauses([change_phrase(p, old, new, style, rng) for p, old, new in changes])


def summary_text(changes: list[tuple[dict, object, object]]) -> str:
    """The answer's summary: what was set, in the request's terms."""
    if not changes:
        return "Nothing needs to change."
    parts = []
    for param, _, new in changes:
        label = str(param.get("label") or param["name"]).lower()
        value = ("on" if new else "off") if param.get("type") == "bool" else \
            format_quantity(new, param.get("unit") or "")
        parts.append(f"{label} {value}")
    return "Set " + ", ".join(parts) + "."


def reason_text(style: str) -> str:
    return "matches the reference" if style == "photo" else "as requested"
