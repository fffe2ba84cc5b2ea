"""optim: start the CAD-optimisation assistant.

`python optim.py` serves the app with waitress (one process, threads, so one model copy is shared);
`flask --app optim run` works too. Configuration comes from environment variables (README).
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from web import create_app
from web.config import Config

log = logging.getLogger("optim")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


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

    server = create_server(app, host=config.host, port=config.port, threads=int(os.environ.get("THREADS", "16")),
                           channel_timeout=600, ident="optim")
    services = app.extensions["optim"]

    def stop(signum, _frame):
        log.info("signal %s: shutting down", signum)
        services.shutdown()
        server.close()
        sys.exit(0)

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
