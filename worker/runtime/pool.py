"""The compute pool: WORKER_CAPACITY single-process slots, started with ``forkserver``.

Why processes: TenSEAL holds the GIL, so a thread would still starve the event loop (heartbeats,
health, $SRV). Why ``forkserver``: forking a process that runs an event loop and threads is unsafe;
the fork server is a clean single-threaded process that imports the preload modules once, so each
slot starts in milliseconds instead of re-importing numpy/TenSEAL.

Why one executor per slot instead of one ``ProcessPoolExecutor(max_workers=N)``: a slot can be
killed and replaced on its own. When a job's deadline passes, its process is killed at once (the
result would be discarded anyway) and the slot is restarted, so capacity comes back immediately
instead of staying busy until the computation returns. A job that crashes its process
(``BrokenProcessPool``) only takes down its own slot, which is restarted; the other slots keep
running their jobs.

Functions given to :meth:`ComputePool.run` must be picklable top-level functions; their arguments and
results travel by pickle between our own processes only (never data from the bus), except large
numpy arrays, which go through pooled memory-mapped files (``worker/runtime/shared.py``): an array
that already lives in one (the storage cache reads into them) crosses without any copy, and large
results come back as arrays mapped on their file. Functions must not keep references to their array
arguments after returning (the files are reused).

Slots die with their worker. A SIGKILLed worker runs no cleanup, and its slots would live on: each
holds both ends of its own call queue, so it never sees EOF, and the fork server waits for its
last client. So every slot watches its worker: a watchdog thread exits the process as soon as the
worker is gone (its pid dead, a zombie or reused: the start time differs) or the slot's parent
changes, and on Linux the slot also asks the kernel for SIGKILL when its parent (the fork server)
dies (``PR_SET_PDEATHSIG``). When the slots are gone the fork server and the resource tracker see
EOF and exit. The dead worker's transfer files are removed by the next worker's pool start
(``shared.sweep_stale``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from worker.aio import await_to_end
from worker.errors import Internal
from worker.runtime import shared

log = logging.getLogger("rory.worker.pool")

T = TypeVar("T")

DEFAULT_PRELOAD = ("numpy",)
DEFAULT_NICENESS = 5
#: Seconds between two looks of a slot's watchdog at its worker.
WATCHDOG_INTERVAL = 0.25
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ComputeCrashed(Internal):
    """A compute process died while running a job (segfault, os._exit, out of memory)."""

    type = "COMPUTE_CRASHED"


# ----------------------------------------------------------------------------- child side
_PROCESS_CACHE: dict[str, Any] = {}


def process_cached(name: str, loader: Callable[[], T]) -> T:
    """Per-process cache for compute functions (e.g. a deserialized public CKKS context).

    Runs in a pool process: the first job that needs ``name`` loads it, later jobs on the same
    process reuse it. A slot that is restarted starts with an empty cache.
    """
    try:
        return _PROCESS_CACHE[name]
    except KeyError:
        value = _PROCESS_CACHE[name] = loader()
        return value


_BLAS_SETTERS = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
)


def limit_blas_threads(threads: int) -> bool:
    """Cap the BLAS thread pool of this process (numpy's OpenBLAS) at ``threads``; True if capped.

    Why: every slot's OpenBLAS starts one spinning thread per core. With WORKER_CAPACITY slots on the
    same cores those threads busy-wait against each other and everything else: a 100k x 8 SKMeans
    step measured 15-20 ms with one BLAS thread per slot and 50-3000 ms (CPU time, not just wall)
    with the default on 2 shared cores. Uses threadpoolctl when installed, else OpenBLAS's own
    setter found among the loaded libraries (Linux).
    """
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        threadpool_limits(limits=threads, user_api="blas")
        return True
    import ctypes

    capped = False
    with contextlib.suppress(OSError):
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            libraries = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
        for path in sorted(libraries):
            with contextlib.suppress(OSError):
                library = ctypes.CDLL(path)
                for name in _BLAS_SETTERS:
                    setter = getattr(library, name, None)
                    if setter is not None:
                        setter(ctypes.c_int(threads))
                        capped = True
                        break
    return capped


def process_identity(pid: int) -> str | None:
    """Something that changes when ``pid`` dies or is reused: its start time (Linux ``/proc``), else
    ``"alive"`` while a signal can reach it. None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (not Linux)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return None  # another user's process: our worker's pid was reused
        return "alive"
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ": field 3 (state) onwards
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()  # field 22: start time in clock ticks since boot


def _die_with_parent() -> bool:
    """Linux: SIGKILL this process when its parent dies. True when the kernel accepted it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(owner: int, identity: str | None, parent: int, interval: float) -> None:
    """Watchdog loop of a slot: exit the process once its worker or its parent is gone. Runs in a
    daemon thread of the compute process (:func:`start_watchdog`), never on an event loop, so it
    simply sleeps between checks."""
    while True:
        if os.getppid() != parent or process_identity(owner) != identity:
            os._exit(0)  # nobody is left to give a result to, nor to wait for one
        time.sleep(interval)


def start_watchdog(owner: int, interval: float = WATCHDOG_INTERVAL) -> threading.Thread:
    """In a compute process: die with the worker ``owner`` (see the module docstring)."""
    parent = os.getppid()
    if parent != owner:
        # A fork server's child: the kernel kills us when the fork server dies. (Not with the worker as
        # the direct parent: PDEATHSIG follows the parent *thread*, and slots are started from helper
        # threads, whose exit must not kill them.)
        _die_with_parent()
        if os.getppid() != parent:  # it died before prctl took effect
            os._exit(0)
    identity = process_identity(owner)
    if identity is None:  # the worker is gone already (stopped while this process was starting)
        os._exit(0)
    thread = threading.Thread(
        target=_watch, args=(owner, identity, parent, interval), name="rory-watchdog", daemon=True
    )
    thread.start()
    return thread


def _init_child(
    preload: tuple[str, ...], niceness: int, blas_threads: int = 1, owner: int | None = None
) -> None:
    if owner is not None:
        start_watchdog(owner)
    # The parent handles SIGINT/SIGTERM and stops gracefully; a terminal Ctrl-C reaches the whole
    # process group, so children ignore it and are stopped by the parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if niceness:
        # Compute yields the CPU to the event-loop process, so health, heartbeats and $SRV stay
        # responsive when every slot is busy (inside a container this only ranks our processes).
        with contextlib.suppress(OSError):
            os.nice(niceness)
    for module in preload:
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    if blas_threads > 0:
        with contextlib.suppress(Exception):
            limit_blas_threads(blas_threads)


def _ready() -> int:
    return os.getpid()


# ----------------------------------------------------------------------------- parent side
_FORKSERVER_CONFIGURED = False


def _usable_cpus() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _context(method: str, preload: tuple[str, ...]) -> multiprocessing.context.BaseContext:
    global _FORKSERVER_CONFIGURED
    ctx = multiprocessing.get_context(method)
    if method == "forkserver" and not _FORKSERVER_CONFIGURED:
        # Only effective before the fork server starts (once per interpreter).
        ctx.set_forkserver_preload(["__main__", *preload])  # type: ignore[attr-defined]
        _FORKSERVER_CONFIGURED = True
    return ctx


@dataclass(frozen=True)
class _ChildRecipe:
    """How a slot's process is started: the same for every slot of a pool, and for a replacement."""

    ctx: multiprocessing.context.BaseContext
    preload: tuple[str, ...]
    niceness: int
    blas_threads: int

    def executor(self) -> concurrent.futures.ProcessPoolExecutor:
        """A one-process executor whose process runs :func:`_init_child` first."""
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=self.ctx,
            initializer=_init_child,
            initargs=(self.preload, self.niceness, self.blas_threads, os.getpid()),
        )


