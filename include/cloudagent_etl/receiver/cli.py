"""``cloudagent-etl receiver``: serve the callback receiver with uvicorn.

Settings come from the environment (``CLOUDAGENT_DB_URL``, ``CLOUDAGENT_CALLBACK_TOKEN``,
``CLOUDAGENT_RECEIVER_*``; see :class:`cloudagent_etl.settings.ReceiverSettings`) and are checked before
the server starts. uvicorn's own access log is off: it would print callback tokens; the app logs its own.
"""

from __future__ import annotations

import argparse
from typing import Any

from cloudagent_etl.settings import ReceiverSettings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    ReceiverSettings.from_env()  # fail fast on a malformed setting, before workers start
    uvicorn.run(
        "cloudagent_etl.receiver.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
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
