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


def register_error_handlers(app: Flask) -> None:
    from cad.errors import BuildError, ParameterError, ScriptError, UnknownModel
    from cad.session import SessionError
    from cad.worker import BuildTimeout
    from vlm.backend import BackendError

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError):
        return error_response(e.status, e.code, e.message, **e.extra)

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

    @app.errorhandler(BuildTimeout)
    def _cad_timeout(e: BuildTimeout):
        # Not the request's fault and not a script error with a line: the gateway-timeout family fits.
        return error_response(504, "cad_build_timeout", build_timeout_message(e))

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
        limit = app.config.get("MAX_CONTENT_LENGTH") or 0
        return error_response(413, "too_large", f"the request body is larger than the {limit // (1024 * 1024)} MB limit")

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        code = (e.name or "error").lower().replace(" ", "_")
        message = e.description or e.name
        if e.code == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif e.code == 405:
            message = f"{request.method} is not allowed on {request.path}"
        return error_response(e.code or 500, code, message)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "an unexpected error occurred; the server log has the details")
