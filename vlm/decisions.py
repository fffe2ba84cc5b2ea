"""What a designer decides about a proposal set: which values to apply (proposed, corrected or added), and whether
applying them now would overwrite edits made since the model answered.

Used by the web layer's apply/reject endpoints; pure Python over a `vlm.proposals.ProposalSet` and the model's
`cad.schema.Schema` (which validates every corrected or added value exactly like a manual edit).
"""
from __future__ import annotations

from typing import Any

from vlm.proposals import ProposalSelectionError, ProposalSet, select


def chosen_values(ps: ProposalSet, schema, *, parameters: list[str] | None = None,
                  values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values to apply.

    values: the designer's own values, corrections of proposed ones or parameters the model did not mention;
    validated by the schema (ParameterError on a bad one). parameters: the proposals to take as proposed; by
    default every valid proposal that `values` does not override. Raises ProposalSelectionError when nothing is
    chosen or a chosen proposal was rejected (and not corrected)."""
    corrections = schema.validate(values or {})
    if parameters is None:
        picked = {p.parameter: p.value for p in ps.proposals if p.valid and p.parameter not in corrections}
        if not picked and not corrections:
            raise ProposalSelectionError("this proposal has no valid changes to apply; correct a value or add a "
                                         "parameter to apply your own")
    else:
        names = [n for n in parameters if n not in corrections]
        if not names and not corrections:
            raise ProposalSelectionError("no parameters were chosen")
        picked = select(ps, names) if names else {}
    return {**picked, **corrections}


def overwritten_edits(ps: ProposalSet, current: dict[str, Any], chosen: dict[str, Any]) -> list[str]:
    """Parameters that changed since the model answered (it saw other values) and that `chosen` would set:
    applying would silently replace those newer edits."""
    seen = ps.meta.get("values") or {}
    return [name for name, value in chosen.items()
            if name in seen and name in current and current[name] != seen[name] and current[name] != value]
