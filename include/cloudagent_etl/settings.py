"""Typed settings, read at call time from the environment or an Airflow connection's parts.

Nothing here is read at import time: DAG parsing and tests must be able to set the environment first.
Connection extras are read through an allow-list (as Airflow's own providers do), never passed through.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloudagent_etl.errors import ConfigurationError

#: The Airflow connection of the CloudAgent account of a one-account deployment.
DEFAULT_CONNECTION = "cloudagent_default"
DEFAULT_BASE_URL = "https://in1-ccaas-api.ozonetel.com"
DEFAULT_ENDPOINT = "/endpoint/dailer/data/preview/download"
DEFAULT_TIMEZONE = "Asia/Kolkata"
DEFAULT_RATE_LIMIT_PER_MINUTE = 10
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_BODY_BYTES = 512 * 1024 * 1024
#: After an answer sent before the body was read, the rest of the body is read and discarded up to this
#: many bytes, so that the sender reads the answer before the connection closes: the rest of any body up
#: to twice the size limit (a sender of a body that is too large reads its 413 too).
DEFAULT_DRAIN_MAX_BYTES = 2 * DEFAULT_MAX_BODY_BYTES
#: Record times before this are refused by the load (a year-0 or 0001 date is not a CloudAgent time).
DEFAULT_EARLIEST_RECORD_TIME = datetime(2000, 1, 1, tzinfo=UTC)
#: Record times more than this after the load's start are refused (9999-12-31 would pin a lead forever).
DEFAULT_FUTURE_TOLERANCE = timedelta(days=1)

#: Connection extras that are read; anything else in ``extra`` is ignored.
ALLOWED_CONNECTION_EXTRAS = frozenset(
    {"endpoint", "api_key_in", "timezone", "rate_limit_per_minute", "timeout_s"}
)


class Secret:
    """A string that never shows itself in a repr, str, log line or traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class ApiSettings:
    """How to reach one CloudAgent account (the Airflow connection ``cloudagent_default``)."""

    user_name: str
    api_key: Secret = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    endpoint: str = DEFAULT_ENDPOINT
    api_key_in: Literal["header", "body"] = "header"
    timezone: str = DEFAULT_TIMEZONE
    rate_limit_per_minute: int = DEFAULT_RATE_LIMIT_PER_MINUTE
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.user_name.strip():
            raise ConfigurationError("CloudAgent userName (connection login) is empty")
        if not self.api_key.get().strip():
            raise ConfigurationError("CloudAgent apiKey (connection password) is empty")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"CloudAgent base URL must start with http:// or https://: {self.base_url!r}"
            )
        if self.api_key_in not in ("header", "body"):
            raise ConfigurationError(f"api_key_in must be 'header' or 'body', not {self.api_key_in!r}")
        if self.rate_limit_per_minute < 1:
            raise ConfigurationError("rate_limit_per_minute must be at least 1")
        if self.timeout_s <= 0:
            raise ConfigurationError("timeout_s must be positive")
        zone(self.timezone)

    @classmethod
    def from_connection(
        cls, host: str | None, login: str | None, password: str | None, extra: Mapping[str, Any] | None
    ) -> ApiSettings:
        """Build settings from a connection: host = base URL, login = userName, password = apiKey."""
        extras = {key: value for key, value in (extra or {}).items() if key in ALLOWED_CONNECTION_EXTRAS}
        try:
            return cls(
                user_name=login or "",
                api_key=Secret(password or ""),
                base_url=(host or DEFAULT_BASE_URL).rstrip("/"),
                endpoint=str(extras.get("endpoint", DEFAULT_ENDPOINT)),
                api_key_in=extras.get("api_key_in", "header"),
                timezone=str(extras.get("timezone", DEFAULT_TIMEZONE)),
                rate_limit_per_minute=int(extras.get("rate_limit_per_minute", DEFAULT_RATE_LIMIT_PER_MINUTE)),
                timeout_s=float(extras.get("timeout_s", DEFAULT_TIMEOUT_S)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid cloudagent connection extra: {exc}") from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        """Settings for the CLI: ``CLOUDAGENT_API_BASE_URL``, ``_USER``, ``_KEY`` and the extras' names."""
        return cls.from_connection(*api_connection_from_env(env))


#: The environment variables that stand for the API connection's host, login and password.
API_ENV_VARIABLES = {
    "host": "CLOUDAGENT_API_BASE_URL",
    "login": "CLOUDAGENT_API_USER",
    "password": "CLOUDAGENT_API_KEY",
}


def api_connection_from_env(
    env: Mapping[str, str] | None = None,
) -> tuple[str | None, str | None, str | None, dict[str, str]]:
    """The API connection's parts (host, login, password, extras) as the environment gives them:
    :data:`API_ENV_VARIABLES`, and ``CLOUDAGENT_API_<EXTRA>`` for each allow-listed extra."""
    env = os.environ if env is None else env
    extras = {
        name: env[f"CLOUDAGENT_API_{name.upper()}"]
        for name in ALLOWED_CONNECTION_EXTRAS
        if f"CLOUDAGENT_API_{name.upper()}" in env
    }
    host, login, password = (env.get(API_ENV_VARIABLES[part]) for part in ("host", "login", "password"))
    return host, login, password, extras


def airflow_connection_from_env(
    conn_id: str, env: Mapping[str, str] | None = None
) -> tuple[str | None, str | None, str | None, str | None, dict[str, Any]] | None:
    """Connection ``conn_id`` as Airflow reads it from ``AIRFLOW_CONN_<ID>`` (its JSON form, or a URI):
    (type, host, login, password, extras), or None when the variable is not set. For ``cloudagent-etl
    doctor``, which sees what the Airflow processes of the same environment see, without Airflow."""
    env = os.environ if env is None else env
    raw = env.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if raw is None:
        return None
    if raw.lstrip().startswith("{"):
        try:
            parts = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"AIRFLOW_CONN_{conn_id.upper()} is not valid JSON: {exc}") from None
        extra = parts.get("extra") or {}
        extra = json.loads(extra) if isinstance(extra, str) else extra
        return parts.get("conn_type"), parts.get("host"), parts.get("login"), parts.get("password"), extra
    url = urlsplit(raw)
    extra = dict(parse_qsl(url.query))
    return (
        url.scheme.replace("-", "_"),
        unquote(url.hostname or "") or None,
        url.username,
        url.password,
        extra,
    )


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``, or a ConfigurationError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"unknown time zone {name!r}") from None


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Folder for the embedded SQLite database and spool files (``CLOUDAGENT_DATA_DIR``, default ./data)."""
    env = os.environ if env is None else env
    return Path(env.get("CLOUDAGENT_DATA_DIR", "data")).absolute()


def database_url(env: Mapping[str, str] | None = None) -> str:
    """``CLOUDAGENT_DB_URL``, or the embedded default: a SQLite file in the data folder."""
    env = os.environ if env is None else env
    url = env.get("CLOUDAGENT_DB_URL")
    if url:
        return url
    return f"sqlite:///{data_dir(env) / 'cloudagent.db'}"


def callback_base_url(env: Mapping[str, str] | None = None) -> str:
    """Public base URL of the callback receiver (``CLOUDAGENT_CALLBACK_BASE_URL``)."""
    env = os.environ if env is None else env
    url = env.get("CLOUDAGENT_CALLBACK_BASE_URL", "")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(
            "CLOUDAGENT_CALLBACK_BASE_URL must be set to the receiver's public http(s) URL"
        )
    return url.rstrip("/")


#: Every limit of the callback receiver: (field, environment variable, default, what it bounds). The
#: README's receiver section lists the same table; a test keeps the two in step.
RECEIVER_LIMITS: tuple[tuple[str, str, float, str], ...] = (
    ("max_body_bytes", "CLOUDAGENT_RECEIVER_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, "body size, decoded"),
    ("max_header_bytes", "CLOUDAGENT_RECEIVER_MAX_HEADER_BYTES", 16 * 1024, "request line + headers"),
    ("max_headers", "CLOUDAGENT_RECEIVER_MAX_HEADERS", 100, "number of request headers"),
    ("header_timeout_s", "CLOUDAGENT_RECEIVER_HEADER_TIMEOUT_S", 10.0, "first byte to end of headers"),
    ("idle_timeout_s", "CLOUDAGENT_RECEIVER_IDLE_TIMEOUT_S", 5.0, "idle connection before a request"),
    ("body_timeout_s", "CLOUDAGENT_RECEIVER_BODY_TIMEOUT_S", 60.0, "wait for the next piece of a body"),
    ("body_deadline_s", "CLOUDAGENT_RECEIVER_BODY_DEADLINE_S", 600.0, "whole body, first to last byte"),
    ("max_connections", "CLOUDAGENT_RECEIVER_MAX_CONNECTIONS", 512, "open connections per worker"),
    ("max_inflate_ratio", "CLOUDAGENT_RECEIVER_MAX_INFLATE_RATIO", 100, "decoded / encoded size of a body"),
    ("late_grace_s", "CLOUDAGENT_RECEIVER_LATE_GRACE_S", 7 * 24 * 3600.0, "late callbacks after settling"),
    ("spool_min_free_bytes", "CLOUDAGENT_RECEIVER_SPOOL_MIN_FREE_BYTES", 64 * 1024 * 1024, "spool room"),
    ("unique_id_wait_s", "CLOUDAGENT_RECEIVER_UNIQUE_ID_WAIT_S", 5.0, "fixed URL: unknown uniqueId"),
    (
        "drain_max_bytes",
        "CLOUDAGENT_RECEIVER_DRAIN_MAX_BYTES",
        DEFAULT_DRAIN_MAX_BYTES,
        "unread body, early answer",
    ),
    ("drain_timeout_s", "CLOUDAGENT_RECEIVER_DRAIN_TIMEOUT_S", 30.0, "graceful close after an early answer"),
)
_LIMIT_DEFAULTS = {name: default for name, _variable, default, _meaning in RECEIVER_LIMITS}


@dataclass(frozen=True)
class ReceiverSettings:
    """Settings of the callback receiver, from ``CLOUDAGENT_RECEIVER_*`` and ``CLOUDAGENT_CALLBACK_TOKEN``.

    The limits and their defaults are :data:`RECEIVER_LIMITS`; each must be positive.
    """

    database_url: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Request line plus headers, in bytes: larger heads get 431 (414 for the request line alone).
    max_header_bytes: int = int(_LIMIT_DEFAULTS["max_header_bytes"])
    max_headers: int = int(_LIMIT_DEFAULTS["max_headers"])
    #: From the first byte of a request to the end of its headers (then 408 and the connection closed).
    header_timeout_s: float = _LIMIT_DEFAULTS["header_timeout_s"]
    #: A connection with no request in progress is closed after this long (keep-alive and new ones).
    idle_timeout_s: float = _LIMIT_DEFAULTS["idle_timeout_s"]
    #: Longest wait for the next piece of a body (then 408).
    body_timeout_s: float = _LIMIT_DEFAULTS["body_timeout_s"]
    #: Longest time for a whole body, however steadily it trickles in (then 408).
    body_deadline_s: float = _LIMIT_DEFAULTS["body_deadline_s"]
    #: Open connections per worker; lowered to what the open-file limit allows.
    max_connections: int = int(_LIMIT_DEFAULTS["max_connections"])
    #: A gzip/deflate body may inflate at most this many times its encoded size (then 413).
    max_inflate_ratio: int = int(_LIMIT_DEFAULTS["max_inflate_ratio"])
    #: How long after its request was loaded, failed or expired a callback is still stored (then 410).
    late_grace_s: float = _LIMIT_DEFAULTS["late_grace_s"]
    #: ``/healthz`` answers 503 when the spool folder has less free space than this.
    spool_min_free_bytes: int = int(_LIMIT_DEFAULTS["spool_min_free_bytes"])
    shared_token: Secret | None = field(default=None, repr=False)
    spool_dir: Path = field(default_factory=lambda: data_dir() / "spool")
    #: How long the fixed callback URL keeps looking for an unknown ``uniqueId`` before answering 404.
    unique_id_wait_s: float = _LIMIT_DEFAULTS["unique_id_wait_s"]
    #: After an answer sent before the whole body was read (``Connection: close``), the rest of the body is
    #: read and discarded up to this many bytes before the connection closes (RFC 9112 §9.6) ...
    drain_max_bytes: int = int(_LIMIT_DEFAULTS["drain_max_bytes"])
    #: ... and for at most this long (a sender quiet for ``idle_timeout_s`` meanwhile ends it sooner).
    drain_timeout_s: float = _LIMIT_DEFAULTS["drain_timeout_s"]

    def __post_init__(self) -> None:
        for name, variable, _default, _meaning in RECEIVER_LIMITS:
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{variable} must be positive, not {getattr(self, name)!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReceiverSettings:
        env = os.environ if env is None else env
        token = env.get("CLOUDAGENT_CALLBACK_TOKEN")
        limits: dict[str, Any] = {}
        for name, variable, default, _meaning in RECEIVER_LIMITS:
            text = env.get(variable)
            if text is None or text == "":
                continue
            try:
                limits[name] = type(default)(float(text)) if isinstance(default, int) else float(text)
            except ValueError:
                raise ConfigurationError(f"invalid receiver setting {variable}={text!r}") from None
            if isinstance(default, int) and limits[name] != float(text):
                raise ConfigurationError(f"{variable} must be a whole number, not {text!r}")
        return cls(
            database_url=database_url(env),
            shared_token=Secret(token) if token else None,
            spool_dir=Path(env.get("CLOUDAGENT_RECEIVER_SPOOL_DIR", str(data_dir(env) / "spool"))),
            **limits,
        )


@dataclass(frozen=True)
class LoadSettings:
    """Bounds of the record times a load accepts: ``CLOUDAGENT_LOAD_EARLIEST_TIME`` (an ISO date or
    date-time, UTC unless it has an offset) and ``CLOUDAGENT_LOAD_FUTURE_TOLERANCE_HOURS``."""

    earliest_time: datetime = DEFAULT_EARLIEST_RECORD_TIME
    future_tolerance: timedelta = DEFAULT_FUTURE_TOLERANCE

    def __post_init__(self) -> None:
        if self.earliest_time.tzinfo is None:
            raise ConfigurationError("the earliest record time must be timezone-aware")
        if self.future_tolerance < timedelta(0):
            raise ConfigurationError("the future tolerance of record times must not be negative")

    def time_bounds(self, load_started: datetime) -> tuple[datetime, datetime]:
        """The earliest and latest record time a load that started at ``load_started`` accepts."""
        return self.earliest_time, load_started + self.future_tolerance

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoadSettings:
        env = os.environ if env is None else env
        try:
            earliest = datetime.fromisoformat(
                env.get("CLOUDAGENT_LOAD_EARLIEST_TIME", DEFAULT_EARLIEST_RECORD_TIME.isoformat())
            )
            hours = float(
                env.get(
                    "CLOUDAGENT_LOAD_FUTURE_TOLERANCE_HOURS", DEFAULT_FUTURE_TOLERANCE.total_seconds() / 3600
                )
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid load setting: {exc}") from None
        if earliest.tzinfo is None:
            earliest = earliest.replace(tzinfo=UTC)
        return cls(earliest_time=earliest, future_tolerance=timedelta(hours=hours))
