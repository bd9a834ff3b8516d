"""Client retries against a real nats-server and worker.

A retried command keeps its id, backs off with jitter within the client's budget, is reported in
the job's progress, and never applies a round twice: every job here must end with exactly the
labels of the in-process reference (the worker's handlers run without a bus).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dataowner.client import DataOwnerClient, WorkerError
from dataowner.inprocess_port import InProcessPort
from dataowner.job import JobReport
from dataowner.keys import OwnerKeys
from dataowner.nats_port import NatsPort
from dataowner.port import RetryPolicy
from dataowner.progress import ProgressEvent
from schemas.errors import StorageUnavailable
from schemas.operations import Op, Params, Result
from tests.conftest import settings_for
from tests.faults.support import js_settings
from worker.handlers import default_registry
from worker.storage import LocalStore

K = 3


def _data() -> np.ndarray:
    rng = np.random.default_rng(11)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [-5.0, 5.0, 0.0]])
    x = np.concatenate([rng.normal(c, 0.9, size=(10, 3)) for c in centres])
    return np.round(x[rng.permutation(len(x))], 3)


class FlakyStore:
    """The worker's store: counts step-1 commits (writes of ``<P>centj``) and can fail or stall them."""

    def __init__(self, inner: Any, *, fail: int = 0, stall_on: int = 0, stall: float = 0.0) -> None:
        self._inner = inner
        self.fail = fail  # fail this many centj writes with 503 (before anything is written)
        self.stall_on, self.stall = stall_on, stall  # stall the stall_on-th centj write
        self.commits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put_ndarray(self, key: str, value: np.ndarray, **kwargs: Any) -> Any:
        if key.endswith("centj"):
            if self.fail:
                self.fail -= 1
                raise StorageUnavailable(f"{key}: storage is down (test)")
            self.commits += 1
            if self.commits == self.stall_on:
                await asyncio.sleep(self.stall)
        return await self._inner.put_ndarray(key, value, **kwargs)


@pytest.fixture(scope="module")
def owner(tmp_path_factory) -> OwnerKeys:
    return OwnerKeys.generate(tmp_path_factory.mktemp("owner") / "keys", profiles=())


async def _reference(tmp_path, keys: OwnerKeys, x: np.ndarray) -> np.ndarray:
    store = LocalStore(tmp_path / "reference")
    try:
        client = DataOwnerClient(None, store, keys, port=InProcessPort(store))
        report = await client.skmeans(x, K, max_iterations=10)
        assert report.labels is not None
        return report.labels
    finally:
        await store.aclose()


async def _matches_the_reference(
    client: DataOwnerClient, x: np.ndarray, tmp_path: Path, keys: OwnerKeys, store: LocalStore | None = None
) -> JobReport:
    """Run the SKMeans job through ``client`` (then close it, and ``store`` when given) and check that it
    ends with exactly the labels of the in-process reference: a round applied twice would not."""
    try:
        report = await client.skmeans(x, K, max_iterations=10)
    finally:
        await client.close()
        if store is not None:
            await store.aclose()
    np.testing.assert_array_equal(report.labels, await _reference(tmp_path, keys, x))
    return report


async def test_a_retryable_reply_is_re_sent_with_the_same_id(start_worker, nats_url, tmp_path, owner):
    x = _data()
    css = tmp_path / "css"
    flaky = FlakyStore(LocalStore(css), fail=2)
    worker = await start_worker(registry=default_registry(), store=flaky, storage_path=str(css))
    store = LocalStore(css)
    events: list[ProgressEvent] = []
    client = DataOwnerClient(
        nats_url, store, owner, prefix=worker.settings.rory_subject_prefix, node=worker.settings.node_id,
        retries=3, retry_backoff=0.05, progress=events.append,
    )
    report = await _matches_the_reference(client, x, tmp_path, owner, store)
    assert report.retries == 2 and report.rounds[0]["retries"] == 2
    retries = [e for e in events if e.phase == "retry"]
    assert len(retries) == 2 and all("503 STORAGE_UNAVAILABLE" in e.message for e in retries)
    assert len({e.message.split("re-sending ")[1].split()[0] for e in retries}) == 1  # one command id
    assert flaky.commits == report.iterations  # each round's step 1 committed once


