"""When to retry a request and how long to wait: a pure policy, no I/O.

Retried: 408, 429, 500, 502, 503, 504 and other 5xx except 501 (a capability
answer, handled by the range ladder), connection errors, resets, truncated bodies
and timeouts.  Waits grow exponentially with full jitter; ``Retry-After`` (seconds
or an HTTP date) is honoured up to ``max_retry_after``, stretched by a random
fraction (up to ``retry_after_spread``) so a fleet told "come back in 5 s" does not
come back in the same millisecond.  :func:`start_delay` spreads the starts of many
hosts that were triggered at once (a timer, a CVE announcement) over a window.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = [
    "RetryPolicy",
    "Timeouts",
    "is_retryable_status",
    "parse_retry_after",
    "start_delay",
]


def is_retryable_status(status: int) -> bool:
    """Statuses worth asking again after a pause."""
    return status in (408, 429) or (500 <= status <= 599 and status != 501)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: ``attempts`` tries in all (the first one included)."""

    attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0
    #: A server asking for a longer pause than this gets this much; we do not hang.
    max_retry_after: float = 30.0
    #: ``Retry-After: s`` waits uniformly in [s, s * (1 + spread)]: never sooner than
    #: asked, and a fleet that got the same answer comes back spread out.
    retry_after_spread: float = 0.25

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
        r = rng or random
        if retry_after is not None:
            base = min(max(retry_after, 0.0), self.max_retry_after)
            return base * r.uniform(1.0, 1.0 + self.retry_after_spread)
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        # Jitter keeps many clients from retrying in lockstep.
        return r.uniform(cap / 2, cap)


@dataclass(frozen=True)
class Timeouts:
    """Seconds.  ``idle`` bounds any wait for the next bytes of a response
    (aiohttp's ``sock_read``); ``request`` bounds a whole request except a
    whole-blob download, which may legitimately take long but never stalls."""

    connect: float = 30.0
    idle: float = 30.0
    request: float | None = 300.0


def start_delay(window: float, rng: random.Random | None = None) -> float:
    """Seconds a host waits before it starts an update that many hosts start at once.

    Uniform over ``[0, window]``: N hosts triggered together reach the registry at
    about N / window per second instead of all in the first second.  0 disables it.
    """
    if window <= 0:
        return 0.0
    return (rng or random).uniform(0.0, window)