class _Slot:
    """One process behind its own executor, so it can be killed and replaced alone."""

    __slots__ = ("_recipe", "busy", "executor", "index", "warm")

    def __init__(self, index: int, recipe: _ChildRecipe) -> None:
        self.index = index
        self.busy = False
        self._recipe = recipe
        self.executor = recipe.executor()
        self.warm: concurrent.futures.Future[int] = self.executor.submit(_ready)

    def pids(self) -> list[int]:
        processes = getattr(self.executor, "_processes", None) or {}
        return [p.pid for p in list(processes.values()) if p.pid is not None]

    def kill(self) -> None:
        """SIGKILL the slot's process; its pending future fails with BrokenProcessPool."""
        kill_workers = getattr(self.executor, "kill_workers", None)  # Python 3.14+
        if kill_workers is not None:
            kill_workers()
            return
        processes = getattr(self.executor, "_processes", None) or {}
        for process in list(processes.values()):
            with contextlib.suppress(Exception):
                process.kill()

    def replace(self) -> None:
        """Drop the executor (broken or killed) and start a fresh process in its place."""
        old = self.executor
        with contextlib.suppress(Exception):
            old.shutdown(wait=False, cancel_futures=True)
        self.executor = self._recipe.executor()
        self.warm = self.executor.submit(_ready)
        self.warm.add_done_callback(_consume)


