"""CloudAgentClient against a scripted CloudAgent (httpx.MockTransport): mapping, retries, redaction."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from cloudagent_etl.api import CloudAgentClient, DialStatusRequest, RetryPolicy
from cloudagent_etl.api.client import parse_retry_after
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
    TerminalError,
    TransientError,
    UnexpectedResponseError,
    ValidationError,
)
from cloudagent_etl.settings import ApiSettings, Secret

API_KEY = "test-api-key-SECRET123"
TOKEN = "tok-CALLBACK-SECRET"
CALLBACK = f"https://etl.example.com/callbacks/dial-status/req-1/{TOKEN}"
SECRETS = (API_KEY, TOKEN)

Answer = httpx.Response | Exception


class ScriptedCloudAgent:
    """A transport answering with the scripted answers in order (the last repeats); records each call."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]


def ok(unique_id: str = "UID-1", status: str = "success") -> httpx.Response:
    return httpx.Response(200, json={"status": status, "message": "Request accepted", "uniqueId": unique_id})


def error_body(message: str, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"status": "error", "message": message, "uniqueId": "", **extra})


DOCUMENTED = [
    ("apiKey is invalid", InvalidApiKeyError),
    ("Authentication failed", AuthenticationFailedError),
    ("userName is invalid", InvalidUserNameError),
    ("campaignName is invalid", InvalidCampaignNameError),
    ("callBackUrl cannot be empty (OR) it should contain 'http' or 'https'", InvalidCallbackUrlError),
]

TRANSIENT: list[tuple[str, Callable[[], Answer], type[TransientError]]] = [
    ("429", lambda: httpx.Response(429, text="slow down"), RateLimitedError),
    ("max-limit-body", lambda: error_body("Max limit exceeded"), RateLimitedError),
    (
        "max-limit-body-no-uniqueId",
        lambda: httpx.Response(200, json={"status": "error", "message": "Max limit exceeded"}),
        RateLimitedError,
    ),
    ("500", lambda: httpx.Response(500, text="Internal Server Error"), ServerError),
    ("502", lambda: httpx.Response(502, text="<html>Bad Gateway</html>"), ServerError),
    ("503", lambda: httpx.Response(503), ServerError),
    ("read-timeout", lambda: httpx.ReadTimeout("timed out"), NetworkError),
    ("connect-timeout", lambda: httpx.ConnectTimeout("timed out"), NetworkError),
    ("connect-error", lambda: httpx.ConnectError(f"refused; sent apiKey={API_KEY}"), NetworkError),
    (
        "reset",
        lambda: httpx.RemoteProtocolError("Server disconnected without sending a response."),
        NetworkError,
    ),
]

UNEXPECTED: list[tuple[str, httpx.Response, str]] = [
    ("html", httpx.Response(200, text="<html>maintenance</html>"), "not JSON"),
    ("empty", httpx.Response(200, content=b""), "not JSON"),
    ("json-list", httpx.Response(200, json=[{"uniqueId": "x"}]), "not an object"),
    ("empty-uniqueId", httpx.Response(200, json={"status": "success", "uniqueId": ""}), "non-empty uniqueId"),
    (
        "missing-uniqueId",
        httpx.Response(200, json={"status": "queued", "message": "ok"}),
        "non-empty uniqueId",
    ),
    ("missing-status", httpx.Response(200, json={"uniqueId": "UID-9"}), "without a status"),
    ("null-status", httpx.Response(200, json={"status": None, "uniqueId": "UID-9"}), "without a status"),
    ("unknown-error", error_body("Something new broke"), "undocumented error"),
    ("error-with-id", error_body("Account suspended", uniqueId="UID-3"), "undocumented error"),
    ("404-success-body", httpx.Response(404, json={"status": "success", "uniqueId": "UID-4"}), "HTTP 404"),
    ("404-html", httpx.Response(404, text="Not Found"), "not JSON"),
]


@pytest.fixture
def settings() -> ApiSettings:
    return ApiSettings(user_name="test_user", api_key=Secret(API_KEY), base_url="https://cloudagent.test")


