"""Shared plumbing for the HTTP backends (Ollama, OpenAI-compatible): timeouts, error mapping, cancel.

Every network failure becomes a `BackendError` with a code the web layer can show:
`engine_unreachable` (503), `engine_timeout` (504), `engine_error` (502/503), plus the per-engine ones.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Iterator

import requests
from urllib3.exceptions import ReadTimeoutError

from vlm.backend import BackendError, GenerationCancelled

log = logging.getLogger(__name__)

MAX_ERROR_TEXT = 300


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


class HttpEngine:
    """One engine endpoint: builds timeouts, maps exceptions, tracks the streamed response so cancel() can cut it.

    A fresh connection per call (no shared Session): status() may run on the web thread while generate() streams.
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
        self._current: requests.Response | None = None
        self._cancelled = threading.Event()

    # --- requests -------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json_body=None, stream: bool = False,
                read_timeout_s: float | None = None) -> requests.Response:
        """Send one request; network failures raise BackendError. HTTP error statuses are returned, not raised."""
        url = self.base_url + path
        read_timeout = self.read_timeout_s if read_timeout_s is None else read_timeout_s
        try:
            return requests.request(method, url, json=json_body, stream=stream, headers=self.headers,
                                    timeout=(self.connect_timeout_s, read_timeout))
        except requests.RequestException as exc:
            raise self.map_exception(exc, read_timeout) from exc

    def map_exception(self, exc: BaseException, read_timeout: float | None = None,
                      mid_stream: bool = False) -> BackendError:
        if mid_stream and self._cancelled.is_set():  # our own cancel() cut the socket
            return GenerationCancelled()
        if isinstance(exc, requests.ConnectTimeout):
            return BackendError(
                f"{self.engine} at {self.base_url} did not accept a connection within {self.connect_timeout_s:g} s",
                code="engine_timeout", status=504)
        if is_read_timeout(exc):
            limit = self.read_timeout_s if read_timeout is None else read_timeout
            return BackendError(f"{self.engine} at {self.base_url} sent nothing for {limit:g} s (read timeout)",
                                code="engine_timeout", status=504)
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

    # --- streaming and cancel -------------------------------------------------------------------------------
    def begin(self, timeout_s: float | None) -> tuple[float | None, float]:
        """Start a generation: clear a stale cancel; return (deadline, read timeout) for it. The read timeout
        shrinks to the request's own time limit so one stalled read cannot outlive it."""
        self._cancelled.clear()
        if timeout_s is None or timeout_s <= 0:
            return None, self.read_timeout_s
        return time.monotonic() + timeout_s, min(self.read_timeout_s, timeout_s)

    def lines(self, resp: requests.Response, deadline: float | None,
              read_timeout_s: float | None = None) -> Iterator[str]:
        """Decoded non-empty lines as they arrive. Each socket read is bounded by the read timeout; the overall
        request is bounded by `deadline` (monotonic seconds) checked between lines."""
        with self._lock:
            self._current = resp
        try:
            for raw in resp.iter_lines(chunk_size=512):
                if self._cancelled.is_set():
                    raise GenerationCancelled()
                if deadline is not None and time.monotonic() > deadline:
                    raise BackendError(f"{self.engine} did not finish within the generation time limit",
                                       code="engine_timeout", status=504)
                if raw:
                    yield raw.decode("utf-8", errors="replace")
            if self._cancelled.is_set():
                raise GenerationCancelled()
        except requests.RequestException as exc:
            raise self.map_exception(exc, read_timeout_s, mid_stream=True) from exc
        finally:
            with self._lock:
                self._current = None
            resp.close()

    def cancel(self) -> None:
        """Mark the generation cancelled and wake the reader blocked on the socket (urllib3's shutdown(SHUT_RD))."""
        self._cancelled.set()
        with self._lock:
            resp = self._current
        if resp is not None:
            try:
                resp.raw.shutdown()
            except Exception:  # already released or finished: the flag alone stops the loop
                log.debug("could not shut down the %s response socket", self.engine, exc_info=True)

    def raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise GenerationCancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


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
