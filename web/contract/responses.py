"""Response models of the main answers. Used for the OpenAPI document (and by the tests' schema checks); the
routes build plain dicts. Keys not listed here may appear (extra data is allowed)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Number = float
Value = float | bool


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Error(Answer):
    error: str = Field(description="a stable code, e.g. invalid_parameter")
    message: str = Field(description="a human sentence")


class Param(Answer):
    name: str
    label: str
    unit: str | None
    type: Literal["float", "int", "bool"]
    min: Number | None
    max: Number | None
    step: Number | None
    default: Value
    group: str | None
    description: str | None
    inferred: bool = Field(False, description="the script declares no range: this one is inferred")
    range_override: bool = Field(False, description="this session narrowed the range (script_min/max: the script's)")
    script_min: Number | None = None
    script_max: Number | None = None


class Derived(Answer):
    name: str
    expression: str
    line: int
    uses: list[str]


class Source(Answer):
    kind: Literal["user", "vlm", "reset", "optimise", "range", "restore"]
    proposal_id: str = None
    index: int = Field(None, description="restore: the history entry whose state was restored (-1: the start)")


class Change(Answer):
    from_: Any = Field(None, alias="from")
    to: Any = None


class Entry(Answer):
    id: str
    index: int
    source: Source
    summary: str
    changes: dict[str, Change]
    timestamp: Number


class State(Answer):
    model: str
    title: str = None
    version: int = Field(ge=0)
    schema_: list[Param] = Field(alias="schema")
    derived: list[Derived] = None
    values: dict[str, Value]
    can_undo: bool
    can_redo: bool
    entry: Entry | None = Field(None, description="the history entry this request made (null: nothing changed)")


class History(Answer):
    model: str = None
    version: int
    position: int = Field(ge=-1, description="the entry the current state corresponds to (-1: defaults)")
    can_undo: bool
    can_redo: bool
    entries: list[Entry]


class HistoryState(Answer):
    """GET /api/history/{index}: the values right after that entry, and what restoring them would change."""
    model: str
    version: int = Field(ge=0, description="the session version these were worked out from")
    index: int = Field(ge=-1)
    values: dict[str, Value]
    changes: dict[str, Change] = Field(description="from the current values to that state's (empty: the same)")


class ModelInfo(Answer):
    name: str
    title: str
    description: str


class Script(Answer):
    name: str
    file: str
    origin: Literal["shipped", "user"] = None
    status: Literal["ok", "error", "invalid_name", "shadowed"]
    error: str | None


class Models(Answer):
    models: list[ModelInfo]
    default: str
    scripts: list[Script] = None


class Progress(Answer):
    fraction: Number = None
    phase: str = None
    elapsed_s: Number | None = None
    eta_s: Number | None = None


class Memory(Answer):
    rss_bytes: int | None = None
    gpu_bytes: int | None = None


class VlmStatus(Answer):
    backend: str
    model: str | None = None
    adapter: str | None = None
    state: Literal["unloaded", "loading", "ready", "failed"]
    progress: Progress
    memory: Memory
    error: str | None
    keep_alive_s: Number | None = None
    unload_in_s: Number | None = None
    load_count: int = None
    dtype: str | None = None
    dtype_reason: str | None = None
    engine: dict[str, Any] = None


class Proposal(Answer):
    parameter: str
    value: Any
    current: Any = None
    reason: str | None = None
    valid: bool
    error: str = None


class VlmAnswer(Answer):
    id: str
    backend: str
    model: str | None = None
    text: str
    summary: str | None = None
    proposals: list[Proposal]
    timings: dict[str, Number]
    cached: bool = None


class Rejected(Answer):
    id: str
    rejected: bool
    recorded_as: Literal["rejected", "no_change"] = None


class Target(Answer):
    model: str
    format: Literal["step", "stl"]
    kind: Literal["solid", "mesh"]
    volume: Number
    bbox: dict[str, Any]
    triangles: int = None
    size_bytes: int = None
    version: int = None
    comparison: dict[str, Any] | None = None


class OptimiseReport(Answer):
    iou_before: Number
    iou_after: Number
    method: str
    applied: bool
    steps: int
    max_steps: int
    stopped: Literal["converged", "budget", "target_reached", "cancelled"]
    proposed: dict[str, Value]
    search_iou_before: Number = None
    search_iou_after: Number = None
    elapsed_s: Number = None
    vlm_used: bool
    vlm_proposed: dict[str, Value]
    vlm_iou: Number | None
    vlm_accepted: bool
    vlm_summary: str | None = None
    vlm_note: str = None


class Optimised(State):
    optimise: OptimiseReport


Triple = list[Number]


class Measured(Answer):
    """A design measured on its B-rep (cad.measure): exact bounding box and the parts' union volume."""
    min: Triple = Field(min_length=3, max_length=3)
    max: Triple = Field(min_length=3, max_length=3)
    size: Triple = Field(min_length=3, max_length=3, description="bounding-box size along X, Y, Z")
    volume: Number = Field(description="in units^3")
    volume_method: Literal["union", "sum of parts"] = Field(
        description="union of the parts; the sum of their volumes where the CAD kernel's boolean failed")


class PreviewDiff(Answer):
    """POST /api/preview/diff: the current design against the one the values would make."""
    model: str
    base_version: int = Field(description="the session version the values were laid over")
    units: str = Field(description="length unit of the model's schema (its geometry's unit); volumes are in units^3")
    before: Measured
    after: Measured
    size_change: Triple = Field(min_length=3, max_length=3, description="after - before along X, Y, Z")
    volume_change: Number
    volume_relative: Number | None = Field(description="volume_change / before volume (null for a zero volume)")


RESPONSES = [Error, State, History, HistoryState, Models, VlmStatus, VlmAnswer, Rejected, Target, Optimised, PreviewDiff]
