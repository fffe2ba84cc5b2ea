"""Small real HTTP servers on 127.0.0.1 that speak Ollama's and the OpenAI chat API, for backend, web and UI tests.

    fake = FakeOllama().start()      # -> fake.url, e.g. http://127.0.0.1:40123
    fake.behaviour = "error_mid_stream"
    fake.requests[-1].body           # every request received, parsed JSON
    fake.stop()

Behaviours (attribute `behaviour`, read on every request, so a test may switch it on a running server):
  "ok"                normal answers; streamed answers come as several chunks of PROPOSAL_TEXT
  "model_missing"     the model is not pulled/served (404 with the engine's own error body)
  "slow"              the chat/generate answer waits `stall_s` before sending anything
  "stall_mid_stream"  the first chunk goes out, then nothing for `stall_s`
  "error_mid_stream"  two chunks, then an error object in the stream
  "error"             chat/generate answer HTTP 500 with an error body
  "reject_response_format" (OpenAI only) 400 when the request carries response_format
`responder`: when set, a function of the request body returning the answer text (an engine that answers each
request on its own: the proposal benchmark runs against it); otherwise every answer is `text`.
`gate`: a threading.Event; when set on the fake, a stream waits for it after its first chunk (proves the client
relays tokens before the stream ends). Pytest fixtures `fake_ollama`, `fake_openai` yield started fakes.
A client that closes its connection before the answer is complete (a cancel) is recorded in `closes` (path and
`time.monotonic()`); `wait_for_close(timeout)` waits for the next one. While stalling or between chunks the fake
watches its socket, as a real engine does, so a close is seen at once and the answer abandoned.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

log = logging.getLogger(__name__)

PROPOSAL = {"summary": "Larger wheels for more ground clearance",
            "changes": [{"parameter": "wheel_diameter", "value": 120,
                         "reason": "more clearance over rough ground"}]}
PROPOSAL_TEXT = json.dumps(PROPOSAL)
MID_STREAM_ERROR = "an error was encountered while running the model: out of memory"


def proposal_chunks(text: str = PROPOSAL_TEXT, count: int = 6) -> list[str]:
    """The answer split into `count` nearly equal pieces (deterministic), as an engine streams tokens."""
    size = max(1, -(-len(text) // count))
    return [text[i:i + size] for i in range(0, len(text), size)]


def free_port() -> int:
    """A port with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClientClosed(Exception):
    """The client went away before the answer was complete."""


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict
    body: object  # parsed JSON, or None for an empty body


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake):
        self.fake = fake
        self.open_sockets: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), fake.handler_class)

    def process_request(self, request, client_address):
        self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # Clients hanging up on purpose (timeouts, cancel) are expected here; keep test output clean.
        log.debug("fake engine: connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked streaming needs 1.1

    def log_message(self, fmt, *args):
        log.debug("fake engine: " + fmt, *args)

    @property
    def fake(self):
        return self.server.fake

    def _record(self) -> RecordedRequest:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        rec = RecordedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with self.fake.lock:
            self.fake.requests.append(rec)
        return rec

    def send_json(self, status: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError:  # broken pipe, reset: the client hung up
            self.client_closed()

    def client_gone(self) -> bool:
        """The client closed its end (EOF readable on a connection that sends nothing more)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def client_closed(self):
        self.fake.record_close(self.path)
        self.close_connection = True
        raise ClientClosed()

    def wait(self, event: threading.Event | None, timeout: float) -> None:
        """Wait up to `timeout` (until `event` is set, when given), watching for the client to go away."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if event is not None and event.wait(min(left, 0.02)):
                return
            if event is None:
                time.sleep(min(left, 0.02))
            if self.client_gone():
                self.client_closed()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def stream(self, payloads: list[bytes], error_payload: bytes | None = None) -> None:
        """Send payloads one chunk each, applying the fake's delay, gate and stall behaviours."""
        fake = self.fake
        for i, payload in enumerate(payloads):
            if i > 0 and fake.delay_s:
                self.wait(None, fake.delay_s)
            self.send_chunk(payload)
            if i == 0 and fake.gate is not None:
                self.wait(fake.gate, fake.stall_s)
            if i == 0 and fake.behaviour == "stall_mid_stream":
                self.wait(fake.released, fake.stall_s)
            if i == 1 and error_payload is not None:
                self.send_chunk(error_payload)
                break
        self.end_stream()

    def stall_if_slow(self) -> None:
        if self.fake.behaviour == "slow":
            self.wait(self.fake.released, self.fake.stall_s)

    def do_GET(self):
        self._record()
        if self.fake.hang_gets:  # a hung engine: status queries get no answer (until stop() or stall_s)
            self.wait(self.fake.released, self.fake.stall_s)
        self.route_get()

    def do_POST(self):
        rec = self._record()
        if not isinstance(rec.body, dict):
            self.send_json(400, self.fake.error_body("invalid JSON body"))
            return
        if self.fake.refuse_next:  # the engine is full for a moment (Ollama's OLLAMA_MAX_QUEUE, a rate limit)
            status, retry_after = self.fake.refuse_next.pop(0)
            data = json.dumps(self.fake.error_body("server busy, please try again")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.end_headers()
            self.wfile.write(data)
            return
        try:
            self.route_post(rec.body)
        except ClientClosed:
            log.debug("fake engine: the client closed %s before the answer was complete", self.path)


class _FakeEngine:
    handler_class: type = _Handler

    def __init__(self, behaviour: str = "ok", *, text: str = PROPOSAL_TEXT, models: list[str] | None = None,
                 delay_s: float = 0.0, stall_s: float = 5.0, chunks: int = 6):
        self.behaviour = behaviour
        self.text = text
        self.models = list(models if models is not None else self.default_models)
        self.delay_s = delay_s
        self.stall_s = stall_s  # "slow"/"stall" waits at most this long; stop() ends the wait at once
        self.chunks = chunks
        self.gate: threading.Event | None = None
        self.hang_gets = False  # True: GET requests (version, tags, ps, models) hang
        self.refuse_next: list[tuple[int, str | None]] = []  # (status, Retry-After) answered to the next POSTs
        self.responder = None
        self.requests: list[RecordedRequest] = []
        self.closes: list[tuple[str, float]] = []  # (path, time.monotonic()) of each request the client cut short
        self.lock = threading.Lock()
        self._close_seen = threading.Condition(self.lock)
        self.released = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    default_models: list[str] = []

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def served(self) -> list[str]:
        return [] if self.behaviour == "model_missing" else self.models

    def start(self) -> str:
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        self.released.set()
        if self.gate is not None:
            self.gate.set()
        self._server.shutdown()
        for sock in list(self._server.open_sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def record_close(self, path: str) -> None:
        with self._close_seen:
            self.closes.append((path, time.monotonic()))
            self._close_seen.notify_all()

    def wait_for_close(self, timeout: float, already: int = 0) -> float | None:
        """The time of close number `already + 1` once it is recorded, or None after `timeout` seconds."""
        with self._close_seen:
            self._close_seen.wait_for(lambda: len(self.closes) > already, timeout)
            return self.closes[already][1] if len(self.closes) > already else None

    def answer_for(self, body: dict) -> str:
        return self.responder(body) if self.responder is not None else self.text

    def posts(self, path: str) -> list[dict]:
        with self.lock:
            return [r.body for r in self.requests if r.method == "POST" and r.path == path]


# --- Ollama ------------------------------------------------------------------------------------------------------
def canonical(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


class _OllamaHandler(_Handler):
    def route_get(self):
        fake: FakeOllama = self.fake
        if self.path == "/api/version":
            self.send_json(200, {"version": fake.version})
        elif self.path == "/api/tags":
            self.send_json(200, {"models": [fake.tag_entry(m) for m in fake.served()]})
        elif self.path == "/api/ps":
            self.send_json(200, {"models": [dict(fake.tag_entry(m), size_vram=fake.size_vram,
                                                 expires_at="2099-01-01T00:00:00Z") for m in sorted(fake.loaded)]})
        else:
            self.send_404()

    def send_404(self):
        data = b"404 page not found"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route_post(self, body: dict):
        fake: FakeOllama = self.fake
        if self.path == "/api/show":
            name = canonical(body.get("model") or body.get("name") or "")
            if name not in fake.served():
                self.send_json(404, {"error": f"model '{body.get('model')}' not found"})
            else:
                self.send_json(200, {"details": {"family": "llama"}, "capabilities": fake.capabilities})
            return
        if self.path not in ("/api/chat", "/api/generate"):
            self.send_404()
            return
        chat = self.path == "/api/chat"
        model = body.get("model")
        if not model:
            self.send_json(400, {"error": "model is required"})
            return
        name = model if ":" in model else f"{model}:latest"
        if name not in fake.served():
            self.send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        empty = not body.get("messages") if chat else not body.get("prompt")
        if empty:  # documented load / unload
            unload = body.get("keep_alive") in (0, "0", "0s")
            (fake.loaded.discard if unload else fake.loaded.add)(name)
            answer = {"model": model, "created_at": "2024-01-01T00:00:00Z", "done": True,
                      "done_reason": "unload" if unload else "load"}
            answer.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
            self.send_json(200, answer)
            return
        self.stall_if_slow()
        if fake.behaviour == "error":
            self.send_json(500, {"error": "llama runner process has terminated: exit status 2"})
            return
        fake.loaded.add(name)
        text = fake.answer_for(body)
        pieces = proposal_chunks(text, fake.chunks)

        def piece(content: str, done: bool) -> dict:
            obj = {"model": model, "created_at": "2024-01-01T00:00:00Z", "done": done}
            obj.update({"message": {"role": "assistant", "content": content}} if chat else {"response": content})
            if done:
                obj.update(done_reason="stop", total_duration=1_500_000_000, load_duration=100_000_000,
                           prompt_eval_count=fake.prompt_eval_count, prompt_eval_duration=200_000_000,
                           eval_count=len(pieces), eval_duration=1_200_000_000)
            return obj

        if body.get("stream", True) is False:
            self.send_json(200, piece(text, True))
            return
        self.start_stream("application/x-ndjson")
        lines = [json.dumps(piece(p, False)).encode() + b"\n" for p in pieces]
        lines.append(json.dumps(piece("", True)).encode() + b"\n")
        error = (json.dumps({"error": MID_STREAM_ERROR}).encode() + b"\n"
                 if fake.behaviour == "error_mid_stream" else None)
        self.stream(lines, error)


class FakeOllama(_FakeEngine):
    handler_class = _OllamaHandler
    default_models = ["llava:latest"]
    version = "0.6.2"
    size_vram = 5_000_000_000
    capabilities = ["completion", "vision"]
    prompt_eval_count = 42

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loaded: set[str] = set()

    @staticmethod
    def error_body(message: str) -> dict:
        return {"error": message}

    @staticmethod
    def tag_entry(name: str) -> dict:
        return {"name": name, "model": name, "modified_at": "2024-01-01T00:00:00Z", "size": 4_700_000_000,
                "digest": "0" * 64, "details": {"format": "gguf", "family": "llama", "parameter_size": "7B"}}


# --- OpenAI-compatible -------------------------------------------------------------------------------------------
class _OpenAIHandler(_Handler):
    def authorised(self) -> bool:
        key = self.fake.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self.send_json(401, self.fake.error_body("Unauthorized", "AuthenticationError", 401))
        return False

    def route_get(self):
        if not self.authorised():
            return
        if self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "vllm"} for m in self.fake.served()]})
        else:
            self.send_json(404, self.fake.error_body(f"Not Found: {self.path}", "NotFoundError", 404))

    def route_post(self, body: dict):
        fake: FakeOpenAI = self.fake
        if not self.authorised():
            return
        if self.path != "/v1/chat/completions":
            self.send_json(404, fake.error_body(f"Not Found: {self.path}", "NotFoundError", 404))
            return
        model = body.get("model")
        if model not in fake.served():
            self.send_json(404, fake.error_body(f"The model `{model}` does not exist.", "NotFoundError", 404))
            return
        if fake.behaviour == "reject_response_format" and "response_format" in body:
            self.send_json(400, fake.error_body("response_format json_schema is not supported",
                                                "BadRequestError", 400))
            return
        self.stall_if_slow()
        if fake.behaviour == "error":
            self.send_json(500, fake.error_body("CUDA out of memory", "InternalServerError", 500))
            return
        text = fake.answer_for(body)
        pieces = proposal_chunks(text, fake.chunks)
        usage = {"prompt_tokens": fake.prompt_tokens, "completion_tokens": len(pieces),
                 "total_tokens": fake.prompt_tokens + len(pieces)}
        if not body.get("stream"):
            self.send_json(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": model, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage})
            return

        def event(obj) -> bytes:
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        def chunk(delta: dict, finish=None) -> bytes:
            return event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        events = [chunk({"role": "assistant", "content": pieces[0]})] + [chunk({"content": p}) for p in pieces[1:]]
        events.append(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                                 "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        error = (event(fake.error_body(MID_STREAM_ERROR, "InternalServerError", 500))
                 if fake.behaviour == "error_mid_stream" else None)
        self.start_stream("text/event-stream")
        self.stream(events, error)


class FakeOpenAI(_FakeEngine):
    """An OpenAI-compatible server at `url + "/v1"` (see `base_url`). `api_key`: when set, requests need it."""
    handler_class = _OpenAIHandler
    default_models = ["llava-hf/llava-onevision-qwen2-7b-ov-hf"]
    prompt_tokens = 37

    def __init__(self, *args, api_key: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.api_key = api_key

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @staticmethod
    def error_body(message: str, kind: str = "BadRequestError", code: int = 400) -> dict:
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# --- a listener that never accepts: connects time out -------------------------------------------------------------
class BlackholeListener:
    """Backlog full and never accepting: further connects hang until the client's connect timeout (Linux)."""

    def __init__(self):
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        self._fillers: list[socket.socket] = []

    def start(self) -> bool:
        """Fill the backlog; True when a probe connect then really times out on this platform."""
        for _ in range(4):
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", self.port))
            except OSError:
                probe.close()
                return True
            self._fillers.append(probe)
        return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for s in self._fillers:
            s.close()
        self._listener.close()


@pytest.fixture
def fake_ollama():
    fake = FakeOllama()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_openai():
    fake = FakeOpenAI()
    fake.start()
    yield fake
    fake.stop()
