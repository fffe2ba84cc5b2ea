"""Request models: every JSON body and query string the API takes, with its limits, defined once.

The routes validate with these (web/contract/validate.py) and the OpenAPI document is generated from them
(web/contract/spec.py). Each model's `refusals` says which error code and message a bad field gets.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from vlm.dataset import MAX_REASON_CHARS
from vlm.images import MAX_IMAGES

from .validate import Refusal

MAX_MODEL_NAME = 100
MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 2048
MAX_TEMPERATURE = 2.0
MAX_OPTIMISE_STEPS = 2000  # web/optimise_api.py asserts it fits cad.fit's MAX_EVALUATIONS_LIMIT
DEFAULT_OPTIMISE_STEPS = 1000
MIN_RENDER_SIZE, MAX_RENDER_SIZE = 64, 1024  # renders cost the one build worker the square of their size
VIEWS = ("front", "side", "top", "iso")
DOWNLOAD_VALUES = ("0", "1", "false", "true")
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_TARGET_MB = 20  # target uploads (STEP/STL) may be larger than other bodies (MAX_UPLOAD_MB)
MAX_TARGET_BYTES = MAX_TARGET_MB * 2**20


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def component(name: str) -> dict:
    """A reference to a component that pydantic does not define (it would try to resolve a $ref): web/contract/spec.py
    turns it into a $ref."""
    return {"x-component": name}


# Filled per CAD model when the document is generated: the parameter names and each one's type and range.
ParameterValues = Annotated[dict[str, Any], WithJsonSchema(component("ParameterValues"))]
NonEmptyValues = Annotated[dict[str, Any], Field(min_length=1),
                           WithJsonSchema({"allOf": [component("ParameterValues")], "minProperties": 1})]
ParameterName = Annotated[str, WithJsonSchema(component("ParameterName"))]
NumberParameterName = Annotated[str, WithJsonSchema(component("NumberParameterName"))]
# Range ends are checked by the session (a string is 422 invalid_parameter, like an edit); documented as numbers.
RangeEnd = Annotated[Any, WithJsonSchema({"type": "number"})]



def _integral(value):
    """JSON Schema's integer includes 3.0 (a fuzzer sends it): an integral float is that integer. Bools, strings
    and fractions stay as they are and are refused by the strict int."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_integral)]
# Documented per document (web/contract/spec.py): any name, or the one model a per-model document is for.
ModelName = Annotated[str, Field(max_length=MAX_MODEL_NAME), WithJsonSchema(component("ModelName"))]
Version = Annotated[Whole, Field(description="the version you last saw: 409 version_conflict when the design has "
                                           "moved on; leave it out to skip the check")]
Flag = bool

MODEL_REFUSAL = Refusal("bad_model", "model must be a model name string",
                        range_message="model must be a model name string of at most {hi} characters", range_status=400)
VERSION_REFUSAL = Refusal("bad_version", "version must be an integer (the version you last saw); leave it out to "
                                         "skip the check")


def flag_refusal(name: str, code: str | None = None) -> Refusal:
    return Refusal(code or f"bad_{name}", f"{name} must be true or false, got {{value!r}}")


class Body(BaseModel):
    """A JSON object body; keys it does not declare are ignored. JSON types are taken as they are (strict)."""
    model_config = ConfigDict(strict=True, extra="ignore")
    refusals: ClassVar[dict[str, Refusal]] = {"model": MODEL_REFUSAL, "version": VERSION_REFUSAL}


class VersionBody(Body):
    """undo, redo, reset"""
    model: ModelName = None
    version: Version = None


class EditRequest(VersionBody):
    """PATCH /api/params: a validated partial update, one history entry."""
    values: NonEmptyValues = Field(description="parameter name: new value (see ParameterValues)")
    refusals = {**Body.refusals, "values": Refusal(
        "missing_values", 'send {{"values": {{"parameter": value, ...}}, "version": N}}')}


class RangeRequest(VersionBody):
    """PUT /api/params/range: narrow one number parameter's range for this session."""
    parameter: NumberParameterName
    min: RangeEnd
    max: RangeEnd
    refusals = {**Body.refusals, **{k: Refusal("bad_range", 'send {{"parameter": name, "min": low, "max": high, '
                                                            '"version": N}}') for k in ("parameter", "min", "max")}}


class RangeResetRequest(VersionBody):
    """DELETE /api/params/range (or ?parameter=)"""
    parameter: NumberParameterName = None
    refusals = {**Body.refusals, "parameter": Refusal("bad_range", "say which parameter: ?parameter=name")}


