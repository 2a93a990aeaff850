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
- ``GET /healthz`` — 200 when a callback could be stored now: a rolled-back write of the landing
  tables succeeds (:func:`landing.check_can_store`) and the spool folder takes a write and has
  ``spool_min_free_bytes`` free; 503 with ``Retry-After`` otherwise. With ``?probe=<nonce>`` the answer
  also carries ``probe``: the nonce signed with this database's secret (:mod:`cloudagent_etl.identity`),
  which is how a preflight knows that the callback URL reaches this receiver.

Any content type is accepted and stored verbatim; a gzip or deflate ``Content-Encoding`` is decoded while
the body streams in and the decoded body is stored (any other encoding: 415, so the sender resends it
plain). The body is read once: streamed into a spool file (in memory up to 256 KiB, then on disk in
``spool_dir``) while it is decoded, measured, hashed and scanned for its ``uniqueId``
(:mod:`cloudagent_etl.receiver.body`), then written to the database in pieces by
:func:`landing.store_callback`, so memory does not grow with the body size.

Answers: 200 ``{"status": "stored"|"duplicate", "payload_id": N, "late": bool}`` only after the commit.
The sender's mistakes get 4xx: 400 empty, truncated or undecodable body (or multipart without a
boundary); 408 when no byte of the body arrived for ``body_timeout_s`` or the whole body took longer than
``body_deadline_s``; 410 for a request settled longer than ``late_grace_s`` ago; 413 above
``max_body_bytes`` (from Content-Length before reading, while reading, or once decoded) or past
``max_inflate_ratio``; 415 an unknown encoding. Ours get 5xx: 503 with ``Retry-After`` whenever the
callback cannot be stored *now* (database unreachable, read-only, full or not permitted; spool folder
full or unwritable), nothing half-written (one transaction, spool file removed); 500 for anything
unexpected. A late callback within the grace period is stored, flagged ``late`` and acknowledged.
Limits on the connection itself (head size and time, idle connections, their number) are
:mod:`cloudagent_etl.receiver.protocol`'s.

