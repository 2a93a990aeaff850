"""CloudAgent Campaign Dial Status API: request model, HTTP client and the shared rate limiter.

Public surface::

    DialStatusRequest   request.py  the ten documented parameters (apiKey aside), validated on construction
    ExportFilters       request.py  its four filters and their defaults (the one definition of them)
    CloudAgentClient    client.py   POSTs a request, maps answers to errors, retries transient failures
    RetryPolicy         client.py   attempts, total time and backoff of those retries
    RateLimiter         limiter.py  at most N calls per rolling window per account, shared through the DB

Errors come from :mod:`cloudagent_etl.errors` (its docstring draws the tree): ``ValidationError`` before
sending; the documented error bodies as ``ApiError`` subclasses (terminal); ``RateLimitedError``,
``ServerError`` and ``NetworkError`` (transient, retried); ``UnexpectedResponseError`` for a body that
cannot be interpreted.
"""

from cloudagent_etl.api.client import CloudAgentClient, RetryPolicy
from cloudagent_etl.api.limiter import RateLimiter
from cloudagent_etl.api.request import DialStatusRequest, ExportFilters

__all__ = ["CloudAgentClient", "DialStatusRequest", "ExportFilters", "RateLimiter", "RetryPolicy"]
