"""The "worker port": how a protocol driver sends one command and gets its typed result.

A driver (``dataowner/drivers/*``) only knows operations, :class:`schemas.operations.Params` models
and :class:`schemas.operations.Result` models; a port turns them into a Command envelope, delivers it
and parses the Reply. Two ports exist: :class:`dataowner.nats_port.NatsPort` (production, with
retries) and :class:`dataowner.inprocess_port.InProcessPort` (the worker's own dispatcher and
handlers in this process: tests and benchmarks without NATS).

Every call can report a :class:`CallRecord` to an observer: where it ran, the worker's timings, the
time the owner waited and the bytes each way. That is what the job's accounting is built from.
"""

from __future__ import annotations

import random
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from dataowner.errors import BadResult, WorkerError
from schemas import codec
from schemas.envelopes import PROTOCOL_VERSION, Reply, Timings
from schemas.operations import Op, Params, Result

__all__ = [
    "CallObserver",
    "CallRecord",
    "Outgoing",
    "RetryEvent",
    "RetryPolicy",
    "WorkerPort",
    "command_envelope",
    "dump_params",
    "new_id",
    "parse_reply",
    "raise_error",
]

R = TypeVar("R", bound=Result)


def new_id(prefix: str = "") -> str:
    """A short random id that is a valid storage key, job id and subject token."""
    return f"{prefix}{secrets.token_hex(6)}"


@dataclass(frozen=True)
class RetryEvent:
    """One retry a port is about to make (reported to the observer, shown by the progress display)."""

    op: str
    command_id: str
    attempt: int  # 1 for the first retry
    delay: float
    reason: str


@dataclass
class CallRecord:
    """What one command cost, as the owner saw it (all attempts together)."""

    op: str
    command_id: str
    node_id: str = ""
    timings: Timings = field(default_factory=Timings)
    wait_seconds: float = 0.0  # wall time inside the port call (delivery, worker, retries)
    bytes_up: int = 0  # encoded command bytes, every attempt
    bytes_down: int = 0  # encoded reply bytes
    attempts: int = 0


class CallObserver(Protocol):
    def retry(self, event: RetryEvent) -> None: ...

    def record(self, record: CallRecord) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Retry budget of a port: ``retries`` more attempts after the first, waiting
    ``backoff * 2**i`` seconds (capped at ``max_backoff``) scaled by a random factor in [0.5, 1.0]
    (jitter, so owners that failed together do not come back together)."""

    retries: int = 5
    backoff: float = 0.2
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("retry back-off must be >= 0")

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds before retry number ``attempt`` (0-based)."""
        base = min(self.max_backoff, self.backoff * 2**attempt)
        return base * (0.5 + 0.5 * rng())


def dump_params(params: Params) -> dict[str, Any]:
    """The ``params`` map of a Command: field names, only what the driver set, no ``None``."""
    return params.model_dump(mode="json", by_alias=False, exclude_none=True, exclude_unset=True)


def command_envelope(
    op: str, params: Params, command_id: str, job_id: str | None, deadline_s: float | None
) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": command_id,
        "job_id": job_id or command_id,
        "op": op,
        "ts": time.time(),
        "params": dump_params(params),
        "deadline_s": deadline_s,
    }


def parse_reply(op: str, data: Mapping[str, Any], expect: type[R]) -> tuple[Reply, R | None]:
    """Validate a Reply; on success also its result as ``expect`` (``None`` for an error Reply)."""
    reply = Reply.model_validate(data)
    return reply, (_result(op, reply, expect) if reply.ok else None)


def _result(op: str, reply: Reply, expect: type[R]) -> R:
    try:
        return expect.model_validate(reply.result or {})
    except ValidationError as error:
        raise BadResult(op, f"result is not a {expect.__name__}: {error}", reply.node_id) from None


def raise_error(op: str, reply: Reply) -> WorkerError:
    err = reply.error
    if err is None:  # pragma: no cover - Reply's own validation requires it
        return BadResult(op, "error Reply without error", reply.node_id)
    return WorkerError(op, err.code, err.type, err.message, err.retryable, reply.node_id)


@dataclass
class Outgoing:
    """One command on its way: what a transport needs to deliver it, and the record it accounts into."""

    op: str
    params: Params
    record: CallRecord
    node: str | None
    deadline_s: float | None
    job_id: str | None
    observer: CallObserver | None
    idempotent: bool

    @property
    def command_id(self) -> str:
        return self.record.command_id

    def envelope(self, deadline_s: float | None) -> dict[str, Any]:
        return command_envelope(self.op, self.params, self.command_id, self.job_id, deadline_s)

    def attempt(self, envelope: Mapping[str, Any]) -> bytes:
        """The bytes of one attempt, counted (every attempt's bytes are part of what the command cost)."""
        data = codec.encode_msgpack(dict(envelope))
        self.record.attempts += 1
        self.record.bytes_up += len(data)
        return data


class WorkerPort(ABC):
    """How the data owner reaches workers, whatever carries the commands (NATS, or this process).

    :meth:`call` sends one command of ``op`` and returns its result parsed as ``expect``: it names
    the command, times it, reports its :class:`CallRecord` to the observer and turns the Reply into
    the typed result, or raises :class:`dataowner.errors.WorkerError` for an error Reply (after the
    port's retries) and :class:`dataowner.errors.NoWorkerError` when nobody serves the subject.
    ``idempotent=False`` marks a command that must not run twice (a secure k-means step reads state
    it rewrites): a port re-sends it only where a second delivery cannot run it again. A subclass
    only delivers the command and returns its final Reply (:meth:`exchange`), counting attempts and
    bytes.
    """

    async def call(
        self,
        op: Op | str,
        params: Params,
        expect: type[R],
        *,
        node: str | None = None,
        deadline_s: float | None = None,
        job_id: str | None = None,
        observer: CallObserver | None = None,
        idempotent: bool = True,
    ) -> R:
        await self.prepare()
        op_name = op.value if isinstance(op, Op) else op
        record = CallRecord(op=op_name, command_id=new_id("cmd"))
        started = time.perf_counter()
        try:
            reply = await self.exchange(
                Outgoing(op_name, params, record, node, deadline_s, job_id, observer, idempotent)
            )
        finally:
            record.wait_seconds = time.perf_counter() - started
        record.node_id, record.timings = reply.node_id, reply.timings
        if observer is not None:
            observer.record(record)
        if not reply.ok:
            raise raise_error(op_name, reply)
        return _result(op_name, reply, expect)

    async def prepare(self) -> None:
        """Whatever must be ready before a command is sent (a connection); not part of its wait."""
        return None

    @abstractmethod
    async def exchange(self, command: Outgoing) -> Reply:
        """Deliver ``command`` and return its final Reply (after the port's own retries)."""

    @abstractmethod
    async def close(self) -> None: ...
