"""OpenAI-compatible backend (`VLM_BACKEND=openai`): vLLM, llama.cpp's server, LM Studio and the like.

POST {base}/chat/completions with text + image_url (data URL) parts, streamed as SSE `data: {...}` chunks ending
with `data: [DONE]`; GET {base}/models to check the model is served. The engine owns the model's memory.
"""
from __future__ import annotations

import logging
import time

import requests

from vlm.backend import (Backend, BackendError, GenerateRequest, GenerateResult, ProgressCallback,
                         TokenCallback)
from vlm.http_util import HttpEngine, b64, error_from_json, error_text, image_mime, parse_json_line

log = logging.getLogger(__name__)

STATUS_READ_TIMEOUT_S = 2.0  # GET /models answers at once: slower than this is "not reachable"
UNLOAD_NOTE = "the engine manages model memory; unloading here frees nothing locally"


class OpenAICompatBackend(Backend):
    name = "openai"

    def __init__(self, base_url: str = "http://127.0.0.1:8000/v1", model: str = "", api_key: str | None = None,
                 *, connect_timeout_s: float = 3.0, read_timeout_s: float = 120.0, max_parallel: int = 1):
        self.model = model
        self.max_parallel = max(1, int(max_parallel))  # vLLM and the like batch concurrent requests
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = HttpEngine(engine="OpenAI-compatible server", base_url=base_url, headers=headers,
                               connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s,
                               unreachable_hint="Start it (e.g. `vllm serve <model>`) or set OPENAI_BASE_URL.")
        self._ready = False
        self._use_response_format = True  # switched off once if the engine rejects structured output

    @property
    def url(self) -> str:
        return self.http.base_url

    # --- errors ---------------------------------------------------------------------------------------------
    def _check(self, resp: requests.Response, what: str) -> None:
        if resp.ok:
            return
        if resp.status_code in (401, 403):
            raise BackendError(f"OPENAI_API_KEY rejected by {self.url} (HTTP {resp.status_code}): "
                               f"{error_text(resp)}", code="engine_auth_failed", status=503)
        if resp.status_code == 404:
            message = error_text(resp)
            if what.startswith("chat") and (self.model in message or "does not exist" in message):
                raise BackendError(f"{self.url} does not serve {self.model!r}: {message}", code="model_missing",
                                   status=503)
            raise BackendError(f"{what} answered 404 ({message}): OPENAI_BASE_URL ({self.url}) usually ends "
                               f"in /v1", code="engine_error", status=502)
        raise self.http.engine_error(resp, what)

    def _json(self, resp: requests.Response, what: str) -> dict:
        try:
            body = resp.json()
        except ValueError:
            raise BackendError(f"{what} did not answer JSON: is OPENAI_BASE_URL ({self.url}) right?",
                               code="engine_error", status=502) from None
        if not isinstance(body, dict):
            raise BackendError(f"{what} answered unexpected JSON", code="engine_error", status=502)
        message = error_from_json(body)
        if message and "error" in body:
            raise BackendError(f"{what} failed: {message}", code="engine_error", status=502)
        return body

    def _served_models(self, read_timeout_s: float | None = None) -> list[str]:
        resp = self.http.request("GET", "/models", read_timeout_s=read_timeout_s)
        self._check(resp, "model listing (GET /models)")
        body = self._json(resp, "model listing (GET /models)")
        return [str(m.get("id")) for m in body.get("data") or [] if isinstance(m, dict) and m.get("id")]

    # --- Backend ---------------------------------------------------------------------------------------------
    def load(self, progress: ProgressCallback) -> None:
        progress(0.0, f"contacting {self.url}")
        served = self._served_models()
        if self.model not in served:
            listing = ", ".join(served) if served else "nothing"
            raise BackendError(f"{self.url} does not serve {self.model!r}; it serves: {listing}. "
                               f"Set OPENAI_MODEL to one of them.", code="model_missing", status=503)
        self._ready = True
        progress(1.0, "ready")

    def _body(self, request: GenerateRequest, stream: bool, with_format: bool) -> dict:
        parts: list[dict] = [{"type": "text", "text": request.prompt}]
        for image in request.images:
            parts.append({"type": "image_url",
                          "image_url": {"url": f"data:{image_mime(image)};base64,{b64(image)}"}})
        messages = ([{"role": "system", "content": request.system}] if request.system else []) + [
            {"role": "user", "content": parts}]
        body: dict = {"model": self.model, "messages": messages, "max_tokens": request.max_new_tokens,
                      "temperature": request.temperature, "stream": stream}
        if request.seed is not None:
            body["seed"] = request.seed
        if stream:
            body["stream_options"] = {"include_usage": True}
        if with_format and request.json_schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "proposal", "schema": request.json_schema, "strict": True}}
        return body

    def generate(self, request: GenerateRequest, on_token: TokenCallback | None = None) -> GenerateResult:
        """Always streamed (SSE): the generation deadline bounds the whole answer, the read timeout only the silence
        between chunks; closing the stream is how the engine (vLLM aborts the request) is told to stop."""
        with_format = bool(request.json_schema) and self._use_response_format
        started = time.monotonic()
        with self.http.generation(request.timeout_s, request.cancel) as call:
            resp = call.post("/chat/completions", self._body(request, True, with_format))
            if with_format and resp.status_code in (400, 422):
                # Some engines reject response_format/json_schema: ask once more without it and remember.
                log.warning("%s rejected response_format (%s); retrying without structured output",
                            self.url, error_text(resp))
                resp.close()
                resp = call.post("/chat/completions", self._body(request, True, False))
                if resp.ok:
                    self._use_response_format = False
            self._check(resp, "chat completion (POST /chat/completions)")
            usage: dict = {}
            first_token_s = None
            finish_reason = None
            pieces: list[str] = []
            for line in call.lines(resp):
                if not line.startswith("data:"):
                    continue  # SSE comments, event names, keep-alive lines
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = parse_json_line(data, "OpenAI-compatible server")
                if chunk.get("error"):
                    raise BackendError(f"{self.url} stopped mid-answer: {error_from_json(chunk)}",
                                       code="engine_error", status=502)
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    finish_reason = choice.get("finish_reason") or finish_reason
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        if first_token_s is None:
                            first_token_s = round(time.monotonic() - started, 6)
                        pieces.append(piece)
                        if on_token is not None:
                            on_token(piece)
            else:
                raise BackendError(f"{self.url} ended the stream without `data: [DONE]`", code="engine_error",
                                   status=502)
        timings = {"generate": round(time.monotonic() - started, 6)}
        if first_token_s is not None:
            timings["first_token"] = first_token_s
        return GenerateResult(text="".join(pieces), model=self.model, prompt_tokens=usage.get("prompt_tokens"),
                              completion_tokens=usage.get("completion_tokens"), timings=timings,
                              finish_reason=finish_reason)

    def unload(self) -> None:
        """Nothing is held on this side: the remote engine keeps its model loaded as it sees fit."""
        self._ready = False

    def status(self) -> dict:
        facts: dict = {"backend": self.name, "model": self.model, "url": self.url, "reachable": False,
                       "present": None, "loaded": False, "served_models": None, "note": UNLOAD_NOTE}
        try:
            served = self._served_models(min(self.http.read_timeout_s, STATUS_READ_TIMEOUT_S))
            facts.update(reachable=True, served_models=served, present=self.model in served)
            facts["loaded"] = bool(facts["present"])  # a served model is resident in the engine
        except BackendError as exc:
            facts["error"] = exc.message
            facts["reachable"] = exc.code not in {"engine_unreachable", "engine_timeout"}
        return facts

    def is_alive(self) -> bool:
        try:
            resp = self.http.request("GET", "/models",
                                     read_timeout_s=min(self.http.read_timeout_s, STATUS_READ_TIMEOUT_S))
            return resp.ok
        except BackendError:
            return False

    def cancel(self) -> None:
        self.http.cancel()

    def identity(self) -> dict:
        return {"backend": self.name, "url": self.url, "model": self.model}
