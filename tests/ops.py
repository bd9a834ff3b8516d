"""Test-only operations (noop, echo, sleep, cpu-burn, fail, crash) and a tiny in-memory store.

Compute functions are top-level so the worker's pool processes can import them by name
(``tests.ops.burn``); the repository root is on ``sys.path`` via pytest's ``pythonpath``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas import codec
from worker.errors import NotFound, RoryError
from worker.inspect import command_body
from worker.runtime.context import JobContext
from worker.runtime.registry import Operation, Registry


# ----------------------------------------------------------------------------- compute functions
def burn(seconds: float) -> int:
    """Busy-loop for ``seconds`` of CPU (holds the GIL the way TenSEAL does)."""
    until = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < until:
        n += 1
    return n


def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def die() -> None:
    os._exit(13)


def raise_value_error(message: str) -> None:
    raise ValueError(message)


# ----------------------------------------------------------------------------- params
class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoParams(_Params):
    pass


class EchoParams(_Params):
    message: str = ""
    n: int = Field(0, ge=0)


class SleepParams(_Params):
    seconds: float = Field(0.1, ge=0, le=30)


class BurnParams(_Params):
    seconds: float = Field(0.2, ge=0, le=30)


class FailParams(_Params):
    code: int = 500
    message: str = "failed on purpose"
    kind: str = Field("rory", pattern="^(rory|value|runtime|compute_value)$")


class StoreParams(_Params):
    key: str
    values: list[float] = Field(default_factory=list)


class EchoResult(BaseModel):
    message: str
    n: int
    job_id: str
    node_id: str


# ----------------------------------------------------------------------------- handlers
async def noop(ctx: JobContext, params: NoParams) -> dict[str, Any]:
    return {}


async def echo(ctx: JobContext, params: EchoParams) -> EchoResult:
    return EchoResult(message=params.message, n=params.n, job_id=ctx.job_id, node_id=ctx.node_id)


async def sleep(ctx: JobContext, params: SleepParams) -> dict[str, Any]:
    await asyncio.sleep(params.seconds)
    return {"slept": params.seconds, "remaining": ctx.remaining()}


async def cpu_burn(ctx: JobContext, params: BurnParams) -> dict[str, Any]:
    loops = await ctx.compute(burn, params.seconds)
    return {"loops": loops, "pid": await ctx.compute(pid)}


async def crash(ctx: JobContext, params: NoParams) -> dict[str, Any]:
    await ctx.compute(die)
    return {}


async def fail(ctx: JobContext, params: FailParams) -> dict[str, Any]:
    if params.kind == "value":
        raise ValueError(params.message)
    if params.kind == "runtime":
        raise RuntimeError(params.message)
    if params.kind == "compute_value":
        await ctx.compute(raise_value_error, params.message)
    error = next((cls for cls in _error_classes() if cls.code == params.code), RoryError)
    raise error(params.message)


async def roundtrip(ctx: JobContext, params: StoreParams) -> dict[str, Any]:
    """Write then read an ndarray through ``ctx.store`` (exercises the storage timings)."""
    await ctx.store.put_ndarray(params.key, np.asarray(params.values, dtype=np.float64))
    back = await ctx.store.get_ndarray(params.key)
    total = await ctx.compute(add, 1, 2)
    return {"values": back.tolist(), "sum": total}


def _error_classes() -> list[type[RoryError]]:
    seen: list[type[RoryError]] = []
    todo: list[type[RoryError]] = [RoryError]
    while todo:
        cls = todo.pop(0)
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen


def register(registry: Registry) -> None:
    """Register every test operation (also usable as ``rory-worker run --operations tests.ops:register``)."""
    registry.preload("tests.ops")  # compute processes start with this module (and its imports) loaded
    registry.register(Operation("test.noop", NoParams, noop, "does nothing"))
    registry.register(Operation("test.echo", EchoParams, echo, "echoes its params", {"kind": "test"}))
    registry.register(Operation("test.sleep", SleepParams, sleep, "awaits asyncio.sleep"))
    registry.register(Operation("test.cpu-burn", BurnParams, cpu_burn, "burns CPU in the pool"))
    registry.register(Operation("test.crash", NoParams, crash, "kills its pool process"))
    registry.register(Operation("test.fail", FailParams, fail, "raises an error"))
    registry.register(Operation("test.store", StoreParams, roundtrip, "storage round trip"))


def test_registry(*extra: Operation) -> Registry:
    """The test operations, plus the ``extra`` ones a test module defines for itself."""
    registry = Registry()
    register(registry)
    for op in extra:
        registry.register(op)
    return registry


test_registry.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


# ----------------------------------------------------------------------------- in-memory store
class MemoryStore:
    """Just enough of the ObjectStore interface for runtime tests (no chunking, no tags)."""

    backend = "memory"

    def __init__(self, *, reachable: bool = True, delay: float = 0.0) -> None:
        self.objects: dict[str, Any] = {}
        self.reachable = reachable
        self.delay = delay
        self.calls: list[str] = []

    async def _wait(self, name: str) -> None:
        self.calls.append(name)
        if self.delay:
            await asyncio.sleep(self.delay)

    async def put_ndarray(self, ball_id: str, array: np.ndarray, **_: Any) -> None:
        await self._wait("put_ndarray")
        self.objects[ball_id] = np.array(array, copy=True)

    async def put_blob(self, ball_id: str, array: np.ndarray, **_: Any) -> None:
        await self.put_ndarray(ball_id, array)

    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        await self._wait("get_ndarray")
        if ball_id not in self.objects:
            raise NotFound(f"no object {ball_id!r}")
        return self.objects[ball_id]

    async def put_bytes_list(self, ball_id: str, items: list[bytes], **_: Any) -> None:
        await self._wait("put_bytes_list")
        self.objects[ball_id] = list(items)

    async def get_bytes_list(self, ball_id: str) -> list[bytes]:
        await self._wait("get_bytes_list")
        if ball_id not in self.objects:
            raise NotFound(f"no object {ball_id!r}")
        return self.objects[ball_id]

    async def info(self, ball_id: str) -> dict[str, Any]:
        await self._wait("info")
        if ball_id not in self.objects:
            raise NotFound(f"no object {ball_id!r}")
        return {"ball_id": ball_id}

    async def exists(self, ball_id: str) -> bool:
        await self._wait("exists")
        return ball_id in self.objects

    async def delete(self, ball_id: str) -> int:
        await self._wait("delete")
        return 1 if self.objects.pop(ball_id, None) is not None else 0

    async def ping(self) -> bool:
        return self.reachable

    async def aclose(self) -> None:
        return None


# ----------------------------------------------------------------------------- client helpers
#: A valid Command map (fresh id) for ``op``; ``fields`` override or add envelope fields. The same
#: builder as ``rory-worker req`` (worker/inspect.py), so tests send what the operator tool sends.
command = command_body


async def request(
    nc: Any,
    subject: str,
    body: Any,
    *,
    json_mode: bool = False,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 20.0,  # generous: a first compute call starts pool processes on a loaded machine
) -> tuple[dict[str, Any], Any]:
    """Send a command (or ``raw`` bytes) and return (decoded Reply, the reply Msg)."""
    hdrs = dict(headers or {})
    if json_mode:
        hdrs.setdefault("Content-Type", "application/json")
    data = raw if raw is not None else codec.encode(body, json_mode=json_mode)
    msg = await nc.request(subject, data, timeout=timeout, headers=hdrs or None)
    reply_json = codec.is_json(msg.headers)
    return codec.decode(msg.data, json_mode=reply_json, max_bytes=8 * 1024 * 1024), msg


class Collector:
    """Collects every message on a subject (decoded) so a test can wait for the n-th one."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.bodies: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.sub: Any = None

    @classmethod
    async def on(cls, nc: Any, subject: str) -> Collector:
        collector = cls()
        collector.sub = await nc.subscribe(subject, cb=collector._on_msg)
        await nc.flush()
        return collector

    async def _on_msg(self, msg: Any) -> None:
        self.messages.append(msg)
        self.bodies.append(codec.decode(msg.data, json_mode=codec.is_json(msg.headers)))
        self._changed.set()

    async def wait(self, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` messages arrived; returns the decoded bodies."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while len(self.bodies) < count:
            left = until - loop.time()
            if left <= 0:
                raise AssertionError(f"expected {count} messages, got {len(self.bodies)}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return self.bodies

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
