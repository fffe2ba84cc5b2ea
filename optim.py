"""optim: start the CAD-optimisation assistant.

`python optim.py` serves the app with waitress (one process, threads, so one model copy is shared);
`flask --app optim run` works too. Configuration comes from environment variables (README).
"""
from __future__ import annotations

import logging
import os
import signal
import sys

try:
    import resource  # POSIX only
except ImportError:  # pragma: no cover - Windows: no open-file soft limit to raise
    resource = None

from web import create_app
from web.config import Config

log = logging.getLogger("optim")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def waitress_options(config: Config) -> dict:
    """waitress settings against connection exhaustion (README: Configuration).

    waitress serves idle and half-sent requests from one select loop without a thread each, so the one thing a
    flood of sockets can use up is `connection_limit`. Hence a generous limit, poll() (select() stops at fd 1024),
    and idle connections closed after CHANNEL_TIMEOUT, checked often enough that a flood past the limit clears
    within about that time. A client that trickles header bytes forever stays "active": only a reverse proxy with a
    header timeout stops that (README).
    """
    return {"threads": config.threads, "connection_limit": config.connection_limit,
            "channel_timeout": config.channel_timeout_s,
            "cleanup_interval": max(1, min(30, config.channel_timeout_s // 3)), "asyncore_use_poll": True,
            # read ahead one request per connection: that is how waitress notices a client that hung up on a
            # non-streamed request (waitress.client_disconnected), so its model work is cancelled
            "channel_request_lookahead": 1,
            "ident": "optim"}


def _raise_open_file_limit(connections: int) -> None:
    """Every connection is a file descriptor; the usual soft limit of 1024 would fail accept() before the limit."""
    if resource is None:
        return
    wanted = connections + 256  # the rest: logs, sessions, the build and model workers' pipes
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError) as exc:
            new = soft
            log.warning("could not raise the open-file limit from %s: %s", soft, exc)
        if new < wanted:
            log.warning("open-file limit %s is below CONNECTION_LIMIT=%s plus headroom: raise `ulimit -n` or lower "
                        "CONNECTION_LIMIT", new, connections)


def main() -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = Config.from_env()
        config.validate()
    except ValueError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    app = create_app(config)
    if config.host not in LOCAL_HOSTS:
        if config.token:
            log.warning("!!! listening on %s: OPTIM_TOKEN is set, so /api/* needs 'Authorization: Bearer <token>' "
                        "(browsers: open /?token=<token> once). Traffic is plain HTTP unless a TLS proxy is in front.",
                        config.host)
        else:
            log.warning("!!! listening on %s with NO token: anyone who can reach this address can edit designs and "
                        "run the model. Set OPTIM_TOKEN to require a bearer token, or bind HOST=127.0.0.1.",
                        config.host)
        if not config.allowed_hosts:
            log.warning("only local names, IP addresses and HOST are accepted in the Host header; "
                        "set OPTIM_ALLOWED_HOSTS=name1,name2 to reach this server by other names")

    from waitress import create_server

    _raise_open_file_limit(config.connection_limit)
    server = create_server(app, host=config.host, port=config.port, **waitress_options(config))
    services = app.extensions["optim"]

    def stop(signum, _frame):
        log.info("signal %s: shutting down", signum)
        services.shutdown()  # cancels model and CAD work, so running requests answer and finish
        # SystemExit ends server.run(), which waits (up to 5 s) for the request threads. The sockets are left to the
        # process exit: closing them here made every request still finishing log a traceback (EBADF).
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("optim listening on http://%s:%s (VLM backend: %s)", config.host, server.effective_port, config.backend)
    services.start_background_work()
    try:
        server.run()
    finally:
        services.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
