"""One running job: its report, progress events, and the owner's accounting.

Accounting (the hooks a ledger reads): per round and in total, the owner's own CPU time
(``time.thread_time()`` around owner work: encryption, decryption, key work, UDM building; see
:meth:`Job.owner`) kept apart from the wall time spent waiting on the worker (inside the port's
calls, retries included), and the bytes the owner uploads and downloads (storage objects through
:class:`MeteredStore` plus the encoded commands and replies).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from core.payload import payload_bytes
from dataowner.port import CallRecord, RetryEvent, WorkerPort, new_id
from dataowner.progress import ProgressCallback, ProgressEvent
from schemas.operations import Params, Result

__all__ = ["Job", "JobReport", "MeteredStore"]

R = TypeVar("R", bound=Result)

_ROUND_KEYS = (
    "commands",
    "request",
    "worker",
    "compute",
    "storage",
    "queued",
    "owner_cpu",
    "wait",
    "bytes_up",
    "bytes_down",
    "retries",
)


@dataclass
class JobReport:
    """What one job did and how long it took.

    ``total_seconds`` covers everything from the first byte encrypted to the last label decoded;
    ``prepare_seconds`` the local part before the first command (encryption, UDM, uploads);
    ``per_round_seconds`` one entry per protocol round as seen by the owner; ``worker_seconds`` the
    sum of the workers' own ``timings.total``. ``rounds`` details each round: ``seconds`` (owner's
    view), ``request`` (time inside the port's calls), the workers' ``worker``/``compute``/
    ``storage``/``queued`` seconds, and the owner's accounting of the round: ``owner_cpu``,
    ``wait``, ``bytes_up``, ``bytes_down`` and ``retries``. The job totals of the same are
    ``owner_cpu_seconds``, ``wait_seconds``, ``bytes_up``, ``bytes_down`` and ``retries``.
    """

    op: str
    job_id: str
    dataset_id: str
    n: int
    labels: np.ndarray | None = None
    predictions: np.ndarray | None = None
    iterations: int = 1
    converged: bool | None = None
    per_round_seconds: list[float] = field(default_factory=list)
    shifts: list[float] = field(default_factory=list)
    total_seconds: float = 0.0
    prepare_seconds: float = 0.0
    worker_seconds: float = 0.0
    storage_seconds: float = 0.0
    commands: int = 0
    nodes: list[str] = field(default_factory=list)
    rounds: list[dict[str, float]] = field(default_factory=list)
    owner_cpu_seconds: float = 0.0
    wait_seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    retries: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> np.ndarray | None:
        """Labels for clustering, predictions for classification/regression."""
        return self.labels if self.labels is not None else self.predictions

    def summary(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "job_id": self.job_id,
            "dataset_id": self.dataset_id,
            "n": self.n,
            "iterations": self.iterations,
            "converged": self.converged,
            "total_seconds": round(self.total_seconds, 4),
            "prepare_seconds": round(self.prepare_seconds, 4),
            "worker_seconds": round(self.worker_seconds, 4),
            "owner_cpu_seconds": round(self.owner_cpu_seconds, 4),
            "wait_seconds": round(self.wait_seconds, 4),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "retries": self.retries,
            "per_round_seconds": [round(s, 4) for s in self.per_round_seconds],
            "nodes": self.nodes,
        }


class MeteredStore:
    """The owner's store seen by one job: counts the payload bytes of every put and get into the job."""

    def __init__(self, store: Any, job: Job) -> None:
        self._store = store
        self._job = job

    @property
    def inner(self) -> Any:
        return self._store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr) or not (name.startswith("put") or name.startswith("get")):
            return attr
        upload = name.startswith("put")

        async def metered(*args: Any, **kwargs: Any) -> Any:
            value = await attr(*args, **kwargs)
            if upload:
                self._job.count(up=payload_bytes(args[1] if len(args) > 1 else kwargs.get("value")))
            else:
                self._job.count(down=payload_bytes(value))
            return value

        return metered


