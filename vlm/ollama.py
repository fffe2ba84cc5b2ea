"""Ollama backend: the same proposals through an Ollama server over HTTP (`VLM_BACKEND=ollama`).

Follows Ollama's documented REST API: POST /api/chat (NDJSON stream or one object), GET /api/version, /api/tags,
/api/ps; a chat with no messages loads a model, the same with keep_alive 0 unloads it.
"""
from __future__ import annotations

import logging
import time

import requests

from vlm.backend import (Backend, BackendError, GenerateRequest, GenerateResult, ProgressCallback,
                         TokenCallback)
from vlm.http_util import HttpEngine, b64, error_text, keep_alive_value, ns_to_s, parse_json_line

log = logging.getLogger(__name__)

LOAD_QUERY_TIMEOUT_S = 10.0  # version and tags before a load: instant on a healthy engine, even a busy one
STATUS_READ_TIMEOUT_S = 2.0  # /api/version, /api/tags and /api/ps answer at once: slower than this is "not reachable"


def canonical_model_name(name: str) -> str:
    """Ollama treats `llava` and `llava:latest` as the same model."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


class OllamaBackend(Backend):
    name = "ollama"

    def __init__(self, base_url: str = "http://127.0.0.1:11434", model: str = "llava:latest", *,
                 keep_alive_s: float = 300.0, connect_timeout_s: float = 3.0, read_timeout_s: float = 120.0,
                 max_parallel: int = 1, num_ctx: int = 8192):
        self.model = model
        # Ollama's default context (2048-4096) silently truncates a prompt with images, each of which can take
        # thousands of tokens: OLLAMA_NUM_CTX is sent with every chat.
        self.num_ctx = int(num_ctx)
        self._capabilities: list[str] | None = None  # from /api/show; None: not known (yet, or an old Ollama)
        self.max_parallel = max(1, int(max_parallel))  # Ollama runs OLLAMA_NUM_PARALLEL requests per model
        self.keep_alive_s = float(keep_alive_s)
        self.http = HttpEngine(engine="Ollama", base_url=base_url, connect_timeout_s=connect_timeout_s,
                               read_timeout_s=read_timeout_s, unreachable_hint="Start it with `ollama serve`.")
        self._loaded = False
        self._version: str | None = None

    @property
    def url(self) -> str:
        return self.http.base_url

    @property
    def keep_alive(self) -> int | str:
        return keep_alive_value(self.keep_alive_s)

    # --- errors ---------------------------------------------------------------------------------------------
    def _missing(self) -> BackendError:
        return BackendError(f"Ollama at {self.url} has no model {self.model!r}: run `ollama pull {self.model}`",
                            code="model_missing", status=503)

    def _check(self, resp: requests.Response, what: str) -> None:
        if resp.ok:
            return
        if resp.status_code == 404:
            message = error_text(resp)
            if "model" in message.lower() and "not found" in message.lower():
                raise self._missing()
            raise BackendError(f"Ollama {what} answered 404 ({message}): is OLLAMA_URL ({self.url}) an Ollama "
                               f"server?", code="engine_error", status=502)
        raise self.http.engine_error(resp, what)

    def _json(self, resp: requests.Response, what: str) -> dict:
        try:
            body = resp.json()
        except ValueError:
            raise BackendError(f"Ollama {what} did not answer JSON: is OLLAMA_URL ({self.url}) an Ollama server?",
                               code="engine_error", status=502) from None
        if not isinstance(body, dict):
            raise BackendError(f"Ollama {what} answered unexpected JSON", code="engine_error", status=502)
        if body.get("error"):
            raise BackendError(f"Ollama {what} failed: {body['error']}", code="engine_error", status=502)
        return body

    # --- queries --------------------------------------------------------------------------------------------
    def _get(self, path: str, what: str, read_timeout_s: float | None = None) -> dict:
        resp = self.http.request("GET", path, read_timeout_s=read_timeout_s)
        self._check(resp, what)
        return self._json(resp, what)

    def _find(self, models: list, model: str) -> dict | None:
        wanted = canonical_model_name(model)
        for entry in models or []:
            if not isinstance(entry, dict):
                continue
            names = {canonical_model_name(str(entry[k])) for k in ("name", "model") if entry.get(k)}
            if wanted in names:
                return entry
        return None

    def _present(self, read_timeout_s: float | None = None) -> bool:
        tags = self._get("/api/tags", "model listing (/api/tags)", read_timeout_s)
        return self._find(tags.get("models", []), self.model) is not None

    def capabilities(self) -> list[str] | None:
        """What the model can do per POST /api/show ("completion", "vision", ...); None when Ollama does not say
        (versions before 0.6 have no capabilities) or /api/show failed: then images are sent and Ollama decides."""
        if self._capabilities is None:
            try:
                resp = self.http.request("POST", "/api/show", json_body={"model": self.model},
                                         read_timeout_s=min(self.http.read_timeout_s, STATUS_READ_TIMEOUT_S))
                self._check(resp, "model details (/api/show)")
                found = self._json(resp, "model details (/api/show)").get("capabilities")
            except BackendError as exc:
                if exc.code == "model_missing":
                    raise
                log.warning("could not read the capabilities of %s: %s", self.model, exc.message)
                return None
            if isinstance(found, list):
                self._capabilities = [str(c) for c in found]
        return self._capabilities

    def _check_vision(self, request: GenerateRequest) -> None:
        if not request.images:
            return
        capabilities = self.capabilities()
        if capabilities is not None and "vision" not in capabilities:
            raise BackendError(
                f"the Ollama model {self.model} cannot see images (its capabilities: {', '.join(capabilities) or 'none'}"
                f"); ask without images, or set OLLAMA_MODEL to a vision model such as llava", code="model_not_vision",
                status=422)

    # --- Backend ---------------------------------------------------------------------------------------------
    def load(self, progress: ProgressCallback) -> None:
        progress(0.0, f"contacting Ollama at {self.url}")
        quick = min(self.http.read_timeout_s, LOAD_QUERY_TIMEOUT_S)  # a hung engine fails the load in seconds
        self._version = str(self._get("/api/version", "version check (/api/version)", quick).get("version", "unknown"))
        progress(0.1, f"checking Ollama has {self.model}")
        if not self._present(quick):
            raise self._missing()
        self._capabilities = None  # the model may have been re-pulled since: ask again
        self.capabilities()
        if self.keep_alive_s == 0:
            # keep_alive 0 means "unload after every request": loading now would be undone at once.
            log.info("VLM_KEEP_ALIVE=0: Ollama loads %s on each request", self.model)
        else:
            progress(0.2, f"Ollama is loading {self.model} into memory")
            resp = self.http.request("POST", "/api/chat", json_body={
                "model": self.model, "messages": [], "keep_alive": self.keep_alive, "stream": False})
            self._check(resp, "model load (/api/chat)")
            self._json(resp, "model load (/api/chat)")
        self._loaded = True
        progress(1.0, "ready")

    def generate(self, request: GenerateRequest, on_token: TokenCallback | None = None) -> GenerateResult:
        """Always streamed from Ollama (stream:false sends nothing until done, so a slow but healthy answer would
        hit the read timeout); closing the stream is how Ollama is told to stop."""
        self._check_vision(request)
        user: dict = {"role": "user", "content": request.prompt}
        if request.images:
            user["images"] = [b64(image) for image in request.images]  # plain base64: Ollama rejects data: URLs
        messages = ([{"role": "system", "content": request.system}] if request.system else []) + [user]
        body: dict = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "options": {"temperature": request.temperature, "num_predict": request.max_new_tokens,
                        "num_ctx": self.num_ctx, **({"seed": request.seed} if request.seed is not None else {})},
            "keep_alive": self.keep_alive,
        }
        if request.json_schema:
            body["format"] = request.json_schema
        started = time.monotonic()
        with self.http.generation(request.timeout_s, request.cancel) as call:
            resp = call.post("/api/chat", body)
            self._check(resp, "chat (/api/chat)")
            first_token_s = None
            pieces: list[str] = []
            final = None
            for line in call.lines(resp):
                obj = parse_json_line(line, "Ollama")
                if obj.get("error"):
                    raise BackendError(f"Ollama stopped mid-answer: {obj['error']}", code="engine_error",
                                       status=502)
                piece = (obj.get("message") or {}).get("content") or ""
                if piece:
                    if first_token_s is None:
                        first_token_s = round(time.monotonic() - started, 6)
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)
                if obj.get("done"):
                    final = obj
                    break
            if final is None:
                raise BackendError("Ollama ended the stream without its final message", code="engine_error",
                                   status=502)
        text = "".join(pieces)
        self._loaded = True  # a chat loads the model in Ollama even if load() was skipped
        timings = {"generate": round(time.monotonic() - started, 6)}
        if first_token_s is not None:
            timings["first_token"] = first_token_s
        for key, name in (("total_duration", "engine_total"), ("load_duration", "engine_load"),
                          ("prompt_eval_duration", "engine_prompt_eval"), ("eval_duration", "engine_eval")):
            value = ns_to_s(final.get(key))
            if value is not None:
                timings[name] = value
        return GenerateResult(text=text, model=self.model, prompt_tokens=final.get("prompt_eval_count"),
                              completion_tokens=final.get("eval_count"), timings=timings,
                              finish_reason=final.get("done_reason"))

    def unload(self) -> None:
        """Ask Ollama to drop the model now (documented: no messages, keep_alive 0). Idempotent."""
        was_loaded, self._loaded = self._loaded, False
        try:
            resp = self.http.request("POST", "/api/chat", json_body={
                "model": self.model, "messages": [], "keep_alive": 0, "stream": False})
            self._check(resp, "model unload (/api/chat)")
        except BackendError as exc:
            if exc.code in {"engine_unreachable", "model_missing"}:
                # Nothing of ours can be held by an engine that is gone or a model that is not there.
                log.warning("Ollama unload skipped (%s): %s", exc.code, exc.message)
                return
            if was_loaded:
                raise
            log.warning("Ollama unload of a model we had not loaded failed: %s", exc.message)

    def status(self) -> dict:
        facts: dict = {"backend": self.name, "model": self.model, "url": self.url, "reachable": False,
                       "version": None, "present": None, "loaded": False, "keep_alive": self.keep_alive,
                       "num_ctx": self.num_ctx, "capabilities": self._capabilities}
        read_timeout = min(self.http.read_timeout_s, STATUS_READ_TIMEOUT_S)
        try:
            facts["version"] = str(self._get("/api/version", "version check", read_timeout).get("version"))
            facts["reachable"] = True
            facts["present"] = self._present(read_timeout)
            running = self._find(self._get("/api/ps", "running models (/api/ps)", read_timeout)
                                 .get("models", []), self.model)
            facts["loaded"] = running is not None
            if running is not None:
                for key in ("size_vram", "size", "expires_at"):
                    if key in running:
                        facts[key] = running[key]
                facts["gpu_bytes"] = running.get("size_vram")  # Ollama's own count of the model's GPU memory
        except BackendError as exc:
            facts["error"] = exc.message
        return facts

    def is_alive(self) -> bool:
        """The engine still answers; Ollama reloads an evicted model by itself on the next chat."""
        try:
            resp = self.http.request("GET", "/api/version", read_timeout_s=min(self.http.read_timeout_s,
                                                                              STATUS_READ_TIMEOUT_S))
            return resp.ok
        except BackendError:
            return False

    def cancel(self) -> None:
        self.http.cancel()

    def identity(self) -> dict:
        return {"backend": self.name, "url": self.url, "model": canonical_model_name(self.model)}
