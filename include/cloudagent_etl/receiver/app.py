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

Any content type is accepted and stored verbatim (see :mod:`cloudagent_etl.receiver.body` for the two
cheap looks it takes). The body is streamed into a spool file (in memory up to 1 MiB, then on disk in
``spool_dir``) while it is hashed, then written to the database in pieces by
:func:`landing.store_callback`, so memory does not grow with the body size.

Answers: 200 ``{"status": "stored"|"duplicate", "payload_id": N, "late": bool}`` only after the commit;
400 empty body; 408 when no byte of the body arrived for ``body_timeout_s``; 413 above ``max_body_bytes``
(from Content-Length before reading, or while reading a chunked body); 503 with ``Retry-After`` when the
database does not answer (nothing is half-written: one transaction). A late callback (the request was
already loaded, failed or expired) is stored, flagged ``late`` and acknowledged, so nothing is lost.

Access logs are ours (uvicorn's are off, they would print the token): one JSON object per request on the
``cloudagent_etl.receiver.access`` logger, with the token masked in the path.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from typing import IO, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, select
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudagent_etl import landing
from cloudagent_etl.db import create_db_engine, to_sqlalchemy_url
from cloudagent_etl.receiver.body import find_unique_id, parse_state
from cloudagent_etl.schema import export_requests
from cloudagent_etl.settings import ReceiverSettings

log = logging.getLogger(__name__)
access_log = logging.getLogger("cloudagent_etl.receiver.access")

CALLBACK_PATH = "/callbacks/dial-status"
SHARED_TOKEN_HEADER = "x-callback-token"  # noqa: S105 - a header name
#: Bodies up to this size stay in memory while spooled; bigger ones go to a file in ``spool_dir``.
SPOOL_IN_MEMORY_BYTES = 1024 * 1024
RETRY_AFTER_S = 5
#: Database connections per worker process, and the number of callbacks it writes at the same time.
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

T = TypeVar("T")


class CallbackRejected(Exception):
    """Answer the sender with ``status_code`` and a short JSON error; nothing is stored."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


@functools.cache
def _database_threads() -> anyio.CapacityLimiter:
    """One limiter per worker process (made lazily: it must be created inside the running event loop)."""
    return anyio.CapacityLimiter(DB_CONNECTIONS)


def _database_unavailable() -> CallbackRejected:
    return CallbackRejected(503, "database unavailable, retry later", {"Retry-After": str(RETRY_AFTER_S)})


async def _in_thread(engine_call: Callable[..., T], *args: Any) -> T:
    """Run blocking database work off the event loop; a database that does not answer becomes a 503.

    At most :data:`DB_CONNECTIONS` calls run at once (the pool's size): more would only queue inside
    the database for the same two cores, and a pool with overflow opens and closes a connection per
    callback under load (a fork and a login on the server each time).
    """
    try:
        return await anyio.to_thread.run_sync(
            functools.partial(engine_call, *args), limiter=_database_threads()
        )
    except (OperationalError, InterfaceError, PoolTimeoutError) as exc:
        log.warning("database unavailable: %s", type(exc.orig if hasattr(exc, "orig") else exc).__name__)
        raise _database_unavailable() from None


def mask_path(path: str) -> str:
    """The path with callback tokens replaced by ``***`` (keeps the request id of per-request URLs)."""
    if not path.startswith(CALLBACK_PATH + "/"):
        return path
    parts = path[len(CALLBACK_PATH) + 1 :].split("/")
    masked = [parts[0], "***"] if len(parts) >= 2 else ["***"]
    return f"{CALLBACK_PATH}/{'/'.join(masked)}"


class AccessLog:
    """ASGI middleware: one JSON access-log line per HTTP request, token masked, body size counted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        bytes_in = 0

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            client = scope.get("client")
            access_log.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": mask_path(scope["path"]),
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                        "bytes_in": bytes_in,
                        "client": client[0] if client else None,
                    }
                )
            )