async def test_the_retry_budget_is_bounded(start_worker, nats_url, tmp_path, owner):
    css = tmp_path / "css"
    flaky = FlakyStore(LocalStore(css), fail=100)
    worker = await start_worker(registry=default_registry(), store=flaky, storage_path=str(css))
    store = LocalStore(css)
    client = DataOwnerClient(
        nats_url, store, owner, prefix=worker.settings.rory_subject_prefix, node=worker.settings.node_id,
        retries=2, retry_backoff=0.01,
    )
    try:
        with pytest.raises(WorkerError) as info:
            await client.skmeans(_data(), K)
    finally:
        await client.close()
        await store.aclose()
    assert info.value.code == 503 and info.value.retryable
    assert flaky.fail == 100 - 3  # the first attempt and two retries


class StopThenRestart:
    """A port that stops the worker before the ``before``-th command and starts another one later."""

    def __init__(self, port: NatsPort, before: int, stop: Any, start: Any) -> None:
        self.port, self.before, self.stop, self.start = port, before, stop, start
        self.calls = 0
        self.restarted: asyncio.Task[Any] | None = None

    async def call(self, op: Op | str, params: Params, expect: type[Result], **kwargs: Any) -> Result:
        self.calls += 1
        if self.calls == self.before:
            await self.stop()  # nobody listens now: the command meets no responders

            async def later() -> Any:
                await asyncio.sleep(0.5)
                return await self.start()

            self.restarted = asyncio.ensure_future(later())
        return await self.port.call(op, params, expect, **kwargs)

    async def close(self) -> None:
        await self.port.close()


async def test_a_worker_stopped_mid_job_and_another_started(start_worker, nats_url, tmp_path, owner):
    x = _data()
    css = tmp_path / "css"
    settings = settings_for(nats_url, tmp_path, storage_path=str(css))
    first = await start_worker(registry=default_registry(), store=LocalStore(css), settings=settings)
    store = LocalStore(css)
    nats_port = NatsPort(
        nats_url, prefix=settings.rory_subject_prefix, node=settings.node_id,
        retry=RetryPolicy(retries=12, backoff=0.1, max_backoff=1.0),
    )

    async def restart() -> Any:
        return await start_worker(registry=default_registry(), store=LocalStore(css), settings=settings)

    port = StopThenRestart(nats_port, 3, lambda: first.stop(grace=5.0), restart)  # round 2's step 1
    client = DataOwnerClient(None, store, owner, node=settings.node_id, port=port)
    report = await _matches_the_reference(client, x, tmp_path, owner, store)
    assert report.retries >= 1 and report.iterations >= 2
    assert port.restarted is not None and port.restarted.done()


async def test_a_timed_out_step_is_not_applied_twice(start_worker, nats_url, tmp_path, owner):
    """The jobs transport re-publishes a step whose reply did not come in time (same id: the
    stream drops the copy) and still gets the one run's reply; the core transport refuses to
    re-send a secure k-means step it cannot prove did not run."""
    x = _data()
    css = tmp_path / "css"
    flaky = FlakyStore(LocalStore(css), stall_on=2, stall=2.0)  # round 2's step 1 takes > 2 s
    settings = js_settings(nats_url, tmp_path, storage_path=str(css), jetstream_ack_wait=30.0)
    worker = await start_worker(registry=default_registry(), store=flaky, settings=settings)
    store = LocalStore(css)
    events: list[ProgressEvent] = []
    client = DataOwnerClient(
        nats_url, store, owner, prefix=worker.settings.rory_subject_prefix, node=worker.settings.node_id,
        transport="jobs", attempt_timeout=0.5, retries=10, retry_backoff=0.1, max_backoff=0.2,
        progress=events.append,
    )
    report = await _matches_the_reference(client, x, tmp_path, owner)
    assert report.retries >= 1 and any("timeout" in e.message for e in events if e.phase == "retry")
    assert flaky.commits == report.iterations  # the stalled step ran once

    # core request-reply: a timed-out secure k-means step is an error, never a second run
    core = settings_for(nats_url, tmp_path, storage_path=str(css))
    slow = FlakyStore(LocalStore(css), stall_on=1, stall=2.0)
    other = await start_worker(registry=default_registry(), store=slow, settings=core)
    client = DataOwnerClient(
        nats_url, store, owner, prefix=core.rory_subject_prefix, node=core.node_id,
        attempt_timeout=0.5, retries=5,
    )
    try:
        with pytest.raises(WorkerError) as info:
            await client.skmeans(x, K, dataset_id="slow")
        assert info.value.code == 504
        assert slow.commits == 1  # counted as the one run starts its commit; no copy was sent
    finally:
        await client.close()
        await store.aclose()
    assert other.settings.node_id == core.node_id