def _consume(future: concurrent.futures.Future[Any]) -> None:
    # Retrieve the outcome of futures nobody awaits any more, so nothing logs "never retrieved".
    if not future.cancelled():
        future.exception()


class ComputePool:
    """Runs CPU-bound functions in ``size`` processes; at most ``size`` at once, others wait."""

    def __init__(
        self,
        size: int,
        *,
        preload: Iterable[str] = (),
        start_method: str = "forkserver",
        niceness: int = DEFAULT_NICENESS,
        blas_threads: int | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.size = size
        self._niceness = niceness
        # BLAS threads per slot: the usable cores shared by the slots (at least 1); 0 leaves BLAS alone.
        self.blas_threads = max(1, _usable_cpus() // size) if blas_threads is None else blas_threads
        self._preload = tuple(dict.fromkeys([*DEFAULT_PRELOAD, *preload]))
        self._method = start_method
        self._slots: list[_Slot] = []
        self._free: asyncio.Queue[_Slot] | None = None
        self._busy = 0
        self.restarts = 0  # slots replaced after a crash
        self.kills = 0  # slots killed because their job was cancelled (deadline, shutdown)
        self._closed = False
        self._starting: asyncio.Future[None] | None = None
        self._result_sizes: dict[str, list[int]] = {}  # large result sizes per function, for lending

    # -- lifecycle
    def start(self) -> None:
        """Start the slots' processes from a helper thread and return at once.

        The first start of the fork server imports the preload modules before it can fork, which
        takes a noticeable time; doing it in a thread keeps the event loop (and the ``started``
        announcement) free. A job arriving earlier simply waits for the first slot.
        """
        if self._free is not None:
            return
        loop = asyncio.get_running_loop()
        recipe = _ChildRecipe(
            _context(self._method, self._preload), self._preload, self._niceness, self.blas_threads
        )
        self._free = asyncio.Queue()
        self._starting = loop.run_in_executor(None, self._create_slots, recipe, loop)

    def _create_slots(self, recipe: _ChildRecipe, loop: asyncio.AbstractEventLoop) -> None:
        try:
            shared.sweep_stale()  # transfer files of workers that were killed (their slots are gone)
        except Exception as error:  # cleanup must never keep the pool from starting
            log.warning("could not sweep stale transfer files", extra={"error": repr(error)})
        for index in range(self.size):
            if self._closed:
                return
            slot = _Slot(index, recipe)  # blocks until forked
            slot.warm.add_done_callback(_consume)
            loop.call_soon_threadsafe(self._add_slot, slot)

    def _add_slot(self, slot: _Slot) -> None:
        if self._closed or self._free is None:
            slot.executor.shutdown(wait=False, cancel_futures=True)
            return
        self._slots.append(slot)
        self._free.put_nowait(slot)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every slot's process has started (imports done)."""

        async def ready() -> None:
            if self._starting is not None:
                await self._starting
                await asyncio.sleep(0)  # let the call_soon_threadsafe additions run
            futures = [asyncio.wrap_future(slot.warm) for slot in self._slots]
            await asyncio.gather(*futures, return_exceptions=True)

        await asyncio.wait_for(ready(), timeout)

    async def shutdown(self) -> None:
        """Stop every process. Jobs still running are killed (callers finish theirs first)."""
        self._closed = True
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
            await asyncio.sleep(0)
        slots, self._slots = self._slots, []
        for slot in slots:
            if slot.busy:
                slot.kill()
            slot.executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.gather(
            *(asyncio.to_thread(slot.executor.shutdown, True) for slot in slots), return_exceptions=True
        )
        shared.POOL.drain()  # idle transfer files (arrays still alive return theirs when freed)

    # -- state
    @property
    def busy(self) -> int:
        """Slots running a job now."""
        return self._busy

    @property
    def started(self) -> bool:
        return self._free is not None and not self._closed

    def pids(self) -> list[int]:
        return [pid for slot in self._slots for pid in slot.pids()]

    def healthy(self) -> bool:
        """Running with every slot (slots still starting count as healthy)."""
        if not self.started:
            return False
        return self._starting is None or not self._starting.done() or len(self._slots) == self.size

    # -- work
    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a free slot and return its result.

        Cancellation (a deadline, a shutdown) kills the slot's process and restarts it; a crashed
        process raises :class:`ComputeCrashed` and its slot is restarted. Exceptions raised by
        ``fn`` itself propagate unchanged.
        """
        if self._free is None or self._closed:
            raise Internal("the compute pool is not running")
        key = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}"
        keep: list[Any] = []  # copies made by pack: held until the child is done with their files
        spares: list[shared.Spare] = []
        used: list[str] = []
        tag = shared.new_tag()
        outcome = "failed"
        try:
            if shared.needs_copy((args, kwargs)):
                # Arrays already in a pooled transfer file (the storage cache's) cross as a path; others
                # are copied into one, in a thread so the event loop keeps answering health/heartbeats.
                args, kwargs = await asyncio.to_thread(shared.pack, (args, kwargs), keep)
            elif shared.has_large((args, kwargs)):
                args, kwargs = shared.pack((args, kwargs), keep)  # descriptions only: no copy
            # Lend idle files of the sizes this function returned last time: the child writes its
            # large results into pages that already exist (about 4x cheaper than a fresh tmpfs file).
            spares = shared.POOL.lend(self._result_sizes.get(key, ()))
            result = await self._run_in_slot(shared.call, fn, args, kwargs, spares, tag)
            keep.clear()  # the child is done with the input copies: free them before collecting
            sizes = shared.shared_sizes(result)
            if shared.has_shared(result):
                used = shared.result_paths(result)
                # To its end even when cancelled: discard_call below must not race the mapping.
                result = await await_to_end(shared.in_thread(shared.collect, result, spares))
            if len(self._result_sizes) < 1024 or key in self._result_sizes:
                self._result_sizes[key] = sizes
            outcome = "ok"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            keep.clear()
            if outcome == "cancelled":
                # The killed child may still be finishing a write into a lent file: never reuse them.
                for spare in spares:
                    shared.POOL.forget(spare.path)
            else:
                shared.give_back(spares, used)
            if outcome != "ok":
                shared.discard_call(tag)

    async def _run_in_slot(self, fn: Callable[..., T], /, *args: Any) -> T:
        assert self._free is not None
        slot = await self._free.get()
        self._busy += 1
        slot.busy = True
        try:
            try:
                future = slot.executor.submit(fn, *args)
            except (BrokenProcessPool, RuntimeError):
                self._restart(slot, crashed=True)
                future = slot.executor.submit(fn, *args)
            waiter = asyncio.wrap_future(future)
            try:
                return await asyncio.shield(waiter)
            except asyncio.CancelledError:
                if not future.done():
                    waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
                    slot.kill()
                    self.kills += 1
                    self._restart(slot, crashed=False)
                raise
            except BrokenProcessPool:
                self._restart(slot, crashed=True)
                raise ComputeCrashed(
                    f"the compute process running {getattr(args[0], '__name__', 'the job')} died "
                    "(crash, os._exit or out of memory); its slot was restarted"
                ) from None
        finally:
            self._busy -= 1
            slot.busy = False
            if not self._closed:
                self._free.put_nowait(slot)

    def _restart(self, slot: _Slot, *, crashed: bool) -> None:
        if self._closed:
            return
        started = time.perf_counter()
        slot.replace()
        if crashed:
            self.restarts += 1
        log.log(
            logging.WARNING if crashed else logging.INFO,
            "compute slot restarted",
            extra={
                "slot": slot.index,
                "reason": "crash" if crashed else "cancelled",
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )


__all__ = [
    "DEFAULT_PRELOAD",
    "ComputeCrashed",
    "ComputePool",
    "limit_blas_threads",
    "process_cached",
    "process_identity",
    "start_watchdog",
]
