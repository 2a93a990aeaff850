"""The callback receiver: CloudAgent POSTs the exported data here; it is stored durably before the 2xx.

Routes:

- ``POST /callbacks/dial-status/{request_id}/{token}`` — the per-request ``callBackUrl``. An id that is
  not ours answers 404, a wrong token 401 (compared in constant time against the stored SHA-256); both
  before any of the body is read, and nothing is stored.
- ``POST /callbacks/dial-status`` with header ``X-Callback-Token``, or ``POST /callbacks/dial-status/{token}``
  — the fixed URL some accounts configure, authenticated by the shared ``CLOUDAGENT_CALLBACK_TOKEN`` (404
  when none is configured) and matched to its request by the ``uniqueId`` in the body. A body without one
  answers 422. An unknown ``uniqueId`` is looked up again for ``unique_id_wait_s`` (default 5 s; the
  callback can race the commit of the API's answer) and then answers 404, which a sender retries.
- ``GET /healthz`` — 200 when the landing tables answer, 503 otherwise.

Any content type is accepted and stored verbatim. The body is read once: streamed into a spool file (in
memory up to 1 MiB, then on disk in ``spool_dir``) while it is measured, hashed and scanned for its
``uniqueId`` (:mod:`cloudagent_etl.receiver.body`), then written to the database in pieces by
:func:`landing.store_callback`, so memory does not grow with the body size.

Answers: 200 ``{"status": "stored"|"duplicate", "payload_id": N, "late": bool}`` only after the commit;
400 empty body; 408 when no byte of the body arrived for ``body_timeout_s``; 413 above ``max_body_bytes``
(from Content-Length before reading, or while reading a chunked body); 503 with ``Retry-After`` when the
database does not answer (nothing is half-written: one transaction). A late callback (the request was
already loaded, failed or expired) is stored, flagged ``late`` and acknowledged, so nothing is lost.

Access logs are ours (uvicorn's are off, they would print the token): one JSON object per request on the
``cloudagent_etl.receiver.access`` logger, with the token masked in the path.

It is a plain ASGI app rather than a framework's: at a few hundred callbacks a second on two cores, a
framework's routing, dependency and middleware layers cost as much CPU as storing the callback. Database
work runs on a thread pool of :data:`DB_CONNECTIONS` threads, one pooled connection each.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from sqlalchemy import Engine, select
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine, to_sqlalchemy_url
from cloudagent_etl.receiver.body import BodySpool
from cloudagent_etl.settings import ReceiverSettings

log = logging.getLogger(__name__)
access_log = logging.getLogger("cloudagent_etl.receiver.access")

CALLBACK_PATH = "/callbacks/dial-status"
SHARED_TOKEN_HEADER = "x-callback-token"  # noqa: S105 - a header name
#: Bodies up to this size stay in memory while spooled; bigger ones go to a file in ``spool_dir``.
SPOOL_IN_MEMORY_BYTES = 1024 * 1024
RETRY_AFTER_S = 5
#: Database connections per worker process, and the number of callbacks it writes at the same time:
#: more would only queue inside the database for the same two cores, and a pool with overflow opens and
#: closes a connection per callback under load (a fork and a login on the server each time).
DB_CONNECTIONS = 10
#: Request headers kept with a payload (never tokens, cookies or authorization).
STORED_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
)
_JSON_HEADERS = [(b"content-type", b"application/json")]

T = TypeVar("T")
Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class CallbackRejected(Exception):
    """Answer the sender with ``status_code`` and a short JSON error; nothing is stored."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


def mask_path(path: str) -> str:
    """The path with callback tokens replaced by ``***`` (keeps the request id of per-request URLs)."""
    if not path.startswith(CALLBACK_PATH + "/"):
        return path
    parts = path[len(CALLBACK_PATH) + 1 :].split("/")
    masked = [parts[0], "***"] if len(parts) >= 2 else ["***"]
    return f"{CALLBACK_PATH}/{'/'.join(masked)}"


