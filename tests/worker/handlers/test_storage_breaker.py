"""Storage that stays down: the circuit breaker answers 503 at once, health says so, and it heals.

The worker runs with the seed's retry defaults (MICTLANX_MAX_RETRIES=10, MICTLANX_DELAY=2), against
the fake MictlanX router over real HTTP. Without the breaker every command against a dead router
waited out more than 40 s of retries; with it the first command opens the circuit after three failed
attempts and every later one is refused without touching storage. No assertion here depends on
timing: the first two checks count the router's requests instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from schemas import codec, subjects
from schemas.operations import Op
from tests.fakes.mictlanx_router import FakeRouter
from tests.worker.handlers.conftest import handler_registry
from tests.worker.handlers.owner import Rig, blobs
from worker.storage import open_guarded_store, open_store

FOREVER = 1_000_000


@pytest.fixture
async def outage_rig(start_worker: Any, nc: Any, make_settings: Any) -> AsyncIterator[Rig]:
    async with FakeRouter() as router:
        settings = make_settings(storage_backend="mictlanx", mictlanx_uri=router.uri)
        assert settings.mictlanx_max_retries == 10 and settings.mictlanx_delay == 2.0  # the seed's
        worker_store = open_guarded_store(settings)
        owner_store = open_store(settings)
        worker = await start_worker(registry=handler_registry(), store=worker_store, settings=settings)
        rig = Rig(nc=nc, settings=settings, store=owner_store, worker=worker)
        rig.router = router  # type: ignore[attr-defined]
        yield rig
        router.reset_faults()
        await worker.stop(grace=2.0)
        await worker_store.aclose()
        await owner_store.aclose()


async def _health(rig: Rig) -> dict[str, Any]:
    subject = subjects.health(rig.settings.rory_subject_prefix, rig.settings.node_id)
    msg = await rig.nc.request(subject, b"", timeout=10)
    return json.loads(msg.data)


async def _wait_for(rig: Rig, predicate: Any, seconds: float = 60.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        body = await _health(rig)
        if predicate(body) or loop.time() > end:
            return body
        await asyncio.sleep(0.2)


def _kmeans(ball: str) -> dict[str, Any]:
    return {"plaintext_matrix_id": ball, "k": 3}


async def test_breaker_opens_answers_at_once_and_closes_when_storage_returns(outage_rig: Rig) -> None:
    rig, router = outage_rig, outage_rig.router  # type: ignore[attr-defined]
    await rig.store.put_ndarray("breaker-data", blobs(30, 2, 3, seed=7))
    assert (await _health(rig))["status"] == "ready"

    router.fail_next(FOREVER, status=503, detail="router down")
    first = await rig.error(Op.KMEANS, _kmeans("breaker-data"), timeout=120)
    assert first["code"] == 503 and first["retryable"]
    assert "circuit open" in first["message"]  # gave up within the schedule, not after 11 attempts

    data_requests = r"^(?!.*peers)"  # every GET but the health and breaker probes' pings
    requests_before = router.count("GET", data_requests)
    second = await rig.error(Op.KMEANS, _kmeans("breaker-data"))
    assert second["code"] == 503 and second["retryable"] and "circuit open" in second["message"]
    assert router.count("GET", data_requests) == requests_before  # refused without a retry schedule

    degraded = await _wait_for(rig, lambda body: body["status"] == "degraded")
    assert degraded["status"] == "degraded"
    assert degraded["storage"]["reachable"] is False
    assert "503" in (degraded["storage"]["last_error"] or "") or "router down" in (
        degraded["storage"]["last_error"] or ""
    )

    router.reset_faults()
    healed = await _wait_for(rig, lambda body: body["status"] == "ready")
    assert healed["status"] == "ready" and healed["storage"]["reachable"] is True
    result = await rig.ok(Op.KMEANS, _kmeans("breaker-data"))
    assert len(result["label_vector"]) == 30


async def test_heartbeat_carries_the_storage_state(outage_rig: Rig) -> None:
    rig, router = outage_rig, outage_rig.router  # type: ignore[attr-defined]
    await rig.store.put_ndarray("beat-data", np.arange(12.0).reshape(6, 2))
    router.fail_next(FOREVER, status=503, detail="router down")
    await rig.error(Op.KMEANS, _kmeans("beat-data"), timeout=120)

    beats: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_beat(msg: Any) -> None:
        await beats.put(codec.decode(msg.data))

    subject = subjects.heartbeat(rig.settings.rory_subject_prefix, rig.settings.node_id)
    sub = await rig.nc.subscribe(subject, cb=on_beat)
    try:
        beat = await asyncio.wait_for(beats.get(), timeout=30)
        while beat["status"] != "degraded":
            beat = await asyncio.wait_for(beats.get(), timeout=30)
        assert beat["storage"]["reachable"] is False and beat["storage"]["last_error"]
    finally:
        await sub.unsubscribe()
