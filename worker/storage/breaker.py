"""A circuit breaker for storage, and the command deadline that bounds every storage retry loop.

Without a breaker each command against a dead store waits out the whole retry schedule (with the
seed's ``MICTLANX_MAX_RETRIES=10``, ``MICTLANX_DELAY=2`` that is more than 40 s), and so does every
command after it. The breaker counts *consecutive* failed storage attempts; at ``failure_threshold``
it opens, and from then on every attempt fails at once with a retryable 503
(:class:`~worker.errors.StorageUnavailable`) naming the last error. While open, one background probe
(``probe``, normally the store's ``ping``) runs every ``probe_interval`` seconds; the first success
closes the breaker, so storage that comes back is used again within one interval without any command
having to pay for the test. A success of any real attempt closes it too.

The deadline: :func:`storage_deadline` sets, for the coroutine that runs one command and every task it
starts (``contextvars`` are copied into tasks), the monotonic time by which the command must end.
:func:`pause` sleeps between retries but never past that time: when the remaining time is shorter
than the sleep, it raises at once instead of sleeping into a deadline that cannot be met.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from worker.errors import StorageUnavailable

log = logging.getLogger("rory.worker.storage")

Probe = Callable[[], Awaitable[bool]]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "rory_storage_deadline", default=None
)


@contextlib.contextmanager
def storage_deadline(at: float | None) -> Iterator[None]:
    """Bound every storage retry loop run inside this block (and the tasks it starts) by ``at``.

    ``at`` is a ``time.monotonic()`` instant (the event loop's clock), None for no deadline.
    """
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current command's deadline; None when it has none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


async def pause(seconds: float, what: str) -> None:
    """Sleep ``seconds`` between two attempts, unless the command's deadline comes first (then raise)."""
    left = remaining()
    if left is not None and left <= seconds:
        raise StorageUnavailable(f"{what}: the command's deadline leaves no time for another attempt")
    await asyncio.sleep(seconds)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True)
class BreakerStatus:
    """What health and heartbeats report about storage."""

    state: BreakerState
    consecutive_failures: int
    last_error: str | None

    @property
    def reachable(self) -> bool:
        return self.state is BreakerState.CLOSED


class CircuitBreaker:
    """Consecutive-failure breaker with a background half-open probe (see the module docstring)."""

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        probe_interval: float = 1.0,
        probe: Probe | None = None,
    ) -> None:
        if failure_threshold < 1 or probe_interval <= 0:
            raise ValueError("failure_threshold must be >= 1 and probe_interval > 0")
        self.failure_threshold = failure_threshold
        self.probe_interval = probe_interval
        self._probe = probe
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._last_error: str | None = None
        self._opened_at = 0.0
        self._prober: asyncio.Task[None] | None = None

    def attach_probe(self, probe: Probe) -> None:
        """Set the half-open probe (the store it guards is built after the breaker)."""
        self._probe = probe

    @property
    def status(self) -> BreakerStatus:
        return BreakerStatus(self._state, self._failures, self._last_error)

    @property
    def is_open(self) -> bool:
        return self._state is BreakerState.OPEN

    def admit(self, what: str) -> None:
        """Raise a retryable 503 at once while the breaker is open.

        Without a probe, a real attempt is let through once per ``probe_interval`` instead (half-open
        by time), so a breaker can never stay open for good.
        """
        if self._state is BreakerState.OPEN:
            if self._probe is None and time.monotonic() - self._opened_at >= self.probe_interval:
                self._opened_at = time.monotonic()
                return
            raise StorageUnavailable(
                f"{what}: storage is unavailable (circuit open after: {self._last_error})"
            )

    def succeeded(self) -> None:
        if self._state is BreakerState.OPEN:
            log.info("storage is reachable again; circuit closed")
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._last_error = None

    def failed(self, error: BaseException | str) -> None:
        self._failures += 1
        self._last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._state = BreakerState.OPEN
            self._opened_at = time.monotonic()
            log.warning(
                "storage failed %d times in a row; circuit open, answering 503 at once: %s",
                self._failures,
                self._last_error,
            )
            self._start_probing()

    def _start_probing(self) -> None:
        if self._probe is None or (self._prober is not None and not self._prober.done()):
            return
        try:
            self._prober = asyncio.get_running_loop().create_task(self._probe_until_closed())
        except RuntimeError:  # no loop (a synchronous caller): the next real success closes it
            self._prober = None

    async def _probe_until_closed(self) -> None:
        assert self._probe is not None
        while self._state is BreakerState.OPEN:
            await asyncio.sleep(self.probe_interval)
            try:
                ok = await asyncio.wait_for(self._probe(), timeout=max(self.probe_interval, 0.5))
            except Exception as error:  # a failed probe only keeps the circuit open
                self._last_error = f"probe: {type(error).__name__}: {error}"
                continue
            if ok:
                self.succeeded()

    async def aclose(self) -> None:
        if self._prober is not None and not self._prober.done():
            self._prober.cancel()
            with contextlib.suppress(BaseException):
                await self._prober
        self._prober = None


__all__ = [
    "BreakerState",
    "BreakerStatus",
    "CircuitBreaker",
    "pause",
    "remaining",
    "storage_deadline",
]
