"""Operations for the durable-intake tests, importable by a worker subprocess.

``rory-worker run --operations tests.faults.ops:register`` adds them to a real worker. Every
execution leaves a trace in the worker's real storage, so a test counts executions and results
from the outside, across processes and restarts:

* ``<key>-run-<tag>``: written when an execution starts (one per execution);
* ``<key>-result-<tag>``: written when it finishes (one per completed execution).

A redelivered command that is answered from its result record writes neither.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worker.errors import StorageUnavailable
from worker.runtime.context import JobContext
from worker.runtime.registry import Operation, Registry

KEY_PATTERN = r"^[A-Za-z0-9]+$"

# In-process bookkeeping (only meaningful when the worker runs in the test's process).
ACTIVE: Counter[str] = Counter()  # node id -> executions running now
PEAK: Counter[str] = Counter()  # node id -> most executions seen running at once
FAILURES: Counter[str] = Counter()  # key -> transient failures injected so far


class WorkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=KEY_PATTERN, max_length=40)
    seconds: float = Field(0.0, ge=0, le=30)
    values: list[float] = Field(default_factory=lambda: [1.0, 2.0])
    fail_first: int = Field(0, ge=0, le=100, description="raise 503 this many times first (in-process)")


async def work(ctx: JobContext, params: WorkParams) -> dict[str, Any]:
    """Mark the run, wait, store the result: a slow job with observable side effects."""
    node = ctx.node_id
    ACTIVE[node] += 1
    PEAK[node] = max(PEAK[node], ACTIVE[node])
    try:
        if FAILURES[params.key] < params.fail_first:
            FAILURES[params.key] += 1
            raise StorageUnavailable(f"injected outage {FAILURES[params.key]} of {params.fail_first}")
        tag = uuid.uuid4().hex[:12]
        await ctx.store.put_ndarray(f"{params.key}-run-{tag}", np.ones(1))
        if params.seconds:
            await asyncio.sleep(params.seconds)
        values = np.asarray(params.values, dtype=np.float64)
        await ctx.store.put_ndarray(f"{params.key}-result-{tag}", values)
        return {"key": params.key, "tag": tag, "node_id": node, "sum": float(values.sum())}
    finally:
        ACTIVE[node] -= 1


def register(registry: Registry) -> None:
    """``--operations tests.faults.ops:register``; also registers the generic test operations."""
    from tests.ops import register as register_test_ops

    if "test.noop" not in registry:
        register_test_ops(registry)
    registry.register(Operation("fault.work", WorkParams, work, "marks, waits, stores a result"))


def fault_registry() -> Registry:
    registry = Registry()
    register(registry)
    return registry
