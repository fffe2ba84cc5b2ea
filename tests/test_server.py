"""The real server process (`python optim.py`, waitress) at the socket level: a flood of idle and half-sent
connections does not lock out a normal client, idle ones are closed after CHANNEL_TIMEOUT, and SIGTERM with
requests in flight shuts down without a traceback in the log."""
from __future__ import annotations

import signal
import socket
import threading
import time

import pytest
import requests

from tests.fake_engines import FakeOllama
from tests.fixtures_server import start_live_server

FLOOD = 120  # the review locked out every client with 101 idle sockets (waitress' default limit was 100)


def open_flood(port: int, count: int, half_request: bool) -> list[socket.socket]:
    """`count` connections that never finish a request: silent ones, or ones that sent half a header."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if half_request:
            s.sendall(b"GET /api/params HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sockets.append(s)
    return sockets


def timed_get(url: str, timeout: float) -> tuple[int, float]:
    start = time.monotonic()
    status = requests.get(url, timeout=timeout).status_code
    return status, time.monotonic() - start


@pytest.fixture()
def server_factory(tmp_path):
    servers = []

    def start(env: dict):
        server = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": "http://127.0.0.1:9", "CAD_WARMUP": "0",
                                    **env}, tmp_path / f"data{len(servers)}")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_a_flood_of_idle_and_half_sent_connections_does_not_lock_out_a_client(server_factory):
    server = server_factory({})  # the default limits
    flood = open_flood(server.port, FLOOD, half_request=False) + open_flood(server.port, FLOOD, half_request=True)
    try:
        status, took = timed_get(server.url + "/api/params", timeout=10)
        assert status == 200 and took < 3, took
    finally:
        for s in flood:
            s.close()


def test_past_the_connection_limit_idle_sockets_are_closed_after_channel_timeout(server_factory):
    server = server_factory({"CONNECTION_LIMIT": "100", "CHANNEL_TIMEOUT": "2"})
    flood = open_flood(server.port, FLOOD, half_request=False)  # 100 held by the server, 20 queued ahead of us
    try:
        time.sleep(0.5)  # the server has taken its 100
        status, took = timed_get(server.url + "/healthz", timeout=15)
        # One sweep closes every idle socket: CHANNEL_TIMEOUT (2 s) plus a cleanup interval (1 s) and a loop turn
        assert status == 200 and took < 6, took
        closed = 0  # the server hung up on the idle ones it held
        for s in flood[:100]:
            s.settimeout(0.5)
            try:
                closed += s.recv(1) == b""
            except ConnectionError:
                closed += 1
            except socket.timeout:
                pass
        assert closed >= 90, closed
        log = server.log_text()
        assert "Traceback" not in log
    finally:
        for s in flood:
            s.close()


def test_sigterm_with_work_in_flight_shuts_down_cleanly(tmp_path):
    """Streams from the model and the CAD warm-up (it starts 1 s after the server and spends seconds importing
    cadquery in the build worker) are both running when SIGTERM arrives."""
    engine = FakeOllama(chunks=16, delay_s=0.25)  # each answer streams for about 4 s
    engine.start()
    server = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": engine.url, "CAD_WARMUP": "1"},
                               tmp_path / "data")
    answers: list[object] = []

    def ask():
        try:
            with requests.post(server.url + "/api/vlm", json={"prompt": "bigger wheels", "stream": True},
                               stream=True, timeout=30) as r:
                answers.append(sum(1 for _ in r.iter_lines()))
        except requests.RequestException as exc:  # cut off by the shutdown: allowed, a traceback is not
            answers.append(exc)

    clients = [threading.Thread(target=ask) for _ in range(3)]
    started = time.monotonic()  # the server has just answered /healthz
    try:
        for t in clients:
            t.start()
        # 2 s after start: the streams are under way and the warm-up (from 1 s) is still importing cadquery
        time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
    finally:
        server.stop()
        for t in clients:
            t.join(timeout=30)
        engine.stop()
    log = server.log_text()
    assert "shutting down" in log
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]
    assert len(answers) == 3