async def spool_body(request: Request, settings: ReceiverSettings) -> IO[bytes]:
    """Stream the request body into a spool file, enforcing the size and idle-time limits.

    Hashing happens later, in the worker thread (:meth:`landing.CallbackBody.from_file`): ``hashlib``
    releases the GIL on big buffers, and getting it back in the event loop stalls every other request.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise CallbackRejected(413, f"body larger than {settings.max_body_bytes} bytes")
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES, dir=str(settings.spool_dir))  # noqa: SIM115
    size = 0
    chunks = request.stream().__aiter__()
    try:
        while True:
            with anyio.fail_after(settings.body_timeout_s):
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise CallbackRejected(413, f"body larger than {settings.max_body_bytes} bytes")
            spool.write(chunk)
        if size == 0:
            raise CallbackRejected(400, "empty body")
    except TimeoutError:
        spool.close()
        raise CallbackRejected(408, f"no body data for {settings.body_timeout_s:g} s") from None
    except ClientDisconnect:
        spool.close()
        raise CallbackRejected(400, "client disconnected before the body was complete") from None
    except BaseException:
        spool.close()
        raise
    return spool


def _stored_headers(request: Request) -> dict[str, str]:
    return {
        name: request.headers[name].replace("\x00", "") for name in STORED_HEADERS if name in request.headers
    }


def _ingest(
    engine: Engine,
    write_lock: AbstractContextManager[Any],
    request_id: str,
    spool: IO[bytes],
    request: Request,
    unique_id: str | None,
) -> landing.StoredCallback:
    body = landing.CallbackBody.from_file(spool)
    content_type = request.headers.get("content-type")
    unique_id = unique_id or find_unique_id(body.file, content_type)
    state = parse_state(body.file, body.size, content_type)
    with write_lock:
        return landing.store_callback(
            engine,
            request_id,
            body,
            content_type=content_type.replace("\x00", "") if content_type else None,
            unique_id=unique_id,
            client_addr=request.client.host if request.client else None,
            headers=_stored_headers(request),
            parse_state=state,
        )


def _stored_response(result: landing.StoredCallback) -> JSONResponse:
    status = "duplicate" if result.duplicate else "stored"
    return JSONResponse({"status": status, "payload_id": result.payload_id, "late": result.late})


def _engine_for(settings: ReceiverSettings) -> Engine:
    url = to_sqlalchemy_url(settings.database_url)
    extra: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # No pre-ping (two extra round trips per callback): a connection that died answers 503 once,
        # is dropped from the pool, and the sender's retry gets a fresh one.
        extra = {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": False}
    # Exactly as many connections as database threads (see _in_thread): none is opened per callback.
    return create_db_engine(
        url, pool_size=DB_CONNECTIONS, max_overflow=0, pool_timeout=10, hide_parameters=True, **extra
    )


def create_app(settings: ReceiverSettings) -> FastAPI:
    """The receiver as an ASGI app bound to ``settings`` (one engine per app, disposed at shutdown)."""
    engine = _engine_for(settings)
    # SQLite has one writer at a time: queueing writers on a lock here is fairer and faster than letting
    # them poll SQLite's busy handler (its back-off sleeps up to 100 ms, which is what p99 would show).
    write_lock: AbstractContextManager[Any] = (
        threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
    )
    settings.spool_dir.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="cloudagent-etl callback receiver",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(AccessLog)

    @app.exception_handler(CallbackRejected)
    async def rejected(_request: Request, exc: CallbackRejected) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=exc.headers)

    async def ingest(request: Request, request_id: str, unique_id: str | None) -> JSONResponse:
        spool = await spool_body(request, settings)
        try:
            result = await _in_thread(_ingest, engine, write_lock, request_id, spool, request, unique_id)
        finally:
            spool.close()
        return _stored_response(result)

    @app.post(CALLBACK_PATH + "/{request_id}/{token}")
    async def per_request_callback(request: Request, request_id: str, token: str) -> JSONResponse:
        check = await _in_thread(landing.verify_callback_token, engine, request_id, token)
        if check is landing.TokenCheck.UNKNOWN_REQUEST:
            raise CallbackRejected(404, "unknown request")
        if check is landing.TokenCheck.WRONG_TOKEN:
            raise CallbackRejected(401, "invalid token")
        return await ingest(request, request_id, None)

    async def shared_token_callback(request: Request, token: str | None) -> JSONResponse:
        if settings.shared_token is None:
            raise CallbackRejected(404, "the fixed callback URL is not enabled")
        expected = hashlib.sha256(settings.shared_token.get().encode()).digest()
        given = hashlib.sha256((token or "").encode("utf-8", errors="replace")).digest()
        if not hmac.compare_digest(expected, given):
            raise CallbackRejected(401, "invalid token")
        spool = await spool_body(request, settings)
        try:
            unique_id = await anyio.to_thread.run_sync(
                find_unique_id, spool, request.headers.get("content-type")
            )
            if unique_id is None:
                raise CallbackRejected(422, "no uniqueId in the body: cannot tell which request it answers")
            deadline = time.monotonic() + settings.unique_id_wait_s
            while (
                request_id := await _in_thread(landing.find_request_by_unique_id, engine, unique_id)
            ) is None:
                if time.monotonic() >= deadline:
                    raise CallbackRejected(404, "unknown uniqueId")
                await anyio.sleep(0.25)
            result = await _in_thread(_ingest, engine, write_lock, request_id, spool, request, unique_id)
        finally:
            spool.close()
        return _stored_response(result)

    @app.post(CALLBACK_PATH)
    async def fixed_url_callback(request: Request) -> JSONResponse:
        return await shared_token_callback(request, request.headers.get(SHARED_TOKEN_HEADER))

    @app.post(CALLBACK_PATH + "/{token}")
    async def fixed_url_callback_token_in_path(request: Request, token: str) -> JSONResponse:
        return await shared_token_callback(request, token)

    def landing_answers() -> bool:
        with engine.connect() as conn:
            conn.execute(select(export_requests.c.request_id).limit(1)).all()
        return True

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await anyio.to_thread.run_sync(landing_answers, limiter=_database_threads())
        except SQLAlchemyError as exc:
            log.warning("health check failed: %s", type(exc).__name__)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return app


def create_app_from_env() -> FastAPI:
    """App factory for uvicorn (``--factory``): settings from the environment of each worker process."""
    return create_app(ReceiverSettings.from_env())