class Job:
    """Bookkeeping of one running job: timing, progress events, accounting, typed command calls."""

    def __init__(
        self,
        port: WorkerPort,
        store: Any,
        op: str,
        dataset_id: str,
        n: int,
        max_iterations: int,
        progress: ProgressCallback | None,
        *,
        node: str | None = None,
        deadline_s: float | None = None,
    ) -> None:
        self.port = port
        self.store = MeteredStore(store, self)
        self.job_id = new_id("job")
        self.node = node
        self.deadline_s = deadline_s
        self.started = time.perf_counter()
        self.report = JobReport(op=op, job_id=self.job_id, dataset_id=dataset_id, n=n)
        self.max_iterations = max_iterations
        self.progress = progress
        self._round: dict[str, float] = {}
        self._iteration = 0

    # ------------------------------------------------------------------ progress
    def emit(self, phase: str, iteration: int = 0, shift: float | None = None, message: str = "") -> None:
        if iteration:
            self._iteration = iteration
        if self.progress is None:
            return
        self.progress(
            ProgressEvent(
                op=self.report.op,
                job_id=self.job_id,
                phase=phase,
                iteration=iteration,
                max_iterations=self.max_iterations,
                shift=shift,
                elapsed=time.perf_counter() - self.started,
                message=message,
            )
        )

    def prepared(self) -> None:
        self.report.prepare_seconds = time.perf_counter() - self.started
        self.emit("prepared")

    # ------------------------------------------------------------------ accounting
    def _add(self, key: str, value: float) -> None:
        if self._round:
            self._round[key] += value

    @contextlib.contextmanager
    def owner(self) -> Iterator[None]:
        """Owner work (encryption, decryption, keys): its CPU time goes to ``owner_cpu``.

        Only synchronous code belongs inside: an ``await`` would count other tasks' CPU too.
        """
        started = time.thread_time()
        try:
            yield
        finally:
            spent = time.thread_time() - started
            self.report.owner_cpu_seconds += spent
            self._add("owner_cpu", spent)

    def count(self, *, up: int = 0, down: int = 0) -> None:
        self.report.bytes_up += up
        self.report.bytes_down += down
        self._add("bytes_up", up)
        self._add("bytes_down", down)

    # CallObserver
    def retry(self, event: RetryEvent) -> None:
        self.report.retries += 1
        self._add("retries", 1)
        self.emit(
            "retry",
            self._iteration,
            message=(
                f"{event.reason}: re-sending {event.command_id} in {event.delay:.2f}s (retry {event.attempt})"
            ),
        )

    def record(self, record: CallRecord) -> None:
        timings = record.timings
        report = self.report
        report.commands += 1
        report.worker_seconds += timings.total
        report.storage_seconds += timings.storage_get + timings.storage_put
        report.wait_seconds += record.wait_seconds
        self.count(up=record.bytes_up, down=record.bytes_down)
        if self._round:
            self._round["commands"] += 1
            self._round["request"] += record.wait_seconds
            self._round["wait"] += record.wait_seconds
            self._round["worker"] += timings.total
            self._round["compute"] += timings.compute
            self._round["storage"] += timings.storage_get + timings.storage_put
            self._round["queued"] += timings.queued
        if record.node_id and record.node_id not in report.nodes:
            report.nodes.append(record.node_id)

    @contextlib.contextmanager
    def round(self) -> Iterator[None]:
        """One protocol round as the owner sees it; a failing round records nothing."""
        started = time.perf_counter()
        self._round = dict.fromkeys(_ROUND_KEYS, 0.0)
        yield
        elapsed = time.perf_counter() - started
        self.report.per_round_seconds.append(elapsed)
        self.report.rounds.append({"seconds": elapsed, **self._round})
        self._round = {}

    # ------------------------------------------------------------------ commands
    async def call(self, params: Params, expect: type[R], *, idempotent: bool = True) -> R:
        """Send one command of this job's operation through the port and account for it."""
        return await self.port.call(
            self.report.op,
            params,
            expect,
            node=self.node,
            deadline_s=self.deadline_s,
            job_id=self.job_id,
            observer=self,
            idempotent=idempotent,
        )

    def finish(self, phase: str = "done") -> JobReport:
        self.report.total_seconds = time.perf_counter() - self.started
        self.emit(phase, self.report.iterations, self.report.shifts[-1] if self.report.shifts else None)
        return self.report