@pytest.fixture
def request_model() -> DialStatusRequest:
    return DialStatusRequest(
        campaign_name="Alpha",
        user_name="test_user",
        from_date=datetime(2026, 1, 1, 18, 30, tzinfo=UTC),
        to_date=datetime(2026, 1, 2, 18, 29, 59, tzinfo=UTC),
        callback_url=CALLBACK,
    )


class Sleeps(list[float]):
    """Records the waits the client asks for instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def policy(sleeps: Sleeps) -> RetryPolicy:
    return RetryPolicy(max_attempts=3, base_delay_s=0.0, rate_limited_min_delay_s=0.0, sleep=sleeps)


def client_for(settings: ApiSettings, agent: ScriptedCloudAgent, policy: RetryPolicy) -> CloudAgentClient:
    return CloudAgentClient(settings, transport=httpx.MockTransport(agent), retry=policy)


def chain_texts(error: BaseException) -> Iterator[str]:
    """str() and repr() of an exception and of everything chained to it."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from (str(arg) for arg in current.args)
        pending += [current.__cause__, current.__context__]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


# ---------------------------------------------------------------------------------------------- success


def test_success_posts_the_documented_body_with_the_key_in_the_header(
    settings: ApiSettings, request_model: DialStatusRequest, policy: RetryPolicy
) -> None:
    agent = ScriptedCloudAgent(ok("UID-42"))
    with client_for(settings, agent, policy) as client:
        assert client.request_export(request_model) == "UID-42"
    (sent,) = agent.requests
    assert sent.method == "POST"
    assert str(sent.url) == "https://cloudagent.test/endpoint/dailer/data/preview/download"
    assert sent.headers["apiKey"] == API_KEY
    assert sent.headers["content-type"] == "application/json"
    assert agent.bodies() == [request_model.to_body("Asia/Kolkata")]
    assert agent.bodies()[0]["fromDate"] == "2026-01-02 00:00:00"


def test_key_in_body_when_configured(request_model: DialStatusRequest, policy: RetryPolicy) -> None:
    settings = ApiSettings(
        user_name="test_user",
        api_key=Secret(API_KEY),
        base_url="http://127.0.0.1:9",
        endpoint="/custom/path",
        api_key_in="body",
        timezone="UTC",
    )
    agent = ScriptedCloudAgent(ok())
    with client_for(settings, agent, policy) as client:
        client.request_export(request_model)
    (sent,) = agent.requests
    assert "apikey" not in sent.headers
    assert str(sent.url) == "http://127.0.0.1:9/custom/path"
    assert agent.bodies() == [{**request_model.to_body("UTC"), "apiKey": API_KEY}]


@pytest.mark.parametrize("status", ["success", "queued", "Success", "accepted"])
def test_any_non_error_status_with_a_unique_id_is_accepted(
    settings: ApiSettings, request_model: DialStatusRequest, policy: RetryPolicy, status: str
) -> None:
    with client_for(settings, ScriptedCloudAgent(ok(" UID-7 ", status)), policy) as client:
        assert client.request_export(request_model) == "UID-7"


def test_numeric_unique_id_is_returned_as_text(
    settings: ApiSettings, request_model: DialStatusRequest, policy: RetryPolicy
) -> None:
    agent = ScriptedCloudAgent(httpx.Response(200, json={"status": "success", "uniqueId": 9007199254740993}))
    with client_for(settings, agent, policy) as client:
        assert client.request_export(request_model) == "9007199254740993"


