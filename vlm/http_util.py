"""Shared plumbing for the HTTP backends (Ollama, OpenAI-compatible): timeouts, error mapping, cancel.

Generations always stream from the engine, so a slow answer is bounded by the generation deadline and only the
silence between chunks by the read timeout; a cancel closes the upstream connection, which engines take as stop.

Every network failure becomes a `BackendError` with a code the web layer can show:
`engine_unreachable` (503), `engine_timeout` (504), `engine_error` (502/503), plus the per-engine ones.
"""
from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import logging
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Iterator

import requests
import requests.adapters
from urllib3.exceptions import ReadTimeoutError

from vlm.backend import BackendError, CancelToken, GenerationCancelled

log = logging.getLogger(__name__)

MAX_ERROR_TEXT = 300
# An engine that is briefly full (Ollama's OLLAMA_MAX_QUEUE answers 503, rate limits 429) is asked again a few
# times; bounded so a request never waits long for an engine that stays full.
RETRY_STATUSES = frozenset({429, 503})
MAX_RETRIES = 3
BASE_BACKOFF_S = 0.5
MAX_RETRY_WAIT_S = 10.0


def retry_delay_s(resp: requests.Response, attempt: int) -> float:
    """How long to wait before asking again: the engine's Retry-After (seconds or an HTTP date) when it gives one,
    else exponential backoff; never more than MAX_RETRY_WAIT_S."""
    header = (resp.headers.get("Retry-After") or "").strip()
    delay = None
    if header:
        try:
            delay = float(header)
        except ValueError:
            try:
                delay = (email.utils.parsedate_to_datetime(header) - datetime.now(timezone.utc)).total_seconds()
            except (TypeError, ValueError):
                delay = None
    if delay is None:
        delay = BASE_BACKOFF_S * 2 ** attempt
    return max(0.0, min(delay, MAX_RETRY_WAIT_S))


def keep_alive_value(keep_alive_s: float) -> int | str:
    """Ollama's keep_alive: negative keeps the model loaded forever, 0 unloads at once, else a Go duration."""
    if keep_alive_s < 0:
        return -1
    if keep_alive_s == 0:
        return 0
    if float(keep_alive_s).is_integer():
        return f"{int(keep_alive_s)}s"
    return f"{keep_alive_s:g}s"


def image_mime(data: bytes) -> str:
    """MIME type from the magic bytes; images reach backends already validated, so unknown means a bug upstream."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    raise BackendError("image is neither PNG, JPEG, WebP nor GIF", code="invalid_image", status=400)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def is_read_timeout(exc: BaseException) -> bool:
    """requests turns a read timeout *during a streamed body* into a ConnectionError wrapping urllib3's error."""
    if isinstance(exc, requests.Timeout):
        return True
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 6:
        if isinstance(cur, ReadTimeoutError):
            return True
        if cur.args and isinstance(cur.args[0], BaseException) and cur.args[0] is not cur:
            cur = cur.args[0]
        else:
            cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def error_text(resp: requests.Response) -> str:
    """The engine's own error sentence from a JSON body (Ollama: {"error": str}; OpenAI: {"error": {"message"}})."""
    try:
        body = resp.json()
    except ValueError:
        return (resp.text or resp.reason or f"HTTP {resp.status_code}").strip()[:MAX_ERROR_TEXT]
    return error_from_json(body) or f"HTTP {resp.status_code}"


def error_from_json(body) -> str | None:
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, str) and err:
        return err[:MAX_ERROR_TEXT]
    if isinstance(err, dict):
        msg = err.get("message") or err.get("type") or json.dumps(err)[:MAX_ERROR_TEXT]
        return str(msg)[:MAX_ERROR_TEXT]
    if body.get("object") == "error" and body.get("message"):  # vLLM's older error shape
        return str(body["message"])[:MAX_ERROR_TEXT]
    if isinstance(body.get("detail"), str):  # FastAPI-style servers
        return body["detail"][:MAX_ERROR_TEXT]
    return None