MAX_CAMERA_COORD = 1e9  # mm; the viewer's camera, in the model's coordinates (cad.render.check_camera)
CameraCoord = Annotated[float, Field(ge=-MAX_CAMERA_COORD, le=MAX_CAMERA_COORD, allow_inf_nan=False)]
Vector3 = Annotated[list[CameraCoord], Field(min_length=3, max_length=3)]


class Camera(BaseModel):
    """The 3D view's camera in the model's coordinates (mm, Z up): "include_render" renders what is on screen."""
    model_config = ConfigDict(strict=True, extra="forbid")
    position: Vector3
    target: Vector3
    up: Vector3
    projection: Literal["perspective", "orthographic"] = "perspective"
    fov: float = Field(40.0, ge=1.0, le=170.0, allow_inf_nan=False, description="vertical, degrees (perspective)")
    height: float = Field(None, gt=0.0, le=MAX_CAMERA_COORD, allow_inf_nan=False,
                          description="visible height in mm (orthographic)")
    aspect: float = Field(1.0, ge=0.1, le=10.0, allow_inf_nan=False, description="the view's width / height")


class VlmRequest(Body):
    """POST /api/vlm (JSON; a multipart form has the same fields as strings, images as files)"""
    # Not only white space, as Python's str.strip() sees it (it strips \x1c-\x1f too, which \s does not match).
    prompt: str = Field(max_length=MAX_PROMPT_CHARS, pattern=r"[^\s\x1c-\x1f\uFEFF]",
                        description="what you want changed")
    images: list[Annotated[str, Field(min_length=1), WithJsonSchema({"type": "string", "format": "byte",
                                                                      "minLength": 1})]] = Field(
        None, max_length=MAX_IMAGES, description="base64 (or data: URLs) of PNG, JPEG, WEBP, GIF or BMP images")
    include_render: Flag = False
    camera: Camera = Field(None, description="with include_render: render from this camera (the view on screen) "
                                             "instead of the iso view; JSON bodies only")
    max_new_tokens: Whole = Field(512, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=MAX_TEMPERATURE)
    stream: Flag = Field(False, description="answer as an event stream (token, status, done | error)")
    model: ModelName = None
    refusals = {
        "prompt": Refusal("missing_prompt", "prompt must be a non-empty string saying what you want changed",
                          range_code="prompt_too_long", range_status=422,
                          range_message="prompt is {length} characters; the limit is {hi}"),
        "images": Refusal("bad_images", "images must be a list of base64 strings or data URLs",
                          range_code="too_many_images", range_status=400,
                          range_message="send at most {hi} images"),
        "include_render": Refusal("bad_flag", "expected true or false, got {value!r}"),
        "camera": Refusal("bad_camera", "camera must be {{position, target, up: three finite numbers (mm, at most "
                                        f"{MAX_CAMERA_COORD:g}), projection: perspective|orthographic, fov: 1..170, "
                                        "height > 0, aspect: 0.1..10}}"),
        "stream": Refusal("bad_flag", "expected true or false, got {value!r}"),
        "max_new_tokens": Refusal("bad_max_new_tokens", "max_new_tokens must be an integer between {lo} and {hi}"),
        "temperature": Refusal("bad_temperature", "temperature must be a number between {lo} and {hi}"),
        "model": MODEL_REFUSAL}


class ApplyRequest(VersionBody):
    """POST /api/proposals/{id}/apply"""
    parameters: list[ParameterName] = Field(None, description="proposals to apply as proposed (default: every "
                                                              "valid one not in values)")
    values: ParameterValues = Field(None, description="your own values: corrections of proposed ones or "
                                                      "parameters the model did not mention; validated like an "
                                                      "edit, and logged as the example's target")
    overwrite: Flag = Field(False, description="apply even over parameters edited since the answer")
    refusals = {**Body.refusals,
                "parameters": Refusal("bad_parameters", "parameters must be a list of parameter names"),
                "values": Refusal("bad_values", "values must be an object of parameter name: value (your "
                                                "corrections)"),
                "overwrite": flag_refusal("overwrite", "bad_flag")}


class RejectRequest(Body):
    """POST /api/proposals/{id}/reject"""
    reason: str | None = Field(None, max_length=MAX_REASON_CHARS)
    nothing_should_change: Flag = Field(False, description="log it as a 'no change' example too")
    refusals = {"reason": Refusal("bad_reason", "reason must be a string of at most {hi} characters"),
                "nothing_should_change": flag_refusal("nothing_should_change", "bad_flag")}


