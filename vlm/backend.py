"""The small interface every model backend implements (shape borrowed from LitServe's LitAPI).

A backend knows how to talk to one kind of engine. It does not decide *when* to load or unload:
that is `vlm.lifecycle.ModelManager`'s job, the single owner of model state.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable

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


@dataclass
class GenerateRequest:
    system: str
    prompt: str
    images: list[bytes] = field(default_factory=list)  # encoded PNG/JPEG bytes, already validated
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy decoding
    json_schema: dict | None = None  # structured-output hint for engines that support it
    timeout_s: float | None = None

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
        """Best-effort cancel of the generation in flight."""
