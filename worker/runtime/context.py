"""What a handler gets: :class:`JobContext` (settings, command, timed store, compute, deadline).

Timings are wall time per stage: overlapping calls of one stage (``asyncio.gather`` of several
``get_ndarray``) count once, so ``storage_get + compute + storage_put <= total`` holds for handlers
that do not overlap different stages.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from worker.errors import DeadlineExceeded
from worker.storage.base import ForwardingStore, ObjectStore

if TYPE_CHECKING:
    from schemas.envelopes import Command
    from worker.runtime.pool import ComputePool
    from worker.settings import Settings

T = TypeVar("T")

# The store methods by the stage they are timed into (what :class:`TimedStore` overrides).
GET_METHODS = frozenset({"get_ndarray", "fetch_ndarray", "get_bytes_list", "info", "exists", "list_balls"})
PUT_METHODS = frozenset({"put_ndarray", "put_blob", "put_bytes_list", "delete"})


class StageMeter:
    """Accumulates the wall time during which at least one call of a stage was running."""

    __slots__ = ("_active", "_since", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self._active = 0
        self._since = 0.0

    def enter(self) -> None:
        if self._active == 0:
            self._since = time.perf_counter()
        self._active += 1

    def exit(self) -> None:
        self._active -= 1
        if self._active == 0:
            self.total += time.perf_counter() - self._since

    def value(self) -> float:
        """Total so far, including a call still running."""
        if self._active:
            return self.total + time.perf_counter() - self._since
        return self.total


class TimedStore(ForwardingStore):
    """The object store a handler sees: reads are timed into ``storage_get``, writes and deletes into
    ``storage_put``; ``ping``, ``aclose`` and attributes outside the interface pass through untimed."""

    def __init__(self, store: ObjectStore, get_meter: StageMeter, put_meter: StageMeter) -> None:
        self.inner = store
        self.backend = getattr(store, "backend", type(store).__name__)
        self._get = get_meter
        self._put = put_meter

    async def _forward(
        self, op: str, ball_id: str | None, call: Callable[[], Awaitable[T]], *, array: Any = None
    ) -> T:
        meter = self._put if op in ("put", "delete") else self._get
        meter.enter()
        try:
            return await call()
        finally:
            meter.exit()


class Resources(dict[str, Any]):
    """Per-worker shared objects loaded once (e.g. public key material), with a lock per name."""

    def __init__(self) -> None:
        super().__init__()
        self._locks: dict[str, asyncio.Lock] = {}

    async def get_or_load(self, name: str, loader: Callable[[], Any]) -> Any:
        """Return ``self[name]``, loading it once with ``loader`` under a per-name lock.

        ``loader`` may be async, or sync (then it runs in a thread so the event loop keeps serving).
        A failing loader stores nothing: the next caller tries again.
        """
        if name in self:
            return self[name]
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self:
                return self[name]
            if inspect.iscoroutinefunction(loader):
                value = await loader()
            else:
                value = await asyncio.to_thread(loader)
                if inspect.isawaitable(value):
                    value = await value
            self[name] = value
            return value


@dataclass(frozen=True, slots=True)
class WorkerServices:
    """What every job of one worker shares: its settings, object store, compute pool and resources.

    Built once by the service (or an in-process port) and handed to the dispatcher, which gives each
    job a :class:`JobContext` over it.
    """

    settings: Settings
    store: ObjectStore
    pool: ComputePool | None
    resources: Resources


class JobContext:
    """Everything a handler needs for one command.

    * ``settings``, ``command``, ``node_id``, ``job_id``, ``op``, ``log``
    * ``store``: the object store, timed (see :class:`TimedStore`)
    * ``await compute(fn, *args, **kwargs)``: run a picklable top-level function in the process pool
    * ``remaining()``: seconds left before the command's deadline, or None
    * ``resources`` / ``await resource(name, loader)``: per-worker lazily loaded shared objects
    """

    __slots__ = (
        "_compute",
        "_deadline",
        "_get",
        "_pool",
        "_put",
        "command",
        "log",
        "node_id",
        "resources",
        "settings",
        "store",
    )

    def __init__(
        self,
        services: WorkerServices,
        command: Command,
        *,
        deadline: float | None = None,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.settings = services.settings
        self.command = command
        self.node_id = services.settings.node_id
        self._get = StageMeter()
        self._put = StageMeter()
        self._compute = StageMeter()
        self.store: ObjectStore = TimedStore(services.store, self._get, self._put)
        self._pool = services.pool
        self.resources = services.resources
        self._deadline = deadline  # loop.time() based, None = no deadline
        self.log = log or logging.getLogger("rory.worker.job")

    @property
    def job_id(self) -> str:
        return self.command.job_id or self.command.id

    @property
    def op(self) -> str:
        return self.command.op

    def remaining(self) -> float | None:
        """Seconds until the deadline (may be negative), or None when the command has none."""
        if self._deadline is None:
            return None
        return self._deadline - asyncio.get_running_loop().time()

    async def compute(
        self, fn: Callable[..., T], /, *args: Any, inline: bool = False, **kwargs: Any
    ) -> T:
        """Run ``fn(*args, **kwargs)`` in a compute process, timed into ``timings.compute``.

        Waits for a free slot if all are busy. When the deadline passes, the runtime cancels the
        handler; the slot's process is killed and restarted and the command gets 504. ``inline``
        runs ``fn`` on the event loop instead, for work so small (well under a millisecond) that the
        hop to a compute process costs more than the work; it is timed the same way.
        """
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("deadline passed before the computation started")
        if not inline and self._pool is None:
            raise RuntimeError("this worker has no compute pool")
        self._compute.enter()
        try:
            if inline:
                return fn(*args, **kwargs)
            assert self._pool is not None
            return await self._pool.run(fn, *args, **kwargs)
        finally:
            self._compute.exit()

    async def resource(self, name: str, loader: Callable[[], Any] | Callable[[], Awaitable[Any]]) -> Any:
        """A per-worker shared object, loaded once by ``loader`` (see :meth:`Resources.get_or_load`)."""
        return await self.resources.get_or_load(name, loader)

    def stage_timings(self) -> tuple[float, float, float]:
        """(storage_get, compute, storage_put) seconds so far."""
        return self._get.value(), self._compute.value(), self._put.value()


__all__ = [
    "GET_METHODS",
    "PUT_METHODS",
    "JobContext",
    "Resources",
    "StageMeter",
    "TimedStore",
    "WorkerServices",
]