Access logs are ours (uvicorn's are off): one JSON object per request on the
``cloudagent_etl.receiver.access`` logger; every log line goes through :func:`logs.mask_tokens`.

It is a plain ASGI app rather than a framework's: at a few hundred callbacks a second on two cores, a
framework's routing, dependency and middleware layers cost as much CPU as storing the callback. Database
work runs on a thread pool of :data:`DB_CONNECTIONS` threads, one pooled connection each.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cloudagent_etl import identity, landing
from cloudagent_etl.databases import database_for
from cloudagent_etl.db import create_db_engine, is_unavailable
from cloudagent_etl.media_types import MULTIPART_FORM, media_type
from cloudagent_etl.receiver.body import BodyRejected, BodySpool, Inflater, Sniffed, content_coding
from cloudagent_etl.receiver.logs import install_masking, mask_tokens
from cloudagent_etl.settings import ReceiverSettings

log = logging.getLogger(__name__)
access_log = logging.getLogger("cloudagent_etl.receiver.access")

CALLBACK_PATH = "/callbacks/dial-status"
SHARED_TOKEN_HEADER = "x-callback-token"  # noqa: S105 - a header name
#: Bodies up to this size stay in memory while spooled; bigger ones go to a file in ``spool_dir``.
SPOOL_IN_MEMORY_BYTES = 256 * 1024
RETRY_AFTER_S = 5
_RETRY_LATER = {"Retry-After": str(RETRY_AFTER_S)}
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

    async def spool_body(self, settings: ReceiverSettings) -> tuple[landing.CallbackBody, Sniffed, BodySpool]:
        """Stream the request body into a :class:`BodySpool`, enforcing the size, encoding and time limits.

        Returns the body ready to store, its uniqueId and the spool, which the caller closes; on any
        refusal here the spool is closed (its file removed) already.
        """
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise CallbackRejected(413, f"body larger than {settings.max_body_bytes} bytes")
        content_type = self.headers.get("content-type")
        if media_type(content_type) == MULTIPART_FORM and "boundary=" not in (content_type or "").lower():
            raise CallbackRejected(400, "multipart/form-data without a boundary: its parts cannot be read")
        try:
            coding = content_coding(self.headers.get("content-encoding"))
        except BodyRejected as rejected:
            raise CallbackRejected(415, rejected.message, {"Accept-Encoding": "gzip, deflate"}) from None
        inflater = coding and Inflater(coding, settings.max_body_bytes, settings.max_inflate_ratio)
        try:
            spool = BodySpool(content_type, settings.spool_dir, SPOOL_IN_MEMORY_BYTES, inflater or None)
        except OSError as exc:
            raise _spool_unavailable(exc) from None
        try:
            async with asyncio.timeout(settings.body_deadline_s):
                await self._receive_into(spool, settings)
            if self.bytes_in == 0:
                raise CallbackRejected(400, "empty body")
            body, sniffed = spool.finish()
        except TimeoutError:
            spool.close()
            raise CallbackRejected(408, f"body not received within {settings.body_deadline_s:g} s") from None
        except BodyRejected as rejected:
            spool.close()
            raise CallbackRejected(rejected.status_code, rejected.message) from None
        except OSError as exc:
            spool.close()
            raise _spool_unavailable(exc) from None
        except BaseException:
            spool.close()
            raise
        return body, sniffed, spool

    async def _receive_into(self, spool: BodySpool, settings: ReceiverSettings) -> None:
        more = True
        while more:
            try:
                async with asyncio.timeout(settings.body_timeout_s):
                    message = await self.receive()
            except TimeoutError:
                raise CallbackRejected(408, f"no body data for {settings.body_timeout_s:g} s") from None
            if message["type"] == "http.disconnect":
                raise CallbackRejected(400, "client disconnected before the body was complete")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            self.bytes_in += len(chunk)
            if self.bytes_in > settings.max_body_bytes:
                raise CallbackRejected(413, f"body larger than {settings.max_body_bytes} bytes")
            for _ in spool.write_steps(chunk):
                await asyncio.sleep(0)  # a piece that inflates a lot does not hold up other requests


def _spool_unavailable(exc: OSError) -> CallbackRejected:
    """The spool folder cannot take the body (full, read-only, gone): ours, so retry later."""
    log.warning("spool folder unavailable: %s", exc.strerror or type(exc).__name__)
    return CallbackRejected(503, "no room to receive the body now, retry later", _RETRY_LATER)


def _engine_for(settings: ReceiverSettings) -> Engine:
    # Exactly one connection per database thread: none is ever opened for a single callback. Durable:
    # the 2xx promises the body survives a power cut, not only a crash. Serving: a connection that died
    # answers 503 once and is dropped from the pool (no pre-ping), and the sender's retry gets a fresh one.
    return create_db_engine(
        settings.database_url,
        durable=True,
        serving=True,
        pool_size=DB_CONNECTIONS,
        max_overflow=0,
        pool_timeout=10,
        hide_parameters=True,
    )


class Receiver:
    """The receiver as an ASGI app bound to ``settings`` (routes and answers: see the module docstring)."""

    def __init__(self, settings: ReceiverSettings) -> None:
        self.settings = settings
        self.shared_token = settings.shared_token.get() if settings.shared_token else None
        self.late_grace = timedelta(seconds=settings.late_grace_s)
        self.engine = _engine_for(settings)
        self.database_threads = ThreadPoolExecutor(DB_CONNECTIONS, thread_name_prefix="receiver-db")
        # A database with one writer at a time: queueing writers on a lock here is fairer and faster than
        # letting them poll its busy handler (SQLite's back-off sleeps up to 100 ms: what p99 would show).
        self.write_lock: AbstractContextManager[Any] = (
            threading.Lock() if database_for(self.engine).serializes_writers else nullcontext()
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
            log.exception("unexpected error on %s", mask_tokens(scope["path"], self.shared_token))
            if exchange.status is None:
                await exchange.answer(500, {"error": "internal error"})
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    orjson.dumps(
                        {
                            "method": scope["method"],
                            "path": mask_tokens(scope["path"], self.shared_token),
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
        """Run blocking database work on a database thread; a database that cannot do it now becomes a 503."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.database_threads, database_call, *args
            )
        except SQLAlchemyError as exc:
            if not is_unavailable(exc):
                raise
            log.warning("database unavailable: %s", type(getattr(exc, "orig", None) or exc).__name__)
            raise CallbackRejected(503, "database unavailable, retry later", _RETRY_LATER) from None

    async def _per_request_callback(self, exchange: Exchange, request_id: str, token: str) -> None:
        check = await self._in_thread(
            landing.verify_callback_token, self.engine, request_id, token, self.late_grace
        )
        if check is landing.TokenCheck.UNKNOWN_REQUEST:
            raise CallbackRejected(404, "unknown request")
        if check is landing.TokenCheck.WRONG_TOKEN:
            raise CallbackRejected(401, "invalid token")
        if check is landing.TokenCheck.CLOSED:
            raise self._closed()
        body, sniffed, spool = await exchange.spool_body(self.settings)
        try:
            result = await self._in_thread(self._store, request_id, body, sniffed, exchange)
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
        body, sniffed, spool = await exchange.spool_body(self.settings)
        unique_id = sniffed.unique_id
        try:
            if unique_id is None:
                raise CallbackRejected(422, "no uniqueId in the body: cannot tell which request it answers")
            deadline = time.monotonic() + self.settings.unique_id_wait_s
            while (
                request_id := await self._in_thread(landing.find_request_by_unique_id, self.engine, unique_id)
            ) is None:
                if time.monotonic() >= deadline:
                    raise CallbackRejected(404, "unknown uniqueId")
                await asyncio.sleep(0.25)
            if await self._in_thread(landing.closed_for_callbacks, self.engine, request_id, self.late_grace):
                raise self._closed()
            result = await self._in_thread(self._store, request_id, body, sniffed, exchange)
        finally:
            spool.close()
        await _answer_stored(exchange, result)

    def _store(
        self, request_id: str, body: landing.CallbackBody, sniffed: Sniffed, exchange: Exchange
    ) -> landing.StoredCallback:
        content_type = exchange.headers.get("content-type")
        with self.write_lock:
            return landing.store_callback(
                self.engine,
                request_id,
                body,
                content_type=content_type.replace("\x00", "") if content_type else None,
                unique_id=sniffed.unique_id,
                client_addr=exchange.client_host,
                headers=exchange.stored_headers(),
                part=sniffed.part,
            )

    def _closed(self) -> CallbackRejected:
        days = self.settings.late_grace_s / 86400
        return CallbackRejected(
            410, f"this request no longer takes callbacks ({days:g} days after it settled)"
        )

    def _cannot_store(self) -> str | None:
        """Why a callback could not be stored now (database or spool folder), or None."""
        try:
            with self.write_lock:
                landing.check_can_store(self.engine)
        except SQLAlchemyError as exc:
            log.warning(
                "health check: database cannot store: %s", type(getattr(exc, "orig", None) or exc).__name__
            )
            return "database cannot store"
        try:
            with tempfile.TemporaryFile(dir=self.settings.spool_dir, buffering=0) as probe:
                probe.write(b"probe")
            free = shutil.disk_usage(self.settings.spool_dir).free
        except OSError as exc:
            log.warning("health check: spool folder unavailable: %s", exc.strerror or type(exc).__name__)
            return "spool folder unavailable"
        return None if free >= self.settings.spool_min_free_bytes else "spool folder full"

    async def _healthz(self, exchange: Exchange) -> None:
        nonce = _probe_nonce(exchange.scope.get("query_string", b""))
        loop = asyncio.get_running_loop()
        problem = await loop.run_in_executor(self.database_threads, self._cannot_store)
        if problem:
            await exchange.answer(503, {"status": "unavailable", "reason": problem}, _RETRY_LATER)
            return
        if nonce is None:
            await exchange.answer(200, {"status": "ok"})
            return
        secret = await loop.run_in_executor(self.database_threads, identity.probe_secret, self.engine)
        await exchange.answer(200, {"status": "ok", "probe": identity.probe_answer(secret, nonce)})


def _probe_nonce(query_string: bytes) -> str | None:
    """The preflight's nonce (``?probe=...``), if the query carries a usable one."""
    values = parse_qs(query_string.decode("latin-1")).get(identity.PROBE_PARAMETER)
    if not values or not 0 < len(values[0]) <= identity.MAX_NONCE_CHARS:
        return None
    return values[0]


async def _answer_stored(exchange: Exchange, result: landing.StoredCallback) -> None:
    status = "duplicate" if result.duplicate else "stored"
    await exchange.answer(200, {"status": status, "payload_id": result.payload_id, "late": result.late})


def create_app(settings: ReceiverSettings) -> Receiver:
    """The receiver as an ASGI app bound to ``settings`` (one engine per app, disposed at shutdown)."""
    return Receiver(settings)


def create_app_from_env() -> Receiver:
    """App factory for uvicorn (``--factory``): settings from the environment of each worker process,
    whose log lines are all masked."""
    settings = ReceiverSettings.from_env()
    install_masking(settings.shared_token.get() if settings.shared_token else None)
    return create_app(settings)
