"""Server-sent events for the streaming endpoints (/api/vlm and /api/optimise): a worker thread puts
``(event, data)`` pairs on a queue; the response relays them until ``done`` or ``error``."""
from __future__ import annotations

import json
import queue
from typing import Callable

KEEP_ALIVE = ": keep-alive\n\n"  # an SSE comment: keeps proxies and the browser from timing the stream out


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def relay(events: queue.Queue, idle_s: float, on_idle: Callable[[], str | None] | None = None):
    """SSE text for each event until ``done`` or ``error``. When nothing arrives for ``idle_s``, ``on_idle()``'s
    text is sent, or a keep-alive comment when it has nothing to say."""
    while True:
        try:
            event, data = events.get(timeout=idle_s)
        except queue.Empty:
            yield (on_idle() if on_idle is not None else None) or KEEP_ALIVE
            continue
        yield sse(event, data)
        if event in ("done", "error"):
            return
