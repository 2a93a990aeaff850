"""Callback tokens: each request's URL carries a random token of its own; only its SHA-256 is stored.

The receiver checks a token in constant time (:func:`verify_callback_token`) before it reads a byte of the
body. A request that settled (loaded, failed, expired) longer ago than the late-callback grace period is
closed: its URL is not a write capability for ever.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import timedelta
from enum import Enum, auto
from typing import Any

from sqlalchemy import Engine, bindparam, select

from cloudagent_etl.landing.schema import RequestState, export_requests, now

AUTOCOMMIT = "AUTOCOMMIT"


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a callback token: what ``export_requests`` stores instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenCheck(Enum):
    VALID = auto()
    UNKNOWN_REQUEST = auto()
    WRONG_TOKEN = auto()
    #: The token is right but the request settled longer ago than the late-callback grace period.
    CLOSED = auto()


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


_SETTLED_AT = {
    RequestState.LOADED: export_requests.c.loaded_at,
    RequestState.FAILED: export_requests.c.failed_at,
    RequestState.EXPIRED: export_requests.c.expired_at,
}
_TOKEN_HASH = select(
    export_requests.c.callback_token_sha256, export_requests.c.state, *_SETTLED_AT.values()
).where(export_requests.c.request_id == bindparam("request_id"))


def _closed(row: Any, late_grace: timedelta) -> bool:
    """Whether a request (a row of :data:`_TOKEN_HASH`) settled longer than ``late_grace`` ago."""
    column = _SETTLED_AT.get(RequestState(row.state))
    settled_at = None if column is None else row._mapping[column.name]
    return settled_at is not None and now() - settled_at > late_grace


def verify_callback_token(
    engine: Engine, request_id: str, token: str, late_grace: timedelta | None = None
) -> TokenCheck:
    """Check a per-request callback token against the stored hash, in constant time.

    Anything that is not one of our UUIDs is an unknown request without a database round trip, so
    odd path values (NUL bytes, megabytes of text) never reach SQL. One read outside a transaction: no
    BEGIN and ROLLBACK round trips around it. With ``late_grace``, a request that was loaded, failed or
    expired longer ago than that is :attr:`TokenCheck.CLOSED`: a callback URL is not a write capability
    for ever.
    """
    if not _is_uuid(request_id):
        return TokenCheck.UNKNOWN_REQUEST
    with engine.connect().execution_options(isolation_level=AUTOCOMMIT) as conn:
        row = conn.execute(_TOKEN_HASH, {"request_id": request_id}).one_or_none()
    if row is None:
        return TokenCheck.UNKNOWN_REQUEST
    if not hmac.compare_digest(token_sha256(token), row.callback_token_sha256):
        return TokenCheck.WRONG_TOKEN
    if late_grace is not None and _closed(row, late_grace):
        return TokenCheck.CLOSED
    return TokenCheck.VALID


def closed_for_callbacks(engine: Engine, request_id: str, late_grace: timedelta) -> bool:
    """Whether the request settled (loaded, failed, expired) longer than ``late_grace`` ago."""
    with engine.connect().execution_options(isolation_level=AUTOCOMMIT) as conn:
        row = conn.execute(_TOKEN_HASH, {"request_id": request_id}).one_or_none()
    return row is not None and _closed(row, late_grace)
