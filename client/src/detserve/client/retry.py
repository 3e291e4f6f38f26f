"""Retries with capped exponential backoff and full jitter until the call's deadline.

Only :class:`~detserve.client.errors.ServerUnavailable` is retried: gRPC UNAVAILABLE, HTTP 503 and 429,
and connection failures, i.e. a server that is restarting, draining or overloaded. By default a call keeps
trying for as long as its deadline allows (a restart of up to that long is ridden through); ``max_attempts``
caps the tries. INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED and every other error are raised at once:
sending the same bad request again cannot succeed, a typo'd model name must fail fast, and a call whose
deadline passed has no time left.

This is the client's one retry mechanism, for both transports and both drivers: grpcio's service-config
``retryPolicy`` (at most 5 attempts) and urllib3's ``Retry`` (counts attempts, not the call's deadline) stay
off (docs/client.md, "Retries").
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import DeadlineExceeded, DetserveClientError
from .steps import Operation, Sleep, Step

__all__ = ["DEFAULT_TIMEOUT", "RetryPolicy", "NO_RETRY", "retrying"]

log = logging.getLogger("detserve.client")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Tries until the call's deadline (``max_attempts=None``) or ``max_attempts`` tries in all, whichever
    comes first; before try n+1 the client sleeps a random time in
    [0, min(max_backoff, initial_backoff * multiplier**(n-1))] (full jitter), or the server's Retry-After if
    longer, and never past the call's deadline. Without a deadline (``timeout=None``) and without
    ``max_attempts``, a call retries for as long as the server stays unavailable."""

    max_attempts: int | None = None
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self):
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 (or None: until the deadline), got {self.max_attempts}")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError(f"backoffs must satisfy 0 <= initial_backoff <= max_backoff, got "
                             f"{self.initial_backoff} and {self.max_backoff}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Sleep before retry number ``retry`` (1-based)."""
        try:
            grown = self.initial_backoff * self.multiplier ** (retry - 1)
        except OverflowError:  # ~1,000 retries into an outage without a deadline: long past the cap
            grown = self.max_backoff
        cap = min(self.max_backoff, grown)
        return (rng or random).uniform(0.0, cap)


NO_RETRY = RetryPolicy(max_attempts=1)

# A call's default deadline, retries included: long enough to ride through a server restart (SIGTERM, then a
# new process loading and warming a detector: 27-50 s on 2 CPU cores), short enough that a dead server is
# reported within a minute.
DEFAULT_TIMEOUT = 60.0


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None, what: str, last: DetserveClientError | None) -> float | None:
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        if last is not None:
            raise last
        raise DeadlineExceeded(f"{what}: deadline passed before the request was sent", code="DEADLINE_EXCEEDED")
    return remaining


def _next_sleep(policy: RetryPolicy, error: DetserveClientError, attempt: int, deadline: float | None,
                rng: random.Random | None) -> float | None:
    """Seconds to sleep before the next attempt, or None to give up and raise ``error``."""
    error.attempts = attempt
    if not error.retryable or (policy.max_attempts is not None and attempt >= policy.max_attempts):
        return None
    delay = policy.backoff(attempt, rng)
    if error.retry_after is not None:
        delay = max(delay, min(error.retry_after, policy.max_backoff))
    if deadline is not None and time.monotonic() + delay >= deadline:
        return None
    return delay


def retrying(attempt: Callable[[float | None], Step], *, policy: RetryPolicy, timeout: float | None, what: str,
             rng: random.Random | None = None) -> Operation[T]:
    """The step ``attempt(remaining_seconds)`` until it succeeds, retrying only retryable errors, with a
    :class:`~detserve.client.steps.Sleep` between tries (an operation: see :mod:`detserve.client.steps`)."""
    deadline = _deadline(timeout)
    attempt_number, last = 0, None
    while True:
        attempt_number += 1
        remaining = _remaining(deadline, what, last)
        try:
            return (yield attempt(remaining))
        except DetserveClientError as error:
            delay = _next_sleep(policy, error, attempt_number, deadline, rng)
            if delay is None:
                raise
            log.info("%s: %s; retry %d%s in %.3f s", what, error, attempt_number,
                     "" if policy.max_attempts is None else f"/{policy.max_attempts - 1}", delay)
            last = error
        yield Sleep(delay)