def test_one_info_line_per_attempt_names_campaign_window_attempt_and_outcome(
    settings: ApiSettings,
    request_model: DialStatusRequest,
    policy: RetryPolicy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = ScriptedCloudAgent(httpx.Response(503), ok("UID-5"))
    caplog.set_level(logging.INFO, logger="cloudagent_etl.api.client")
    with client_for(settings, agent, policy) as client:
        client.request_export(request_model)
    lines = [r.getMessage() for r in caplog.records if r.name == "cloudagent_etl.api.client"]
    window = "window=2026-01-02 00:00:00..2026-01-02 23:59:59"
    assert len(lines) == 2
    assert all("campaign=Alpha" in line and window in line for line in lines)
    assert "attempt=1" in lines[0]
    assert "outcome=ServerError" in lines[0]
    assert "attempt=2" in lines[1]
    assert "outcome=accepted uniqueId=UID-5" in lines[1]


# ---------------------------------------------------------------------------------------------- terminal


@pytest.mark.parametrize(("message", "error_type"), DOCUMENTED)
def test_each_documented_error_body_raises_its_error_without_retry(
    settings: ApiSettings,
    request_model: DialStatusRequest,
    policy: RetryPolicy,
    sleeps: Sleeps,
    message: str,
    error_type: type[ApiError],
) -> None:
    agent = ScriptedCloudAgent(error_body(message), ok())
    with client_for(settings, agent, policy) as client, pytest.raises(error_type) as info:
        client.request_export(request_model)
    assert type(info.value) is error_type
    assert isinstance(info.value, TerminalError)
    assert message in str(info.value)
    assert len(agent.requests) == 1
    assert sleeps == []


# ---------------------------------------------------------------------------------------------- transient


@pytest.mark.parametrize(("case", "answer", "error_type"), TRANSIENT, ids=[case for case, _, _ in TRANSIENT])
def test_transient_failure_is_retried_then_succeeds(
    settings: ApiSettings,
    request_model: DialStatusRequest,
    policy: RetryPolicy,
    case: str,
    answer: Callable[[], Answer],
    error_type: type[TransientError],
) -> None:
    agent = ScriptedCloudAgent(answer(), answer(), ok("UID-after-retry"))
    with client_for(settings, agent, policy) as client:
        assert client.request_export(request_model) == "UID-after-retry"
    assert len(agent.requests) == 3


@pytest.mark.parametrize(("case", "answer", "error_type"), TRANSIENT, ids=[case for case, _, _ in TRANSIENT])
def test_transient_failure_raises_the_last_error_once_attempts_are_exhausted(
    settings: ApiSettings,
    request_model: DialStatusRequest,
    policy: RetryPolicy,
    sleeps: Sleeps,
    case: str,
    answer: Callable[[], Answer],
    error_type: type[TransientError],
) -> None:
    agent = ScriptedCloudAgent(answer())
    with client_for(settings, agent, policy) as client, pytest.raises(error_type) as info:
        client.request_export(request_model)
    assert type(info.value) is error_type
    assert len(agent.requests) == policy.max_attempts == 3
    assert len(sleeps) == 2
    assert_no_secret(*chain_texts(info.value))


def test_retry_after_seconds_is_waited_exactly(
    settings: ApiSettings, request_model: DialStatusRequest, policy: RetryPolicy, sleeps: Sleeps
) -> None:
    agent = ScriptedCloudAgent(httpx.Response(429, headers={"Retry-After": "7"}), ok())
    with client_for(settings, agent, policy) as client:
        client.request_export(request_model)
    assert sleeps == [7.0]


def test_retry_after_on_a_max_limit_body_is_honoured(
    settings: ApiSettings, request_model: DialStatusRequest, policy: RetryPolicy, sleeps: Sleeps
) -> None:
    limited = httpx.Response(
        200, headers={"Retry-After": "2.5"}, json={"status": "error", "message": "Max limit exceeded"}
    )
    agent = ScriptedCloudAgent(limited, ok())
    with client_for(settings, agent, policy) as client:
        client.request_export(request_model)
    assert sleeps == [2.5]


def test_rate_limit_without_a_hint_waits_at_least_the_minimum(
    settings: ApiSettings, request_model: DialStatusRequest, sleeps: Sleeps
) -> None:
    policy = RetryPolicy(base_delay_s=0.0, rate_limited_min_delay_s=6.0, sleep=sleeps)
    agent = ScriptedCloudAgent(error_body("Max limit exceeded"), httpx.Response(500), ok())
    with client_for(settings, agent, policy) as client:
        client.request_export(request_model)
    assert sleeps == [6.0, 0.0]


def test_retry_that_would_pass_the_total_time_budget_is_not_attempted(
    settings: ApiSettings, request_model: DialStatusRequest, sleeps: Sleeps
) -> None:
    policy = RetryPolicy(max_attempts=5, max_total_s=10.0, sleep=sleeps)
    agent = ScriptedCloudAgent(httpx.Response(429, headers={"Retry-After": "30"}), ok())
    with client_for(settings, agent, policy) as client, pytest.raises(RateLimitedError) as info:
        client.request_export(request_model)
    assert info.value.retry_after_s == 30.0
    assert len(agent.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 10])
