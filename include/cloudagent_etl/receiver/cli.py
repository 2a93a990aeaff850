"""``cloudagent-etl receiver``: serve the callback receiver with uvicorn.

Settings come from the environment (``CLOUDAGENT_DB_URL``, ``CLOUDAGENT_CALLBACK_TOKEN``,
``CLOUDAGENT_RECEIVER_*``; see :class:`cloudagent_etl.settings.ReceiverSettings`) and are checked before
the server starts. uvicorn's own access log is off (the app writes its own), and every log line of the
process goes through the receiver's masking rule (:mod:`cloudagent_etl.receiver.logs`).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from cloudagent_etl.settings import ReceiverSettings

log = logging.getLogger(__name__)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cloudagent_etl.receiver.logs import install_masking
    from cloudagent_etl.receiver.protocol import connection_cap

    settings = ReceiverSettings.from_env()  # fail fast on a malformed setting, before workers start
    install_masking(settings.shared_token.get() if settings.shared_token else None)
    cap = connection_cap(settings.max_connections)
    if cap < settings.max_connections:
        log.warning(
            "open-file limit: at most %d connections per worker, not %d", cap, settings.max_connections
        )
    uvicorn.run(
        "cloudagent_etl.receiver.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # httptools with the limits uvicorn lacks (see receiver/protocol.py and docs/decisions.md)
        http="cloudagent_etl.receiver.protocol:ReceiverProtocol",
        timeout_keep_alive=settings.idle_timeout_s,  # type: ignore[arg-type]  # a float works too
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        timeout_graceful_shutdown=30,
    )
    return 0


def add_receiver_command(subparsers: Any) -> None:
    """Register ``receiver`` on the ``cloudagent-etl`` command's sub-parsers."""
    parser = subparsers.add_parser("receiver", help="serve the callback receiver (uvicorn)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies whose X-Forwarded-For/-Proto are trusted for the client address (default 127.0.0.1)",
    )
    parser.set_defaults(handler=_serve)
