"""Bounded, growing back-off for the MictlanX client.

The reference client's defaults (``backoff_factor=0.5``) make its GET delays *shrink*. Ours grow:
the sleep before retry ``k`` (1-based) is ``min(max_delay, delay * (1 + backoff_factor) ** (k - 1))``,
jittered down to no less than half of that. So with ``MICTLANX_DELAY=2``,
``MICTLANX_BACKOFF_FACTOR=0.5`` the caps are 2, 3, 4.5, 6.75, ... s, never more than ``max_delay``;
the whole sleeping budget of one operation is :meth:`RetryPolicy.max_total_sleep`, and its worst-case
duration is ``(max_retries + 1) * timeout + max_total_sleep()``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 10
    delay: float = 2.0
    backoff_factor: float = 0.5
    max_delay: float = 30.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.delay < 0 or self.backoff_factor < 0 or self.max_delay < 0:
            raise ValueError("retry parameters must be non-negative")

    @property
    def attempts(self) -> int:
        """Total attempts of one operation (the first try plus the retries)."""
        return self.max_retries + 1

    def cap(self, retry: int) -> float:
        """Upper bound of the sleep before retry number ``retry`` (1-based)."""
        if retry < 1:
            return 0.0
        growth = (1.0 + self.backoff_factor) ** min(retry - 1, 200)
        return min(self.max_delay, self.delay * growth)

    def sleep_for(self, retry: int) -> float:
        """The actual sleep: the cap, or with jitter a uniform value in ``[cap / 2, cap]``."""
        cap = self.cap(retry)
        return random.uniform(cap / 2, cap) if self.jitter and cap > 0 else cap

    def max_total_sleep(self) -> float:
        """Worst-case time spent sleeping across all retries of one operation."""
        return sum(self.cap(k) for k in range(1, self.max_retries + 1))
