"""P(a component does not change within 7 days), from its dated history.

The model is chunkah's: changes are a Poisson process whose rate is estimated
from the distinct days with a changelog entry (or a build) in the 365 days
before the evaluation time, ``stability = exp(-7 * lambda)``. The evaluation
time is the build epoch (``SOURCE_DATE_EPOCH``), never the wall clock, so the
same input gives the same number; a history newer than the build epoch moves the
evaluation time up to its newest date (a package cannot be older than itself).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = [
    "DEFAULT_PACKAGE_STABILITY",
    "LOOKBACK_DAYS",
    "PERIOD_DAYS",
    "QUIET_YEAR_STABILITY",
    "interval_stability",
    "stability_from_dates",
]

SECS_PER_DAY = 86400
PERIOD_DAYS = 7.0
LOOKBACK_DAYS = 365
QUIET_YEAR_STABILITY = 0.99  # dated history, but nothing in the last year
DEFAULT_PACKAGE_STABILITY = 0.9  # a package with no dated history at all

_INTERVALS = {
    "hourly": 1.0 / 24,
    "daily": 1.0,
    "weekly": 7.0,
    "biweekly": 14.0,
    "monthly": 30.0,
    "quarterly": 91.0,
    "yearly": 365.0,
}


def stability_from_dates(dates: Iterable[int], *, build_epoch: int) -> float:
    """Stability of a component whose changes happened at the unix times ``dates``.

    No dates at all gives :data:`DEFAULT_PACKAGE_STABILITY`; dates but none in
    the lookback window gives :data:`QUIET_YEAR_STABILITY`; a history that
    spans less than a day gives 0.0 (brand new, assume it moves).
    """
    all_dates = list(dates)
    if not all_dates:
        return DEFAULT_PACKAGE_STABILITY
    now = max(build_epoch, *all_dates)
    start = now - LOOKBACK_DAYS * SECS_PER_DAY
    days = {d // SECS_PER_DAY for d in all_dates if d >= start}
    if not days:
        return QUIET_YEAR_STABILITY
    span_days = (now - min(days) * SECS_PER_DAY) / SECS_PER_DAY
    if span_days < 1.0:
        return 0.0
    rate = len(days) / span_days
    return round(math.exp(-rate * PERIOD_DAYS), 6)


def interval_stability(value: str) -> float | None:
    """Stability for a ``user.update-interval`` value, or None if it is not one.

    Accepts the names hourly/daily/weekly/biweekly/monthly/quarterly/yearly,
    ``never``, or a number of days (``"10"`` or ``"10d"``):
    ``exp(-7 / interval_days)``.
    """
    v = value.strip().lower()
    if v == "never":
        return 1.0
    days = _INTERVALS.get(v)
    if days is None:
        try:
            days = float(v[:-1] if v.endswith("d") else v)
        except ValueError:
            return None
        if not math.isfinite(days) or days <= 0:
            return None
    return round(math.exp(-PERIOD_DAYS / days), 6)
