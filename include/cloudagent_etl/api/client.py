"""The CloudAgent HTTP client: send one export request, interpret the answer, retry what may pass later.

CloudAgent reports errors with HTTP 200 and a JSON body, so the body is judged, not only the status code.
Documented error bodies become terminal :class:`~cloudagent_etl.errors.ApiError` subclasses (never
retried: the same request would fail the same way). Rate limiting ("Max limit exceeded" or HTTP 429),
HTTP 5xx, timeouts and connection errors are transient and retried with exponential backoff and full
jitter, honouring ``Retry-After``, within :class:`RetryPolicy`'s attempt and time budget. Each attempt
is an API call, so each goes through the shared :class:`~cloudagent_etl.api.limiter.RateLimiter`.

The apiKey never leaves the request itself: error messages quote bodies only after
:func:`~cloudagent_etl.errors.redact`, httpx exceptions (whose request carries the key) are never
chained, and log lines name only the campaign, window, attempt and outcome.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import tenacity

from cloudagent_etl.errors import (
    ApiError,
    AuthenticationFailedError,
    CloudAgentError,
    ConfigurationError,
    InvalidApiKeyError,
    InvalidCallbackUrlError,
    InvalidCampaignNameError,
    InvalidUserNameError,
    NetworkError,
    RateLimitedError,
    ServerError,
    TransientError,
    UnexpectedResponseError,
    ValidationError,
    redact,
)
from cloudagent_etl.settings import ApiSettings

if TYPE_CHECKING:
    from cloudagent_etl.api.limiter import RateLimiter
    from cloudagent_etl.api.request import DialStatusRequest

log = logging.getLogger(__name__)

#: The documented error bodies' ``message`` values, each with the error it means.
DOCUMENTED_ERRORS: dict[str, type[ApiError]] = {
    error.api_message: error
    for error in (
        InvalidApiKeyError,
        AuthenticationFailedError,
        InvalidUserNameError,
        InvalidCampaignNameError,
        InvalidCallbackUrlError,
    )
}
RATE_LIMIT_MESSAGE = "Max limit exceeded"
EXCERPT_CHARS = 200


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried.

    The wait before retry *n* is uniform in ``[0, min(max_delay_s, base_delay_s * 2**(n-1))]`` (full
    jitter), except that a ``Retry-After`` hint is waited exactly, and a rate-limit answer without one
    waits at least ``rate_limited_min_delay_s`` (a 10/min budget frees a slot every 6 s on average).
    No retry starts once ``max_total_s`` would be exceeded by its wait; then the last error is raised.
    """

    max_attempts: int = 5
    max_total_s: float = 300.0
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    rate_limited_min_delay_s: float = 6.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def delay_before_retry(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based) with ``error``."""
        if isinstance(error, RateLimitedError) and error.retry_after_s is not None:
            return error.retry_after_s
        delay = random.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))
        if isinstance(error, RateLimitedError):
            return max(delay, self.rate_limited_min_delay_s)
        return delay


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date; None if unusable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110: HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def interpret_response(response: httpx.Response, secrets: Sequence[str]) -> str:
    """The ``uniqueId`` of an accepted request, or the error that the answer means (raised)."""
    status_code = response.status_code
    retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
    excerpt = _excerpt(response, secrets)
    if status_code == 429:
        raise RateLimitedError(f"CloudAgent answered HTTP 429 (rate limited): {excerpt}", retry_after_s)
    if status_code >= 500:
        raise ServerError(f"CloudAgent answered HTTP {status_code}: {excerpt}")
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UnexpectedResponseError(
            f"CloudAgent answered HTTP {status_code} with a body that is not JSON: {excerpt}"
        ) from None
    if not isinstance(body, dict):
        raise UnexpectedResponseError(
            f"CloudAgent answered HTTP {status_code} with JSON that is not an object: {excerpt}"
        )
    status = body.get("status")
    message = body.get("message")
    if isinstance(status, str) and status.lower() == "error":
        if message == RATE_LIMIT_MESSAGE:
            raise RateLimitedError(f"CloudAgent answered {RATE_LIMIT_MESSAGE!r}", retry_after_s)
        if isinstance(message, str) and message in DOCUMENTED_ERRORS:
            raise DOCUMENTED_ERRORS[message]()
        raise UnexpectedResponseError(
            f"CloudAgent answered an undocumented error (HTTP {status_code}): {excerpt}"
        )
    unique_id = body.get("uniqueId")
    if isinstance(unique_id, int) and not isinstance(unique_id, bool):
        unique_id = str(unique_id)
    if not isinstance(status, str) or not status or not isinstance(unique_id, str) or not unique_id.strip():
        raise UnexpectedResponseError(
            f"CloudAgent answered HTTP {status_code} without a status and a non-empty uniqueId: {excerpt}"
        )
    if not 200 <= status_code < 300:
        raise UnexpectedResponseError(
            f"CloudAgent answered HTTP {status_code} with a success body: {excerpt}"
        )
    return unique_id.strip()


def _excerpt(response: httpx.Response, secrets: Sequence[str]) -> str:
    text = response.content.decode("utf-8", errors="replace")
    return repr(redact(text, secrets, limit=EXCERPT_CHARS)) if text else "(empty body)"


def _secret_forms(*values: str) -> list[str]:
    """Each secret as sent and as a JSON encoder that escapes ``/`` would echo it back."""
    forms: list[str] = []
    for value in values:
        if value.strip():  # a blank "secret" would redact every space
            forms += [value, value.replace("/", "\\/")]
    return forms


def _check_header_value(api_key: str) -> None:
    """Refuse a key that HTTP cannot carry as a header value, before httpx (and its debug log) sees it."""
    if api_key != api_key.strip() or not api_key.isprintable() or not api_key.isascii():
        raise ConfigurationError(
            "the apiKey cannot be sent in the apiKey header: it has surrounding whitespace or "
            "non-printable or non-ASCII characters (check the connection password, or use api_key_in=body)"
        )


class CloudAgentClient:
    """Sends Campaign Dial Status export requests for one account (see the module docstring).

    ``transport`` replaces httpx's network transport (tests pass ``httpx.MockTransport``).
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        settings: ApiSettings,
        *,
        limiter: RateLimiter | None = None,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        if settings.api_key_in == "header":
            _check_header_value(settings.api_key.get())
        if limiter is not None and limiter.account != settings.user_name:
            raise ConfigurationError(
                f"the limiter counts account {limiter.account!r}, the client calls as {settings.user_name!r}"
            )
        self.settings = settings
        self.limiter = limiter
        self.retry = retry
        self._http = httpx.Client(base_url=settings.base_url, timeout=settings.timeout_s, transport=transport)

    def __repr__(self) -> str:
        return f"CloudAgentClient(base_url={self.settings.base_url!r}, user_name={self.settings.user_name!r})"

    def __enter__(self) -> CloudAgentClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request_export(self, request: DialStatusRequest, purpose: str | None = None) -> str:
        """Ask CloudAgent to export ``request``'s data to its callback URL; return the ``uniqueId``.

        ``purpose`` is recorded in the limiter's call log (default: the campaign name).
        Raises a TerminalError at once, or the last TransientError once retries are exhausted.
        """
        if request.user_name != self.settings.user_name:
            # The budget is per account: a request for another account would bypass its limiter.
            raise ValidationError(
                "userName",
                f"must be the connection's user {self.settings.user_name!r}; got {request.user_name!r}",
            )
        body = request.to_body(self.settings.timezone)
        window = f"{body['fromDate']}..{body['toDate']}"
        for attempt in self._retrying():
            with attempt:
                unique_id = self._attempt(
                    request,
                    body,
                    window,
                    purpose or request.campaign_name,
                    attempt.retry_state.attempt_number,
                )
        return unique_id

    def _retrying(self) -> tenacity.Retrying:
        """Transient errors retried with backoff, within the attempts and the total time allowed."""
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            stop=tenacity.stop_after_attempt(self.retry.max_attempts)
            | tenacity.stop_before_delay(self.retry.max_total_s),
            wait=self._wait,
            sleep=self.retry.sleep,
            reraise=True,
        )

    def check_account(self, campaign_name: str) -> None:
        """Prove the apiKey, the userName and ``campaign_name`` without creating an export.

        The request is a complete export request with an empty ``callBackUrl``. CloudAgent's documented
        errors come in the order apiKey, userName, campaignName, callBackUrl (docs/cloudagent-contract.md,
        inferred): an account and campaign it accepts are answered with the callBackUrl error, which is
        the success of this check; a rejected apiKey, userName or campaign raises its own ``ApiError``.
        Counted by the limiter like any call (``purpose`` "account check"); transient errors are retried
        as for an export. An answer that *accepts* the request means the inference is wrong (an export
        with nowhere to go was created): ``UnexpectedResponseError`` says so and how to turn the check off.
        """
        from datetime import UTC, datetime, timedelta

        from cloudagent_etl.api.request import DATE_FORMAT, ExportFilters
        from cloudagent_etl.settings import zone

        if not campaign_name.strip():
            raise ValidationError("campaignName", "must be a non-empty campaign name")
        tz = zone(self.settings.timezone)
        now = datetime.now(UTC).astimezone(tz).replace(microsecond=0)
        body = {
            "fromDate": (now - timedelta(minutes=1)).strftime(DATE_FORMAT),
            "toDate": now.strftime(DATE_FORMAT),
            **ExportFilters().as_dict(),
            "campaignName": campaign_name,
            "userName": self.settings.user_name,
            "callBackUrl": "",
        }
        for attempt in self._retrying():
            with attempt:
                self._check_attempt(body, campaign_name, attempt.retry_state.attempt_number)

    def _check_attempt(self, body: dict[str, str], campaign_name: str, attempt: int) -> None:
        waited = self.limiter.acquire(f"account check {campaign_name}") if self.limiter is not None else 0.0
        outcome = "crashed"
        try:
            unique_id = self._send(body, [])
            outcome = f"an export was accepted (uniqueId={unique_id})"
        except InvalidCallbackUrlError:
            outcome = "account and campaign accepted"
            return
        except CloudAgentError as error:
            outcome = f"{type(error).__name__}: {error}"
            raise
        finally:
            log.info(
                "CloudAgent account check campaign=%s attempt=%d limiter_wait=%.2fs outcome=%s",
                campaign_name,
                attempt,
                waited,
                outcome,
            )
        raise UnexpectedResponseError(
            f"CloudAgent accepted an export request with an empty callBackUrl (uniqueId {unique_id}): the "
            "account check relies on CloudAgent refusing it, so it cannot be used with this API; turn it off "
            "with CLOUDAGENT_ACCOUNT_CHECK=off"
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        return self.retry.delay_before_retry(state.attempt_number, error)

    def _attempt(
        self, request: DialStatusRequest, body: dict[str, str], window: str, purpose: str, attempt: int
    ) -> str:
        waited = self.limiter.acquire(purpose) if self.limiter is not None else 0.0
        outcome = "crashed"
        try:
            unique_id = self._post(request, body)
            outcome = f"accepted uniqueId={unique_id}"
            return unique_id
        except CloudAgentError as error:
            outcome = f"{type(error).__name__}: {error}"
            raise
        finally:
            log.info(
                "CloudAgent export campaign=%s window=%s attempt=%d limiter_wait=%.2fs outcome=%s",
                request.campaign_name,
                window,
                attempt,
                waited,
                outcome,
            )

    def _post(self, request: DialStatusRequest, body: dict[str, str]) -> str:
        return self._send(body, [request.callback_url])

    def _send(self, body: dict[str, str], other_secrets: Sequence[str]) -> str:
        """POST one body; the uniqueId of an accepted request, or the error its answer means."""
        api_key = self.settings.api_key.get()
        secrets = _secret_forms(api_key, *other_secrets)
        headers = {"apiKey": api_key} if self.settings.api_key_in == "header" else {}
        payload = {**body, "apiKey": api_key} if self.settings.api_key_in == "body" else body
        # httpx exceptions hold the request (and so the key): build our error outside the except block
        # so that neither __cause__ nor __context__ refers to them.
        failure: NetworkError | UnexpectedResponseError | None = None
        try:
            response = self._http.post(self.settings.endpoint, json=payload, headers=headers)
        except httpx.TimeoutException as exc:
            failure = NetworkError(f"CloudAgent did not answer in time ({type(exc).__name__})")
        except httpx.TransportError as exc:
            reason = redact(str(exc), secrets, limit=EXCERPT_CHARS)
            failure = NetworkError(f"CloudAgent could not be reached ({type(exc).__name__}: {reason})")
        except httpx.RequestError as exc:  # undecodable content, too many redirects: retrying cannot help
            reason = redact(str(exc), secrets, limit=EXCERPT_CHARS)
            failure = UnexpectedResponseError(
                f"CloudAgent's answer could not be read ({type(exc).__name__}: {reason})"
            )
        if failure is not None:
            raise failure
        return interpret_response(response, secrets)
