"""Self-consistency voting: several sampled answers to one request, merged into the changes most of them agree on.

Why: a model trained by imitation names *some* parameter even when it cannot tell which one the request means (a
reference photo it cannot read, a clause it did not follow): greedy decoding then applies a confident-looking guess,
and a change to the wrong parameter costs more than no change. Sampled answers disagree exactly there, and agree
where the model knows (Wang et al. 2022, "Self-consistency improves chain of thought reasoning"). So a parameter is
changed only when at least `min_share` of the answers change it, to the median of their values (`median_low`: a
value one of the answers gave, so it stays on the parameter's grid); bools by majority. Works for every backend:
the answers are plain texts, read as the server reads them (`vlm.proposals.parse_model_output`).
"""
from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, replace

from vlm.backend import GenerateRequest, GenerateResult
from vlm.proposals import parse_model_output

DEFAULT_MIN_SHARE = 0.5  # more than this share of the answers must change a parameter (a strict majority)
MAX_VOTES = 16


def _consensus(param: dict, values: list):
    if param.get("type") == "bool":
        counts = Counter(bool(v) for v in values)
        return counts[True] >= counts[False]
    return statistics.median_low(values)


def vote(texts: list[str], schema: list[dict], values: dict, *, min_share: float = DEFAULT_MIN_SHARE) -> dict:
    """The merged answer (summary + changes, the proposal format) of several answers to the same request.

    An answer that does not parse, or proposes the current value, counts as a vote for no change; within one answer
    the last valid proposal for a parameter is its vote. Changes keep the order in which the answers first named them."""
    if not texts:
        raise ValueError("no answers to vote on")
    by_param: dict[str, list] = {}
    for text in texts:
        parsed = parse_model_output(text, schema, values)
        # a proposal of the value already in place is a vote for no change
        mine = {p.parameter: p.value for p in parsed.valid_proposals if p.value != values.get(p.parameter)}
        for name, value in mine.items():
            by_param.setdefault(name, []).append(value)
    needed = max(1, math.floor(min_share * len(texts)) + 1)
    params = {p["name"]: p for p in schema}
    changes = []
    for name, proposed in by_param.items():
        if len(proposed) >= needed:  # valid proposals name schema parameters
            changes.append({"parameter": name, "value": _consensus(params[name], proposed),
                            "reason": f"{len(proposed)} of {len(texts)} sampled answers change it"})
    if changes:
        summary = f"{len(texts)} sampled answers agree on: " + ", ".join(
            f"{c['parameter']} {json.dumps(c['value'])}" for c in changes) + "."
    else:
        summary = f"No change that most of {len(texts)} sampled answers agree on."
    return {"summary": summary, "changes": changes}


@dataclass(frozen=True)
class VoteSettings:
    """How many answers to sample and merge (`votes` 1: one answer as asked, no voting)."""
    votes: int = 1
    temperature: float = 0.7
    min_share: float = DEFAULT_MIN_SHARE
    seed: int = 0  # sample i uses seed + i: the same request gets the same votes

    def __post_init__(self):
        if not 1 <= self.votes <= MAX_VOTES:
            raise ValueError(f"votes must be 1..{MAX_VOTES}, not {self.votes}")
        if self.votes > 1 and not 0 < self.temperature <= 2:
            raise ValueError(f"the voting temperature must be in (0, 2], not {self.temperature}")
        if not 0 <= self.min_share < 1:
            raise ValueError(f"the voting share must be in [0, 1), not {self.min_share}")

    def samples(self, request: GenerateRequest) -> list[GenerateRequest]:
        """The requests to send: the asked one, or `votes` sampled copies with their own seeds."""
        if self.votes == 1:
            return [request]
        return [replace(request, temperature=self.temperature, seed=self.seed + i) for i in range(self.votes)]

    def answer(self, run, request: GenerateRequest, schema: list[dict], values: dict) -> GenerateResult:
        """The answer to `request`: `run(requests) -> results` generates this setting's samples, merged by vote."""
        return merged_result(run(self.samples(request)), schema, values, self)


def merged_result(results: list[GenerateResult], schema: list[dict], values: dict,
                  settings: VoteSettings) -> GenerateResult:
    """One result from the sampled ones: the voted answer as its text, token counts summed, timings of the whole."""
    if len(results) == 1:
        return results[0]
    text = json.dumps(vote([r.text for r in results], schema, values, min_share=settings.min_share))
    cut = sum(r.finish_reason == "length" for r in results)
    timings = {"generate": round(sum(r.timings.get("generate", 0.0) for r in results), 4), "votes": len(results)}
    return GenerateResult(text=text, model=results[0].model,
                          prompt_tokens=sum(r.prompt_tokens or 0 for r in results) or None,
                          completion_tokens=sum(r.completion_tokens or 0 for r in results) or None,
                          timings=timings, finish_reason="length" if cut * 2 > len(results) else "stop")