class _SocketTrackingAdapter(requests.adapters.HTTPAdapter):
    """Hands every socket it connects to `on_socket`, so a cancel can cut a request still waiting for its first
    byte (an engine evaluating a long prompt sends no headers yet; there is no response object to close)."""

    def __init__(self, on_socket: Callable[[socket.socket], None]):
        self._on_socket = on_socket
        super().__init__(max_retries=0)

    def get_connection_with_tls_context(self, *args, **kwargs):
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        if not getattr(pool, "_optim_tracked", False):
            on_socket, base = self._on_socket, pool.ConnectionCls

            class TrackedConnection(base):
                def connect(self):
                    super().connect()
                    on_socket(self.sock)

            pool.ConnectionCls, pool._optim_tracked = TrackedConnection, True
        return pool


class HttpEngine:
    """One engine endpoint: builds timeouts, maps exceptions, and runs generations as `EngineCall`s that a cancel
    token or the generation deadline can cut at any point.

    A fresh connection per call (no shared Session): status() may run on the web thread while generations stream.
    """

    def __init__(self, *, engine: str, base_url: str, connect_timeout_s: float, read_timeout_s: float,
                 unreachable_hint: str, headers: dict | None = None):
        self.engine = engine
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_s = float(connect_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self.unreachable_hint = unreachable_hint
        self.headers = dict(headers or {})
        self._lock = threading.Lock()
        self._calls: set[EngineCall] = set()

    # --- requests -------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json_body=None, stream: bool = False,
                read_timeout_s: float | None = None, on_socket=None) -> requests.Response:
        """Send one request; network failures raise BackendError. HTTP error statuses are returned, not raised."""
        url = self.base_url + path
        read_timeout = self.read_timeout_s if read_timeout_s is None else read_timeout_s
        try:
            with requests.Session() as session:
                if on_socket is not None:
                    adapter = _SocketTrackingAdapter(on_socket)
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                return session.request(method, url, json=json_body, stream=stream, headers=self.headers,
                                       timeout=(self.connect_timeout_s, read_timeout))
        except requests.RequestException as exc:
            raise self.map_exception(exc, read_timeout) from exc

    def map_exception(self, exc: BaseException, read_timeout: float | None = None,
                      mid_stream: bool = False) -> BackendError:
        if isinstance(exc, requests.ConnectTimeout):
            return BackendError(
                f"{self.engine} at {self.base_url} did not accept a connection within {self.connect_timeout_s:g} s",
                code="engine_timeout", status=504)
        if is_read_timeout(exc):
            limit = self.read_timeout_s if read_timeout is None else read_timeout
            return BackendError(f"{self.engine} at {self.base_url} sent nothing for {limit:g} s (read timeout, "
                                f"VLM_READ_TIMEOUT)", code="engine_timeout", status=504)
        if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            if not mid_stream:
                return BackendError(f"Cannot reach {self.engine} at {self.base_url}: is it running? "
                                    f"{self.unreachable_hint}", code="engine_unreachable", status=503)
            return BackendError(f"{self.engine} at {self.base_url} closed the connection mid-answer",
                                code="engine_error", status=502)
        return BackendError(f"{self.engine} request failed: {exc}", code="engine_error", status=502)

    def engine_error(self, resp: requests.Response, what: str) -> BackendError:
        """An HTTP error status with the engine's own message; 5xx means the engine is unwell (503)."""
        status = 503 if resp.status_code >= 500 else 502
        return BackendError(f"{self.engine} {what} failed (HTTP {resp.status_code}): {error_text(resp)}",
                            code="engine_error", status=status)

    # --- generations ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def generation(self, timeout_s: float | None, cancel: CancelToken | None) -> Iterator["EngineCall"]:
        """One generation's exchange with the engine, closed (socket included) when the block ends."""
        call = EngineCall(self, timeout_s, cancel)
        with self._lock:
            self._calls.add(call)
        try:
            yield call
        finally:
            with self._lock:
                self._calls.discard(call)
            call.close()

    def cancel(self) -> None:
        """Cancel every generation in flight (shutdown); a single request cancels through its own token."""
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.token.set()