def test_backoff_is_full_jitter_within_the_exponential_cap(attempt: int) -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=8.0)
    cap = min(8.0, 0.5 * 2 ** (attempt - 1))
    delays = [policy.delay_before_retry(attempt, ServerError("x")) for _ in range(200)]
    assert all(0.0 <= delay <= cap for delay in delays)
    assert len(set(delays)) > 100  # random, not a fixed schedule
    assert max(delays) > cap / 2


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-3", now) == 0.0
    assert (
        parse_retry_after(format_datetime(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True), now)
        == 30.0
    )
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after(None, now) is None


# ---------------------------------------------------------------------------------------------- unexpected


@pytest.mark.parametrize(("case", "answer", "says"), UNEXPECTED, ids=[case for case, _, _ in UNEXPECTED])
def test_unexpected_body_is_a_terminal_error_quoting_the_body(
    settings: ApiSettings,
    request_model: DialStatusRequest,
    policy: RetryPolicy,
    case: str,
    answer: httpx.Response,
    says: str,
) -> None:
    agent = ScriptedCloudAgent(answer, ok())
    with client_for(settings, agent, policy) as client, pytest.raises(UnexpectedResponseError) as info:
        client.request_export(request_model)
    assert says in str(info.value)
    body = answer.content.decode()
    assert (body[:50] if body else "(empty body)") in str(info.value)
    assert len(agent.requests) == 1


def test_unexpected_body_excerpt_is_redacted_then_truncated(
    settings: ApiSettings, request_model: DialStatusRequest, policy: RetryPolicy
) -> None:
    escaped_callback = CALLBACK.replace("/", "\\/")
    body = f'{{"echo": "{API_KEY}", "cb": "{escaped_callback}", "cb2": "{CALLBACK}", "pad": "{"x" * 5000}"}}'
    agent = ScriptedCloudAgent(httpx.Response(200, text=f"<pre>{body}</pre>"))
    with client_for(settings, agent, policy) as client, pytest.raises(UnexpectedResponseError) as info:
        client.request_export(request_model)
    message = str(info.value)
    assert_no_secret(message)
    assert message.count("***") == 3
    assert len(message) < 400
    assert "more chars]" in message


# ---------------------------------------------------------------------------------------------- redaction


def every_failure_path() -> list[tuple[str, list[Answer]]]:
    """Each way a call can fail, with bodies that echo the key and the callback URL where a body exists."""
    echo = {"apiKey": API_KEY, "callBackUrl": CALLBACK}
    paths: list[tuple[str, list[Answer]]] = [
        (message, [httpx.Response(200, json={"status": "error", "message": message, "uniqueId": "", **echo})])
        for message, _ in DOCUMENTED
    ]
    paths += [(case, [answer()]) for case, answer, _ in TRANSIENT]
    paths += [
        ("429-echo", [httpx.Response(429, json=echo)]),
        ("500-echo", [httpx.Response(500, text=f"Traceback: key={API_KEY} url={CALLBACK}")]),
        ("html-echo", [httpx.Response(200, text=f"<html>{API_KEY} {CALLBACK}</html>")]),
        (
            "unknown-error-echo",
            [httpx.Response(200, json={"status": "error", "message": f"bad key {API_KEY}"})],
        ),
        ("timeout-echo", [httpx.ReadTimeout(f"timed out sending apiKey: {API_KEY}")]),
    ]
    return paths


