"""A command sent again with the same id is answered from its first run, never run twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas import subjects
from tests.ops import command, request, test_registry
from worker.runtime.context import JobContext
from worker.runtime.registry import Operation, Registry

RUNS: Counter[str] = Counter()


class CountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    seconds: float = 0.0


async def count(ctx: JobContext, params: CountParams) -> dict[str, Any]:
    RUNS[params.key] += 1
    await asyncio.sleep(params.seconds)
    return {"runs": RUNS[params.key]}


def _registry() -> Registry:
    registry = test_registry()
    registry.register(Operation("test.count", CountParams, count, "counts its runs"))
    return registry


async def _send(nc: Any, worker: Any, params: dict[str, Any], ident: str) -> dict[str, Any]:
    subject = subjects.node_cmd(worker.prefix, worker.node_id, "test.count")
    reply, _ = await request(nc, subject, command("test.count", params, id=ident))
    return reply


async def test_resent_command_is_answered_from_the_first_run(start_worker, nc) -> None:
    worker = await start_worker(registry=_registry())
    first = await _send(nc, worker, {"key": "once"}, "cmd-replay-1")
    again = await _send(nc, worker, {"key": "once"}, "cmd-replay-1")
    assert first["ok"] and again == first  # the very same Reply, its id included
    assert RUNS["once"] == 1
    other = await _send(nc, worker, {"key": "once"}, "cmd-replay-2")
    assert other["result"]["runs"] == 2 and RUNS["once"] == 2  # a new id runs


async def test_duplicates_while_running_wait_for_the_first_run(start_worker, nc) -> None:
    worker = await start_worker(registry=_registry(), worker_capacity=4)
    replies = await asyncio.gather(
        *(_send(nc, worker, {"key": "race", "seconds": 0.3}, "cmd-replay-3") for _ in range(3))
    )
    assert all(reply["ok"] for reply in replies) and RUNS["race"] == 1
    assert {reply["id"] for reply in replies} == {replies[0]["id"]}


async def test_retryable_failures_run_again(start_worker, nc) -> None:
    worker = await start_worker(registry=_registry())
    subject = subjects.node_cmd(worker.prefix, worker.node_id, "test.fail")
    body = command("test.fail", {"code": 503, "message": "try again"}, id="cmd-replay-4")
    first, _ = await request(nc, subject, body)
    again, _ = await request(nc, subject, body)
    assert first["error"]["retryable"] and again["id"] != first["id"]  # ran again, a new Reply