class EngineCall:
    """A generation's HTTP exchange: a cancel (its token) or the deadline (VLM_GENERATE_TIMEOUT, a timer) shuts its
    socket down, so the engine sees the client go away at once and stops generating, and the reader blocked on
    the socket wakes. The read timeout (VLM_READ_TIMEOUT) only bounds the silence between two chunks."""

    def __init__(self, engine: HttpEngine, timeout_s: float | None, cancel: CancelToken | None):
        self.engine = engine
        self.token = cancel if cancel is not None else CancelToken()
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        self.timed_out = False
        self.retries = 0  # 429/503 answers asked again
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._timer: threading.Timer | None = None
        if self.timeout_s is not None:
            self._timer = threading.Timer(self.timeout_s, self._expire)
            self._timer.daemon = True
            self._timer.start()
        self._forget_token = self.token.on_cancel(self._cut)

    @property
    def stopped(self) -> bool:
        return self.token.is_set() or self.timed_out

    def _expire(self) -> None:
        self.timed_out = True
        self._cut()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            stop_now = self.stopped or self._closed
        if stop_now:  # cancelled while connecting
            self._shutdown(sock)

    def _cut(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            self._shutdown(sock)

    def _shutdown(self, sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # FIN to the engine; a recv blocked on it returns at once
        except OSError:  # already closed: nothing left to cut
            log.debug("%s socket already closed", self.engine.engine)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._forget_token()
        self._cut()

    def check(self) -> None:
        """Raise when cancelled or past the deadline."""
        if self.token.is_set():
            raise GenerationCancelled()
        if self.timed_out:
            raise self._deadline_error()

    def _deadline_error(self) -> BackendError:
        return BackendError(f"{self.engine.engine} did not finish within the generation time limit of "
                            f"{self.timeout_s:g} s (VLM_GENERATE_TIMEOUT)", code="engine_timeout", status=504)

    def _failure(self, exc: BaseException, mid_stream: bool) -> BackendError:
        if self.token.is_set():  # our own cut, not the engine's fault
            return GenerationCancelled()
        if self.timed_out:
            return self._deadline_error()
        return self.engine.map_exception(exc, mid_stream=mid_stream)

    def post(self, path: str, body: dict) -> requests.Response:
        """POST a streamed request (headers back; the body is read with `lines`). A 429/503 from the engine is
        retried up to MAX_RETRIES times, honouring Retry-After; a cancel or the deadline ends the wait."""
        for attempt in range(MAX_RETRIES + 1):
            resp = self._post_once(path, body)
            if resp.status_code not in RETRY_STATUSES or attempt == MAX_RETRIES:
                return resp
            delay = retry_delay_s(resp, attempt)
            log.info("%s answered %s to %s; asking again in %.1f s (retry %d of %d)", self.engine.engine,
                     resp.status_code, path, delay, attempt + 1, MAX_RETRIES)
            resp.close()
            self.retries += 1
            end = time.monotonic() + delay
            while (left := end - time.monotonic()) > 0 and not self.timed_out:
                if self.token.wait(min(left, 0.05)):
                    break
            self.check()
        return resp  # pragma: no cover - the loop always returns

    def _post_once(self, path: str, body: dict) -> requests.Response:
        self.check()
        try:
            resp = self.engine.request("POST", path, json_body=body, stream=True, on_socket=self._track)
        except BackendError as exc:
            if self.stopped:
                raise self._failure(exc, mid_stream=False) from exc
            raise
        if self.stopped:
            resp.close()
            self.check()
        return resp

    def lines(self, resp: requests.Response) -> Iterator[str]:
        """Decoded non-empty lines as they arrive; each socket read is bounded by the read timeout."""
        try:
            for raw in resp.iter_lines(chunk_size=512):
                self.check()
                if raw:
                    yield raw.decode("utf-8", errors="replace")
            self.check()  # a cut socket can look like a clean end of stream
        except requests.RequestException as exc:
            raise self._failure(exc, mid_stream=True) from exc
        finally:
            resp.close()


def parse_json_line(line: str, engine: str) -> dict:
    try:
        obj = json.loads(line)
    except ValueError:
        raise BackendError(f"{engine} sent a line that is not JSON: {line[:120]!r}",
                           code="engine_error", status=502) from None
    if not isinstance(obj, dict):
        raise BackendError(f"{engine} sent unexpected JSON: {line[:120]!r}", code="engine_error", status=502)
    return obj


def ns_to_s(value) -> float | None:
    return round(value / 1e9, 6) if isinstance(value, (int, float)) else None
