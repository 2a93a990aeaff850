"""Who answers a callback URL: a secret of this database that only a receiver writing to it can use.

A preflight asks ``GET {CLOUDAGENT_CALLBACK_BASE_URL}/healthz?probe=<nonce>``; our receiver answers with
``HMAC-SHA256(secret, nonce)``, the secret being the one row of ``installation`` in the database it writes
to. The preflight reads the same row and compares. A dead URL, a proxy that answers but forwards
elsewhere, and another installation's receiver (another database) all fail, and the secret itself is
never sent. The row is created by whoever needs it first (``INSERT ... ON CONFLICT DO NOTHING``, so two
processes agree on one secret).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from sqlalchemy import Column, Engine, Integer, Table, Text, select

from cloudagent_etl.databases import database_for
from cloudagent_etl.sqltypes import UtcDateTime, metadata

#: Query parameter of ``/healthz`` carrying the preflight's nonce.
PROBE_PARAMETER = "probe"
#: Longest nonce the receiver answers.
MAX_NONCE_CHARS = 128

installation = Table(
    "installation",
    metadata,
    Column("installation_id", Integer, primary_key=True, autoincrement=False, comment="always 1"),
    Column("probe_secret", Text, nullable=False, comment="HMAC key of the callback-URL probe; never shown"),
    Column("created_at", UtcDateTime, nullable=False),
)


def probe_secret(engine: Engine) -> bytes:
    """This database's probe secret, created on first use."""
    row = {"installation_id": 1, "probe_secret": secrets.token_hex(32), "created_at": datetime.now(UTC)}
    with engine.begin() as conn:
        conn.execute(database_for(engine).insert_ignoring_conflicts(installation).values(row))
        stored = conn.execute(
            select(installation.c.probe_secret).where(installation.c.installation_id == 1)
        ).scalar_one()
    return str(stored).encode()


def probe_answer(secret: bytes, nonce: str) -> str:
    """The answer to nonce ``nonce`` of a receiver whose database holds ``secret``."""
    return hmac.new(secret, nonce.encode(), hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def answers_match(expected: str, answered: object) -> bool:
    return isinstance(answered, str) and hmac.compare_digest(expected, answered)
