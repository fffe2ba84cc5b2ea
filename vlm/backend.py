"""The small interface every model backend implements (shape borrowed from LitServe's LitAPI).

A backend knows how to talk to one kind of engine. It does not decide *when* to load or unload:
that is `vlm.lifecycle.ModelManager`'s job, the single owner of model state.
"""
from __future__ import annotations

import abc
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]  # (fraction 0..1, phase text)
TokenCallback = Callable[[str], None]


class BackendError(Exception):
    """An error a user can act on. `status` is the HTTP status the web layer should answer with."""

    def __init__(self, message: str, *, code: str = "backend_error", status: int = 503):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class GenerationCancelled(BackendError):
    def __init__(self, message: str = "generation was cancelled"):
        super().__init__(message, code="cancelled", status=503)


class CancelToken:
    """Set once when whoever asked for a generation no longer wants it (Stop, a closed stream, DELETE
    /api/optimise). Quacks like a threading.Event, so searches that poll `is_set()` accept it; callbacks
    registered with `on_cancel` run at once in the cancelling thread, which is how a cancel reaches an engine
    blocked on a socket or a worker pipe."""

    def __init__(self):
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._call(callback)

    cancel = set

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` on cancel (at once when already cancelled). Returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        self._call(callback)
        return lambda: None

    def _forget(self, callback) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    @staticmethod
    def _call(callback) -> None:
        try:
            callback()
        except Exception:  # noqa: BLE001 - one failing hook must not stop the others
            log.exception("cancel callback failed")


@dataclass
class GenerateRequest:
    system: str
    prompt: str
    images: list[bytes] = field(default_factory=list)  # encoded PNG/JPEG bytes, already validated
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy decoding
    seed: int | None = None  # sampling seed (temperature > 0): the same seed, the same answer where the engine allows
    json_schema: dict | None = None  # structured-output hint for engines that support it
    timeout_s: float | None = None  # the whole generation (VLM_GENERATE_TIMEOUT)
    cancel: CancelToken | None = None  # set when the asker goes away; backends stop the engine's work on it

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0.0


@dataclass
class GenerateResult:
    text: str
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    timings: dict = field(default_factory=dict)  # seconds: e.g. {"generate": 1.2, "first_token": 0.3}
    finish_reason: str | None = None  # "stop", or "length" when max_new_tokens cut the answer off

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class Backend(abc.ABC):
    """load / generate / unload / status. Implementations must be safe to call from one thread at a time;
    the ModelManager serialises calls."""

    name: str = "base"  # "finetuned" | "ollama" | "openai"
    max_parallel: int = 1  # generations the engine runs at once (VLM_PARALLEL for remote engines)

    @abc.abstractmethod
    def load(self, progress: ProgressCallback) -> None:
        """Make the model ready. Raises BackendError with a clear reason on failure."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest, on_token: TokenCallback | None = None) -> GenerateResult:
        """Run one request. Calls on_token for each piece of text as it is produced, when given."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Free everything the model holds. Must be idempotent."""

    @abc.abstractmethod
    def status(self) -> dict:
        """Backend-specific facts for /api/vlm/status: model, adapter, memory, reachability..."""

    def is_alive(self) -> bool:
        """False when a loaded model has been lost (crashed worker, engine gone). Default: trust load()."""
        return True

    def cancel(self) -> None:
        """Best-effort cancel of every generation in flight (shutdown). One request cancels through its token."""

    def identity(self) -> dict:
        """What decides the answers besides the request (model, adapter content): part of the cache key, so a
        model retrained in place never serves an old answer. Cheap (a few stat calls), no network."""
        return {"backend": self.name}