@dataclass
class Exchange:
    """One HTTP request as the receiver sees it, and what it answered (for the access log)."""

    scope: Scope
    receive: Receive
    send: Send
    headers: dict[str, str]
    status: int | None = None
    bytes_in: int = 0

    @classmethod
    def from_asgi(cls, scope: Scope, receive: Receive, send: Send) -> Exchange:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))  # the first one wins
        return cls(scope, receive, send, headers)

    @property
    def client_host(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None

    async def answer(
        self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        content = orjson.dumps(document)
        raw_headers = [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())]
        raw_headers += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
        self.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await self.send({"type": "http.response.body", "body": content})

    def stored_headers(self) -> dict[str, str]:
        return {
            name: self.headers[name].replace("\x00", "") for name in STORED_HEADERS if name in self.headers
        }

    async def spool_body(self, settings: ReceiverSettings) -> BodySpool:
        """Stream the request body into a :class:`BodySpool`, enforcing the size and idle-time limits.

        The caller closes the spool; on any refusal here it is closed already.
        """
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise CallbackRejected(413, f"body larger than {settings.max_body_bytes} bytes")
        spool = BodySpool(self.headers.get("content-type"), settings.spool_dir, SPOOL_IN_MEMORY_BYTES)
        try:
            more = True
            while more:
                async with asyncio.timeout(settings.body_timeout_s):
                    message = await self.receive()
                if message["type"] == "http.disconnect":
                    raise CallbackRejected(400, "client disconnected before the body was complete")
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                self.bytes_in += len(chunk)
                if self.bytes_in > settings.max_body_bytes:
                    raise CallbackRejected(413, f"body larger than {settings.max_body_bytes} bytes")
                spool.write(chunk)
            if self.bytes_in == 0:
                raise CallbackRejected(400, "empty body")
        except TimeoutError:
            spool.close()
            raise CallbackRejected(408, f"no body data for {settings.body_timeout_s:g} s") from None
        except BaseException:
            spool.close()
            raise
        return spool


def _engine_for(settings: ReceiverSettings) -> Engine:
    url = to_sqlalchemy_url(settings.database_url)
    extra: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # No pre-ping (two extra round trips per callback): a connection that died answers 503 once,
        # is dropped from the pool, and the sender's retry gets a fresh one.
        extra = {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": False}
    # Exactly one connection per database thread: none is ever opened for a single callback.
    return create_db_engine(
        url, pool_size=DB_CONNECTIONS, max_overflow=0, pool_timeout=10, hide_parameters=True, **extra
    )


class Receiver:
    """The receiver as an ASGI app bound to ``settings`` (routes and answers: see the module docstring)."""

    def __init__(self, settings: ReceiverSettings) -> None:
        self.settings = settings
        self.engine = _engine_for(settings)
        self.database_threads = ThreadPoolExecutor(DB_CONNECTIONS, thread_name_prefix="receiver-db")
        # SQLite has one writer at a time: queueing writers on a lock here is fairer and faster than letting
        # them poll SQLite's busy handler (its back-off sleeps up to 100 ms, which is what p99 would show).
        self.write_lock: AbstractContextManager[Any] = (
            threading.Lock() if self.engine.dialect.name == "sqlite" else nullcontext()
        )
        settings.spool_dir.mkdir(parents=True, exist_ok=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        exchange = Exchange.from_asgi(scope, receive, send)
        try:
            await self._route(exchange)
        except CallbackRejected as rejected:
            await exchange.answer(rejected.status_code, {"error": rejected.message}, rejected.headers)
        except Exception:
            log.exception("unexpected error on %s", mask_path(scope["path"]))
            if exchange.status is None:
                await exchange.answer(500, {"error": "internal error"})
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    orjson.dumps(
                        {
                            "method": scope["method"],
                            "path": mask_path(scope["path"]),
                            "status": exchange.status,
                            "ms": round((time.perf_counter() - started) * 1000, 1),
                            "bytes_in": exchange.bytes_in,
                            "client": exchange.client_host,
                        }
                    ).decode()
                )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.database_threads.shutdown(wait=True)
                self.engine.dispose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, exchange: Exchange) -> None:
        path: str = exchange.scope["path"]
        method: str = exchange.scope["method"]
        if path == "/healthz":
            if method not in ("GET", "HEAD"):
                raise CallbackRejected(405, "method not allowed", {"Allow": "GET"})
            await self._healthz(exchange)
            return
        if path == CALLBACK_PATH or path.startswith(CALLBACK_PATH + "/"):
            parts = path[len(CALLBACK_PATH) + 1 :].split("/") if path != CALLBACK_PATH else []
            if any(not part for part in parts) or len(parts) > 2:
                raise CallbackRejected(404, "not found")
            if method != "POST":
                raise CallbackRejected(405, "method not allowed", {"Allow": "POST"})
            if len(parts) == 2:
                await self._per_request_callback(exchange, *parts)
            elif parts:
                await self._shared_token_callback(exchange, parts[0])
            else:
                await self._shared_token_callback(exchange, exchange.headers.get(SHARED_TOKEN_HEADER))
            return
        raise CallbackRejected(404, "not found")

    async def _in_thread(self, database_call: Callable[..., T], *args: Any) -> T:
        """Run blocking database work on a database thread; a database that does not answer becomes a 503."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.database_threads, database_call, *args
            )
        except (OperationalError, InterfaceError, PoolTimeoutError) as exc:
            log.warning("database unavailable: %s", type(exc.orig if hasattr(exc, "orig") else exc).__name__)
            raise CallbackRejected(
                503, "database unavailable, retry later", {"Retry-After": str(RETRY_AFTER_S)}
            ) from None

    async def _per_request_callback(self, exchange: Exchange, request_id: str, token: str) -> None:
        check = await self._in_thread(landing.verify_callback_token, self.engine, request_id, token)
        if check is landing.TokenCheck.UNKNOWN_REQUEST:
            raise CallbackRejected(404, "unknown request")
        if check is landing.TokenCheck.WRONG_TOKEN:
            raise CallbackRejected(401, "invalid token")
        spool = await exchange.spool_body(self.settings)
        try:
            body, unique_id = spool.finish()
            result = await self._in_thread(self._store, request_id, body, unique_id, exchange)
        finally:
            spool.close()
        await _answer_stored(exchange, result)

    async def _shared_token_callback(self, exchange: Exchange, token: str | None) -> None:
        if self.settings.shared_token is None:
            raise CallbackRejected(404, "the fixed callback URL is not enabled")
        expected = hashlib.sha256(self.settings.shared_token.get().encode()).digest()
        given = hashlib.sha256((token or "").encode("utf-8", errors="replace")).digest()
        if not hmac.compare_digest(expected, given):
            raise CallbackRejected(401, "invalid token")
        spool = await exchange.spool_body(self.settings)
        try:
            body, unique_id = spool.finish()
            if unique_id is None:
                raise CallbackRejected(422, "no uniqueId in the body: cannot tell which request it answers")
            deadline = time.monotonic() + self.settings.unique_id_wait_s
            while (
                request_id := await self._in_thread(landing.find_request_by_unique_id, self.engine, unique_id)
            ) is None:
                if time.monotonic() >= deadline:
                    raise CallbackRejected(404, "unknown uniqueId")
                await asyncio.sleep(0.25)
            result = await self._in_thread(self._store, request_id, body, unique_id, exchange)
        finally:
            spool.close()
        await _answer_stored(exchange, result)

    def _store(
        self, request_id: str, body: landing.CallbackBody, unique_id: str | None, exchange: Exchange
    ) -> landing.StoredCallback:
        content_type = exchange.headers.get("content-type")
        with self.write_lock:
            return landing.store_callback(
                self.engine,
                request_id,
                body,
                content_type=content_type.replace("\x00", "") if content_type else None,
                unique_id=unique_id,
                client_addr=exchange.client_host,
                headers=exchange.stored_headers(),
            )

    def _landing_answers(self) -> bool:
        with self.engine.connect() as conn:
            conn.execute(select(landing.export_requests.c.request_id).limit(1)).all()
        return True

    async def _healthz(self, exchange: Exchange) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self.database_threads, self._landing_answers)
        except SQLAlchemyError as exc:
            log.warning("health check failed: %s", type(exc).__name__)
            await exchange.answer(503, {"status": "unavailable"})
            return
        await exchange.answer(200, {"status": "ok"})


async def _answer_stored(exchange: Exchange, result: landing.StoredCallback) -> None:
    status = "duplicate" if result.duplicate else "stored"
    await exchange.answer(200, {"status": status, "payload_id": result.payload_id, "late": result.late})


def create_app(settings: ReceiverSettings) -> Receiver:
    """The receiver as an ASGI app bound to ``settings`` (one engine per app, disposed at shutdown)."""
    return Receiver(settings)


def create_app_from_env() -> Receiver:
    """App factory for uvicorn (``--factory``): settings from the environment of each worker process."""
    return create_app(ReceiverSettings.from_env())