class AdapterRequest(Body):
    """POST /api/vlm/adapter. The name's pattern is checked by the route (422 invalid_adapter_name, after 409
    adapters_unsupported), so it is documented here and not validated by the model."""
    name: str = Field(min_length=1, pattern=r"\S", json_schema_extra={"pattern": ADAPTER_NAME_PATTERN},
                      description="an adapter folder under runs/")
    refusals = {"name": Refusal("missing_name", 'send {{"name": "<adapter folder under runs/>"}}')}


MAX_TRAIN_STEPS = 100_000
MAX_TRAIN_EPOCHS = 100.0


class TrainRequest(Body):
    """POST /api/vlm/train: a new adapter runs/NAME trained on the logged examples. The name's pattern is checked
    by the route (422 invalid_adapter_name), as for AdapterRequest."""
    name: str = Field(min_length=1, pattern=r"\S", json_schema_extra={"pattern": ADAPTER_NAME_PATTERN},
                      description="the new adapter's folder under runs/")
    max_steps: Whole = Field(0, ge=0, le=MAX_TRAIN_STEPS, description="optimizer steps (0: sized from the dataset)")
    epochs: float = Field(0.0, ge=0.0, le=MAX_TRAIN_EPOCHS, description="passes over the dataset (0: sized from it)")
    refusals = {"name": Refusal("missing_name", 'send {{"name": "<new adapter folder under runs/>"}}'),
                "max_steps": Refusal("bad_max_steps", "max_steps must be an integer between {lo} and {hi}"),
                "epochs": Refusal("bad_epochs", "epochs must be a number between {lo} and {hi}")}


class OptimiseRequest(VersionBody):
    """POST /api/optimise"""
    max_steps: Whole = Field(DEFAULT_OPTIMISE_STEPS, ge=1, le=MAX_OPTIMISE_STEPS, description="evaluated states")
    use_vlm: Flag = Field(False, description="ask the VLM for a first proposal")
    stream: Flag = Field(False, description="answer as an event stream (vlm, progress, done | error)")
    refusals = {**Body.refusals,
                "max_steps": Refusal("bad_max_steps", "max_steps must be a whole number between {lo} and {hi}"),
                "use_vlm": Refusal("bad_use_vlm", "use_vlm must be true or false"),
                "stream": Refusal("bad_stream", "stream must be true or false")}


class PreviewRequest(Body):
    """POST /api/preview.glb: the GLB of the current values with `values` over them (a proposal before it is
    applied). The session is not touched: no history entry, no new version."""
    model: ModelName = None
    values: ParameterValues = Field(None, description="parameter name: value over the current ones, validated like "
                                                      "an edit (leave it out for the current design)")
    refusals = {"model": MODEL_REFUSAL,
                "values": Refusal("bad_values", "values must be an object of parameter name: value")}


class Query(BaseModel):
    """A query string; each field is one parameter (all optional)."""
    model_config = ConfigDict(strict=True, extra="ignore")
    refusals: ClassVar[dict[str, Refusal]] = {}


def choice_refusal(name: str, choices: tuple[str, ...]) -> Refusal:
    return Refusal(f"bad_{name}", f"{name} must be one of {', '.join(choices)}, got {{value!r}}")


class ModelQuery(Query):
    model: ModelName = None
    refusals = {"model": MODEL_REFUSAL}


class DownloadQuery(ModelQuery):
    download: Literal[DOWNLOAD_VALUES] = Field("0", description="1 or true: as an attachment")
    refusals = {**ModelQuery.refusals, "download": choice_refusal("download", DOWNLOAD_VALUES)}


class RenderQuery(DownloadQuery):
    view: Literal[VIEWS] = "iso"
    size: int = Field(512, ge=MIN_RENDER_SIZE, le=MAX_RENDER_SIZE, description="pixels (square)")
    refusals = {**DownloadQuery.refusals, "view": choice_refusal("view", VIEWS),
                "size": Refusal("bad_size", "size must be an integer between {lo} and {hi}",
                                range_message="size must be between {lo} and {hi}, got {value}", range_status=422)}


class RangeQuery(ModelQuery):
    """DELETE /api/params/range: ?parameter= is required (the body's "parameter" is read first when it has one)."""
    parameter: NumberParameterName
    refusals = {**ModelQuery.refusals, "parameter": RangeResetRequest.refusals["parameter"]}
