"""JSON errors for every failure. A client sees `{"error": code, "message": text}`, never a traceback."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_response(status: int, code: str, message: str, **extra):
    body = {"error": code, "message": message, **extra}
    return jsonify(body), status


def build_timeout_message(e) -> str:
    """What a user reads when a model script ran past CAD_BUILD_TIMEOUT (cad.worker.BuildTimeout)."""
    script = str(e.path).replace("\\", "/").rsplit("/", 1)[-1]
    return (f"{script}: {e.message}; the build was stopped and the design is unchanged. Make the model script "
            f"faster for these values or raise CAD_BUILD_TIMEOUT")


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"


def too_large_message() -> str:
    """Which limit a 413 hit. Werkzeug raises the same RequestEntityTooLarge for the body limit (per request:
    target uploads have their own) and for its multipart caps, so tell them apart from the request itself."""
    limit = request.max_content_length  # this request's limit: PUT /api/target raises it for its upload
    length = request.content_length
    if limit is not None and (length is None or length > limit):
        return f"the request body is larger than the {_mb(limit)} limit for {request.method} {request.path}"
    if request.mimetype == "multipart/form-data":
        return (f"a form field that is not a file is larger than {request.max_form_memory_size:,} bytes, or the "
                f"form has more than {request.max_form_parts} parts; send large data as a file part")
    return f"the request body is larger than the {_mb(limit or 0)} limit"


def register_error_handlers(app: Flask) -> None:
    from cad.session import SessionError
    from vlm.backend import BackendError

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError):
        return error_response(e.status, e.code, e.message, **e.extra)

    _register_cad_handlers(app)

    @app.errorhandler(SessionError)
    def _session_error(e: SessionError):
        return error_response(e.status, e.code, e.message, **e.extra)

    @app.errorhandler(BackendError)
    def _backend_error(e: BackendError):
        response, status = error_response(e.status, e.code, e.message)
        retry_after = getattr(e, "retry_after_s", None)  # vlm.scheduler.Busy: the queue is full
        if retry_after is not None:
            response.headers["Retry-After"] = str(int(retry_after))
        return response, status

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e):
        return error_response(413, "too_large", too_large_message())

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        code = (e.name or "error").lower().replace(" ", "_")
        message = e.description or e.name
        allowed = sorted(getattr(e, "valid_methods", None) or [])
        if e.code == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif e.code == 405:
            message = f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}"
        resp, status = error_response(e.code or 500, code, message)
        if e.code == 405:  # RFC 9110: a 405 must name the methods the resource supports
            resp.headers["Allow"] = ", ".join(allowed)
        return resp, status

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "an unexpected error occurred; the server log has the details")


def _register_cad_handlers(app: Flask) -> None:
    """The cad package's errors: bad values, unknown models, script failures, timeouts and sandbox limits."""
    from cad.errors import BuildError, EmptyGeometry, ParameterError, ScriptError, UnknownModel
    from cad.sandbox import BuildLimitExceeded
    from cad.worker import BuildTimeout

    @app.errorhandler(ParameterError)
    def _parameter_error(e: ParameterError):
        extra = {k: getattr(e, k, None) for k in ("parameter", "min", "max")}
        return error_response(422, "invalid_parameter", str(e), **{k: v for k, v in extra.items() if v is not None})

    @app.errorhandler(UnknownModel)
    def _unknown_model(e: UnknownModel):
        return error_response(404, "unknown_model", str(e))

    @app.errorhandler(ScriptError)
    @app.errorhandler(BuildError)
    def _cad_error(e):
        # The operator's model script failed: say where, so it can be fixed. The design state is unchanged.
        return error_response(422, "cad_build_failed", str(e), line=e.line)

    @app.errorhandler(EmptyGeometry)
    def _empty_geometry(e: EmptyGeometry):
        # Not the script's fault: these (in-range) values cut everything away. Nothing was changed.
        return error_response(422, "empty_geometry", e.message)

    @app.errorhandler(BuildTimeout)
    def _cad_timeout(e: BuildTimeout):
        # Not the request's fault and not a script error with a line: the gateway-timeout family fits.
        return error_response(504, "cad_build_timeout", build_timeout_message(e))

    @app.errorhandler(BuildLimitExceeded)
    def _cad_limit(e: BuildLimitExceeded):
        # The script (for these values) needs more memory or CPU than a build may use (cad.sandbox).
        script = str(e.path).replace("\\", "/").rsplit("/", 1)[-1]
        return error_response(422, "cad_build_limit", f"{script}: {e.message}", limit=e.limit)
