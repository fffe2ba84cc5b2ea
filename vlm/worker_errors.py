"""The model worker's error: a message a user can read and a protocol code (`vlm.worker` sends both in an error event)."""
from __future__ import annotations


class WorkerError(Exception):
    def __init__(self, message: str, code: str = "load_failed"):
        super().__init__(message)
        self.message, self.code = message, code


def describe_exception(exc: BaseException) -> str:
    """One short line for a library exception: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]