@pytest.mark.parametrize("api_key_in", ["header", "body"])
@pytest.mark.parametrize(
    ("case", "answers"), every_failure_path(), ids=[case for case, _ in every_failure_path()]
)
def test_no_failure_path_shows_the_key_or_callback_token(
    request_model: DialStatusRequest,
    policy: RetryPolicy,
    caplog: pytest.LogCaptureFixture,
    api_key_in: str,
    case: str,
    answers: list[Answer],
) -> None:
    settings = ApiSettings(
        user_name="test_user",
        api_key=Secret(API_KEY),
        base_url="https://cloudagent.test",
        api_key_in=api_key_in,
    )
    caplog.set_level(logging.DEBUG)
    agent = ScriptedCloudAgent(*answers)
    with client_for(settings, agent, policy) as client, pytest.raises(CloudAgentError) as info:
        client.request_export(request_model)
    assert_no_secret(
        *chain_texts(info.value),
        caplog.text,
        *(r.getMessage() for r in caplog.records),
        repr(client_for(settings, agent, policy)),
        repr(settings),
        str(settings),
        repr(request_model),
    )


def test_reprs_never_show_the_key(settings: ApiSettings, request_model: DialStatusRequest) -> None:
    with CloudAgentClient(settings, transport=httpx.MockTransport(ScriptedCloudAgent(ok()))) as client:
        assert_no_secret(
            repr(client), str(client), repr(settings), repr(request_model), repr(client.settings.api_key)
        )
        assert "test_user" in repr(client)


@pytest.mark.parametrize("bad_key", [" SECRET-lead", "SECRET-trail ", "SECRET\nnewline", "SECRET-naïve"])
def test_key_that_a_header_cannot_carry_is_refused_before_anything_is_sent(bad_key: str) -> None:
    settings = ApiSettings(user_name="test_user", api_key=Secret(bad_key), base_url="https://cloudagent.test")
    with pytest.raises(ConfigurationError, match="cannot be sent in the apiKey header") as info:
        CloudAgentClient(settings, transport=httpx.MockTransport(ScriptedCloudAgent(ok())))
    assert "SECRET" not in str(info.value)


def test_key_that_a_header_cannot_carry_still_goes_in_the_body(
    request_model: DialStatusRequest, policy: RetryPolicy
) -> None:
    settings = ApiSettings(
        user_name="test_user",
        api_key=Secret(" SECRET\n"),
        base_url="https://cloudagent.test",
        api_key_in="body",
    )
    agent = ScriptedCloudAgent(error_body("apiKey is invalid"))
    with client_for(settings, agent, policy) as client, pytest.raises(InvalidApiKeyError) as info:
        client.request_export(request_model)
    assert agent.bodies()[0]["apiKey"] == " SECRET\n"
    assert "SECRET" not in str(info.value)


def test_request_for_another_account_is_refused_before_sending(
    settings: ApiSettings, request_model: DialStatusRequest, policy: RetryPolicy
) -> None:
    agent = ScriptedCloudAgent(ok())
    other = replace(request_model, user_name="someone_else")
    with (
        client_for(settings, agent, policy) as client,
        pytest.raises(ValidationError, match=r"^userName: must be"),
    ):
        client.request_export(other)
    assert agent.requests == []


@pytest.mark.parametrize(
    "failure",
    [httpx.DecodingError("bad gzip"), httpx.TooManyRedirects("loop")],
    ids=["decoding", "redirects"],
)
def test_unreadable_answer_is_unexpected_and_not_retried(
    settings: ApiSettings, request_model: DialStatusRequest, policy: RetryPolicy, failure: Exception
) -> None:
    agent = ScriptedCloudAgent(failure, ok())
    with client_for(settings, agent, policy) as client, pytest.raises(UnexpectedResponseError) as info:
        client.request_export(request_model)
    assert "could not be read" in str(info.value)
    assert len(agent.requests) == 1
    assert info.value.__context__ is None
