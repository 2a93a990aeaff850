"""One error tree for the whole product: is it worth retrying, or must it fail fast?

::

    CloudAgentError
    ├── TransientError                 retry with backoff: the same call may succeed later
    │   ├── RateLimitedError           "Max limit exceeded" body or HTTP 429 (carries retry_after_s)
    │   ├── ServerError                HTTP 5xx from CloudAgent
    │   ├── NetworkError               timeouts, refused or reset connections
    │   └── DatabaseUnavailableError   the project database did not answer
    └── TerminalError                  fail fast: retrying cannot help
        ├── ValidationError            a request parameter is invalid; nothing was sent
        ├── ApiError                   CloudAgent rejected the request (a documented error body)
        │   ├── InvalidApiKeyError         "apiKey is invalid"
        │   ├── AuthenticationFailedError  "Authentication failed"
        │   ├── InvalidUserNameError       "userName is invalid"
        │   ├── InvalidCampaignNameError   "campaignName is invalid"
        │   └── InvalidCallbackUrlError    "callBackUrl cannot be empty (OR) ..."
        ├── UnexpectedResponseError    a body we cannot interpret (quoted truncated and redacted)
        ├── ConfigurationError         a setting or connection is missing or malformed
        ├── PayloadError               a landed callback payload cannot be parsed at all
        └── StateTransitionError       an export request cannot move to that state (or does not exist)

Messages never contain secrets: build them with :func:`redact` when they quote outside text.
"""

from __future__ import annotations

from collections.abc import Iterable


class CloudAgentError(Exception):
    """Base of every error this package raises on purpose."""


class TransientError(CloudAgentError):
    """The same operation may succeed if retried later."""


class RateLimitedError(TransientError):
    """CloudAgent's request budget is exhausted; ``retry_after_s`` is its hint, when it gave one."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServerError(TransientError):
    """CloudAgent answered with an HTTP 5xx."""


class NetworkError(TransientError):
    """No usable answer: timeout, refused or reset connection."""


class DatabaseUnavailableError(TransientError):
    """The project database did not answer."""


class TerminalError(CloudAgentError):
    """Retrying cannot help; fail the task at once with this message."""


class ValidationError(TerminalError, ValueError):
    """A request parameter is invalid; nothing was sent."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class ApiError(TerminalError):
    """CloudAgent rejected the request with one of its documented error bodies.

    ``fix`` says which setting to change, with ``{conn_id}`` (the account's connection), ``{campaign}``
    and ``{campaigns_setting}`` (where the campaign list is configured) to fill in: :meth:`naming`.
    """

    api_message: str = ""
    fix: str = "the request"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or f"CloudAgent rejected the request: {self.api_message}")

    def naming(self, conn_id: str, campaign: str, campaigns_setting: str) -> ApiError:
        """The same error, its message naming the connection or Variable and the field to fix."""
        where = self.fix.format(conn_id=conn_id, campaign=campaign, campaigns_setting=campaigns_setting)
        return type(self)(f"CloudAgent rejected the request: {self.api_message}: fix {where}")


class InvalidApiKeyError(ApiError):
    api_message = "apiKey is invalid"
    fix = "the apiKey: the password of connection {conn_id} is missing or not an apiKey"


class AuthenticationFailedError(ApiError):
    api_message = "Authentication failed"
    fix = "the apiKey or the userName: the password or the login of connection {conn_id}"


class InvalidUserNameError(ApiError):
    api_message = "userName is invalid"
    fix = "the userName: the login of connection {conn_id}"


class InvalidCampaignNameError(ApiError):
    api_message = "campaignName is invalid"
    fix = (
        "the campaign name: CloudAgent does not know campaign {campaign!r} of connection {conn_id}; correct "
        "it in {campaigns_setting}"
    )


class InvalidCallbackUrlError(ApiError):
    api_message = "callBackUrl cannot be empty (OR) it should contain 'http' or 'https'"
    fix = "CLOUDAGENT_CALLBACK_BASE_URL (the receiver's public http(s) URL)"


class UnexpectedResponseError(TerminalError):
    """CloudAgent answered with something we cannot interpret."""


class ConfigurationError(TerminalError):
    """A setting, connection or Variable is missing or malformed."""


class PayloadError(TerminalError):
    """A landed callback payload cannot be parsed at all."""


class StateTransitionError(TerminalError):
    """An export request does not exist, or its state does not allow the requested move."""


REDACTED = "***"


def redact(text: str, secrets: Iterable[str | None], limit: int | None = None) -> str:
    """Return ``text`` with every secret replaced by ``***``, optionally truncated to ``limit`` chars.

    Redaction happens before truncation so that a secret cut in half cannot leak its prefix.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... [{len(text) - limit} more chars]"
    return text
