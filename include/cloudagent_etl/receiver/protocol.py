"""The receiver's HTTP/1.1 connection handling: uvicorn's httptools protocol with the limits it lacks.

uvicorn (0.54, httptools parser) bounds neither the size of a request head nor the time it may take, does
not time out a connection that never sends a request, and accepts connections until the process runs
out of file descriptors. :class:`ReceiverProtocol` adds, per connection (settings in
:class:`~cloudagent_etl.settings.ReceiverSettings`):

- **head size**: request line plus headers at most ``max_header_bytes`` (431, or 414 for the request
  line alone) and at most ``max_headers`` headers (431). Bytes are counted as they arrive, so a head that
  never ends is refused after ``max_header_bytes`` plus one read (at most 256 KiB), not buffered;
- **head time**: from the first byte of a request to the end of its headers at most
  ``header_timeout_s`` (408, and the connection closed at once), however slowly the bytes trickle in;
- **idle time**: a connection with no request in progress (new, or between keep-alive requests) is
  closed after ``idle_timeout_s``;
- **connections**: at most ``max_connections`` open per worker, fewer if the open-file limit demands
  it (:func:`connection_cap`). A connection beyond the cap closes the connection that has been idle
  longest; if every other connection has a request in progress, the new one is answered 503 and closed;
- **closing after an answer** (RFC 9112 §9.6): a response sent before the request body was all read (a
  401, 404, 410, 413, a 503 while spooling) carries ``Connection: close``, and every close that follows
  a response, ours or uvicorn's, is graceful (:meth:`ReceiverProtocol.close_gracefully`): the answer is
  flushed, the write side half-closed, and what the sender still sends is read and discarded until it
  closes, at most ``drain_max_bytes`` and ``drain_timeout_s`` (and ``idle_timeout_s`` of silence); only
  the head timeout's 408 closes at once. A plain close would leave unread bytes in the socket, and the
  kernel answers those with a reset that destroys the answer for a sender still sending its body
  (Python's http.client, Java's clients).

The body's own limits (size, idle and total time) are the app's (:meth:`Exchange.spool_body`). Refusals
made here never reach the app; they are logged as access lines with no path.
"""

from __future__ import annotations

import asyncio
import http
import logging
import resource
import time
import weakref
from collections.abc import Coroutine
from functools import cache
from typing import Any

import httptools
import orjson
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from cloudagent_etl.receiver.app import RETRY_AFTER_S
from cloudagent_etl.settings import ReceiverSettings

log = logging.getLogger(__name__)
access_log = logging.getLogger("cloudagent_etl.receiver.access")

#: File descriptors kept free for everything that is not a connection: the database pool, SQLite's
#: files, the listening socket, the log, the event loop.
RESERVED_FILES = 64


_CONNECTION_CLOSE = (b"connection", b"close")
_cycle_send = RequestResponseCycle.send


class _CycleTransport:
    """The connection's transport as uvicorn's request cycle sees it: closing it closes gracefully.

    The cycle closes the connection after an answer whose ``Connection: close`` ends it; that close
    must not reset the connection (see :meth:`ReceiverProtocol.close_gracefully`). Once the connection
    is draining it counts as closing, so the cycle writes nothing more (no ``100 Continue``; a cycle
    still running then was marked disconnected). ``write`` is the transport's own (one call per write).
    """

    __slots__ = ("_protocol", "write")

    def __init__(self, protocol: ReceiverProtocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self.write = transport.write

    def is_closing(self) -> bool:
        return self._protocol.draining or self._protocol.transport.is_closing()

    def close(self) -> None:
        self._protocol.close_gracefully()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol.transport, name)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the protocol answers ``_refusal``."""


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered so that each connection plus one spool file fits the open-file limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, (soft - RESERVED_FILES) // 2))


@cache
def _settings() -> ReceiverSettings:
    """The worker's settings (uvicorn builds protocols from a class, so they come from the environment)."""
    return ReceiverSettings.from_env()


@cache
def _cap() -> int:
    return connection_cap(_settings().max_connections)


class ReceiverProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded heads, head and idle timeouts and a connection cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = _settings()
        self.idle_since = time.monotonic()
        self._head_open = False
        self._head_bytes = 0
        self._head_size = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] = (400, "invalid HTTP request")
        #: Set once the answer is flushed and the write side half-closed: what arrives is discarded.
        self.draining = False
        self._drained = 0
        self._drain_deadline = 0.0
        self._drain_last = 0.0
        self._drain_timer: asyncio.TimerHandle | None = None
        self._cycle_transport: _CycleTransport | None = None

    # ------------------------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._cycle_transport = _CycleTransport(self, transport)
        # uvicorn arms its keep-alive timer only after a response: a connection that never sends a
        # request would stay open for ever.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.limits.idle_timeout_s, self.timeout_keep_alive_handler
        )
        if len(self.connections) > _cap():
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_drain_timer()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """Server shutdown: a connection that is only draining closes now rather than hold shutdown up."""
        if self.draining:
            self.transport.close()
            return
        super().shutdown()

    @property
    def is_idle(self) -> bool:
        """No request is being handled: the connection is new, between requests, or sending a head."""
        return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

    def _make_room(self) -> None:
        idle = [
            other
            for other in self.connections
            if other is not self and isinstance(other, ReceiverProtocol) and other.is_idle
        ]
        if idle:
            longest = min(idle, key=lambda other: other.idle_since)
            log.warning("connection cap %d reached: closing the connection idle longest", _cap())
            longest.transport.close()
            return
        log.warning("connection cap %d reached and every connection is busy: refusing one", _cap())
        self._refuse(503, "too many connections, retry later", retry_after=True)

    # ------------------------------------------------------------------------------------------ head
    def data_received(self, data: bytes) -> None:
        if self.draining:
            self._discard(data)
            return
        self._unset_keepalive_if_required()
        head_was_open = self._head_open
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Refused):
                self._refusal = (400, "invalid HTTP request")
            self._refuse(*self._refusal)
            return
        if self._head_open:
            # Bytes of a head still incomplete (a head begun in this very piece is counted from the next)
            self._head_bytes += len(data) if head_was_open else 0
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"request head larger than {self.limits.max_header_bytes} bytes")
        elif self.is_idle and self.timeout_keep_alive_task is None and not self.transport.is_closing():
            # Bytes that began no request (blank lines): the idle deadline still runs from when it began.
            remaining = self.limits.idle_timeout_s - (time.monotonic() - self.idle_since)
            self.timeout_keep_alive_task = self.loop.call_later(
                max(0.0, remaining), self.timeout_keep_alive_handler
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_bytes = self._head_size = self._header_count = 0
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)
        if self._head_size > self.limits.max_header_bytes:
            self._stop(414, f"request target longer than {self.limits.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            self._stop(431, f"more than {self.limits.max_headers} request headers")
        if self._head_size > self.limits.max_header_bytes:
            self._stop(431, f"request head larger than {self.limits.max_header_bytes} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._cancel_head_timer()
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is previous or cycle is None:
            return  # an upgrade request: no cycle was made
        # The cycle closes the connection (after a ``Connection: close`` answer, a 500, a client's own
        # ``Connection: close``) through this transport, whose close is graceful.
        cycle.transport = self._cycle_transport  # type: ignore[assignment]
        # The wrapper holds its cycle weakly: a strong reference (or the bound ``cycle.send``) from an
        # attribute of the cycle would make a reference cycle, and every request's cycle, its body
        # buffer included, would wait for the garbage collector (measured: 5 µs a request).
        cycle_ref = weakref.ref(cycle)

        def send_closing_when_unread(message: ASGISendEvent) -> Coroutine[Any, Any, None]:
            # A plain function returning uvicorn's own coroutine: no extra coroutine per message.
            cycle = cycle_ref()
            assert cycle is not None  # its app is running, so run_asgi holds it
            if message["type"] == "http.response.start" and cycle.more_body:
                # Answered before the body was all read: this connection cannot carry another request.
                headers = [*message.get("headers", ()), _CONNECTION_CLOSE]
                message = {**message, "headers": headers}
            return _cycle_send(cycle, message)

        cycle.send = send_closing_when_unread  # type: ignore[method-assign]

    def _stop(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Refused(message)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_open:
            # At once, not gracefully: waiting on the bytes of a sender too slow to send a head is what
            # this timeout refuses (a slowloris would otherwise keep the connection for the drain time).
            message = f"request head not received within {self.limits.header_timeout_s:g} s"
            self._refuse(408, message, graceful=False)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    # -------------------------------------------------------------------------------------- response
    def on_response_complete(self) -> None:
        self.idle_since = time.monotonic()
        if self.draining or (self.cycle is not None and self.cycle.more_body):
            # Answered before the body was read (``Connection: close`` was sent): no further request.
            self.server_state.total_requests += 1
            self.close_gracefully()
            return
        super().on_response_complete()

    def close_gracefully(self) -> None:
        """Close after an answer without destroying it (RFC 9112 §9.6).

        Flush the answer and half-close the write side (the sender reads the answer, then end of stream),
        then read and discard whatever the sender still sends until it closes its side. Closing with
        unread bytes would make the kernel reset the connection, and a sender still writing its body
        would get that reset instead of the answer. Bounded: ``drain_max_bytes`` discarded, at most
        ``drain_timeout_s``, and ``idle_timeout_s`` without a byte; then the connection is closed.
        """
        if self.draining or self.transport.is_closing():
            return
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        self._head_open = False
        self.pipeline.clear()  # requests sent after this one are never answered: the close says so
        if self.cycle is not None and not self.cycle.response_complete:
            # Refused while a request was in progress (e.g. its successor's head was too large): its
            # app sees a disconnect and its answer is dropped, as when the connection is lost.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if not self.transport.can_write_eof():  # TLS straight to uvicorn: no half-close to make
            self.transport.close()
            return
        self.draining = True
        self.transport.write_eof()  # after the buffered answer
        self.flow.resume_reading()
        now = time.monotonic()
        self._drain_deadline = now + self.limits.drain_timeout_s
        self._drain_last = now
        self._drain_timer = self.loop.call_later(
            min(self.limits.idle_timeout_s, self.limits.drain_timeout_s), self._drain_check
        )

    def _discard(self, data: bytes) -> None:
        self._drained += len(data)
        self._drain_last = time.monotonic()
        if self._drained > self.limits.drain_max_bytes:
            self._end_drain(f"sender still sending after {self.limits.drain_max_bytes} bytes discarded")

    def _drain_check(self) -> None:
        self._drain_timer = None
        now = time.monotonic()
        if now >= self._drain_deadline:
            self._end_drain(f"sender still connected after {self.limits.drain_timeout_s:g} s")
        elif now - self._drain_last >= self.limits.idle_timeout_s:
            self.transport.close()  # quiet for the idle timeout: nothing unread, so a clean close
        else:
            wake = min(self._drain_deadline, self._drain_last + self.limits.idle_timeout_s)
            self._drain_timer = self.loop.call_later(wake - now, self._drain_check)

    def _end_drain(self, reason: str) -> None:
        """A drain bound was reached: close; unread bytes may make the kernel reset the connection."""
        self._cancel_drain_timer()
        client = self.client[0] if self.client else None
        log.info("closing the connection of %s after its answer: %s", client, reason)
        self.transport.close()

    def _cancel_drain_timer(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _refuse(self, status: int, message: str, *, retry_after: bool = False, graceful: bool = True) -> None:
        """Answer ``status`` outside the app, close the connection (gracefully unless told otherwise), and
        log it as an access line."""
        self._cancel_head_timer()
        self._head_open = False
        if self.transport.is_closing() or self.draining:  # already answered: nothing more may be written
            return
        content = orjson.dumps({"error": message})
        head = [
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
            "content-type: application/json",
            f"content-length: {len(content)}",
            "connection: close",
        ]
        if retry_after:
            head.append(f"retry-after: {RETRY_AFTER_S}")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + content)
        if graceful:
            self.close_gracefully()
        else:
            self.transport.close()
        if access_log.isEnabledFor(logging.INFO):
            line = {"method": None, "path": None, "status": status, "error": message}
            access_log.info(
                orjson.dumps({**line, "client": self.client[0] if self.client else None}).decode()
            )
