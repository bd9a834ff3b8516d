"""The ``nats`` store on a real three-server cluster (R3), and a bucket that fills up.

The cluster test kills the bucket's stream leader, reads and writes everything on the two servers left,
restarts the dead one, then kills another server so the restarted one must serve the data it caught up
on, and compares every ball byte for byte. Waits are bounded by generous deadlines; no assertion
depends on how fast a leader is elected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import numpy as np
import pytest
from nats.aio.client import Client
from nats.js.api import ClusterInfo

from core.algorithms.kmeans import l1_kmeans
from scripts.cluster import LocalCluster
from tests.conftest import settings_for
from tests.worker.handlers.conftest import handler_registry
from tests.worker.handlers.owner import Rig, blobs, run_secure_kmeans, upload_secure_kmeans
from tests.worker.storage.conftest import nats_store
from worker.errors import NotFound
from worker.runtime.service import WorkerService
from worker.storage.nats_objects import NatsObjectStore, StorageFull
from worker.storage.retry import RetryPolicy

#: Rides out a leader election (a few seconds) without the test depending on how long it takes.
PATIENT = RetryPolicy(max_retries=30, delay=0.2, backoff_factor=0.5, max_delay=2.0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3, 0, jetstream=True) as running:
        yield running


@pytest.fixture
async def cluster_nc(cluster: LocalCluster) -> AsyncIterator[Client]:
    client = await nats.connect(
        servers=cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2, name="pytest-r3"
    )
    yield client
    await client.close()


def _datasets(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"ds{seed}-matrix": rng.standard_normal((3000, 40)),  # 960 kB in 4 chunks, 2 messages each
        f"ds{seed}-ints": rng.integers(0, 1 << 40, size=(257, 3)),
        f"ds{seed}-bias": np.asarray(rng.standard_normal()),
    }


Lists = dict[str, list[bytes]]


async def _write(store: NatsObjectStore, arrays: dict[str, np.ndarray], lists: Lists) -> None:
    for name, array in arrays.items():
        if array.ndim == 0:
            await store.put_blob(name, array)
        else:
            await store.put_ndarray(name, array, num_chunks=4)
    for name, items in lists.items():
        await store.put_bytes_list(name, items, num_chunks=3, shape=(len(items),))


async def _verify(store: NatsObjectStore, arrays: dict[str, np.ndarray], lists: Lists) -> None:
    for name, array in arrays.items():
        got = await store.get_ndarray(name)
        assert got.dtype == array.dtype and got.shape == array.shape
        assert got.tobytes() == array.tobytes(), name
    for name, items in lists.items():
        assert await store.get_bytes_list(name) == items, name
    assert await store.list_balls() == sorted([*arrays, *lists])


async def _cluster_once(
    nc: Client, stream: str, ready: Callable[[ClusterInfo], bool], what: str
) -> ClusterInfo:
    """The stream's cluster info once ``ready`` accepts it, polled within a 60 s deadline (a leader
    election or a replica catching up takes however long it takes; no assertion depends on it)."""
    js = nc.jetstream(timeout=2.0)
    deadline = time.monotonic() + 60
    while True:
        try:
            info = await js.stream_info(stream)
            if info.cluster is not None and ready(info.cluster):
                return info.cluster
        except (nats.errors.Error, TimeoutError):
            pass
        assert time.monotonic() < deadline, f"{stream}: {what} within 60 s"
        await asyncio.sleep(0.2)


async def _leader(nc: Client, stream: str) -> str:
    """The stream's current leader, waiting (bounded) while one is being elected."""
    cluster = await _cluster_once(nc, stream, lambda c: bool(c.leader), "got no leader")
    assert cluster.leader is not None
    return cluster.leader


def _both_replicas_current(cluster: ClusterInfo) -> bool:
    replicas = cluster.replicas or []
    return bool(cluster.leader) and len(replicas) == 2 and all(r.current and not r.offline for r in replicas)


async def _all_replicas_current(nc: Client, stream: str) -> None:
    await _cluster_once(nc, stream, _both_replicas_current, "replicas did not catch up")


def _index(cluster: LocalCluster, name: str) -> int:
    return next(i for i, server in enumerate(cluster.servers) if server.name == name)


async def test_r3_bucket_survives_the_loss_of_any_one_server(
    cluster: LocalCluster, cluster_nc: Client
) -> None:
    store = nats_store(cluster_nc, replicas=3, retry=PATIENT, timeout=3.0)
    stream = f"OBJ_{store.bucket}"
    arrays = _datasets(1)
    lists = {"ds1-ctxts": [bytes([i]) * (1000 + 37 * i) for i in range(40)]}
    try:
        await _write(store, arrays, lists)
        assert (await cluster_nc.jetstream().stream_info(stream)).config.num_replicas == 3
        await _verify(store, arrays, lists)

        # 1. Kill the stream leader: everything stays readable and writable on the other two.
        first = _index(cluster, await _leader(cluster_nc, stream))
        cluster.kill_server(first)
        await _verify(store, arrays, lists)
        more = _datasets(2)
        more["ds1-ints"] = np.arange(12, dtype=np.int64).reshape(4, 3)  # an overwrite while degraded
        await _write(store, more, {"ds2-ctxts": [b"x" * 3000, b"", b"y"]})
        arrays.update(more)
        lists["ds2-ctxts"] = [b"x" * 3000, b"", b"y"]
        await store.delete("ds1-bias")
        del arrays["ds1-bias"]
        await _verify(store, arrays, lists)

        # 2. Restart it and let it catch up; then kill another server, so the restarted one is one of
        #    the two that must serve every byte.
        cluster.restart_server(first)
        await _all_replicas_current(cluster_nc, stream)
        second = next(i for i in range(3) if i != first)
        cluster.kill_server(second)
        await _verify(store, arrays, lists)
        with pytest.raises(NotFound):
            await store.get_ndarray("ds1-bias")
        cluster.restart_server(second)
        await _all_replicas_current(cluster_nc, stream)
        await _verify(store, arrays, lists)
    finally:
        for index in range(3):
            if not cluster.servers[index].running:
                cluster.restart_server(index)
        await store.aclose()
        await cluster_nc.jetstream().delete_object_store(store.bucket)


async def test_a_secure_kmeans_job_runs_to_the_end_while_a_server_is_down(
    cluster: LocalCluster, cluster_nc: Client, tmp_path: Path
) -> None:
    """The bucket's leader is dead before the job starts: every round reads and writes on the other two."""
    store = nats_store(cluster_nc, replicas=3, retry=PATIENT, timeout=3.0)
    data = blobs(60, 2, 3, seed=5)
    job = await upload_secure_kmeans(store, data, 3, "r3job")
    dead = _index(cluster, await _leader(cluster_nc, f"OBJ_{store.bucket}"))
    alive = [server.client_url for index, server in enumerate(cluster.servers) if index != dead]
    cluster.kill_server(dead)
    settings = settings_for(alive[0], tmp_path, nats_urls=alive, storage_backend="nats")
    worker = WorkerService(
        settings, handler_registry(), store=store, connect_options={"reconnect_time_wait": 0.2}
    )
    try:
        await worker.start()
        labels, iterations, _ = await run_secure_kmeans(
            Rig(nc=cluster_nc, settings=settings, store=store), job
        )
        reference = l1_kmeans(data, 3, max_iter=10, tolerance=1e-6)
        assert labels == reference.labels.tolist() and iterations == reference.n_iter
    finally:
        await worker.stop(grace=2.0)
        cluster.restart_server(dead)
        await store.aclose()
        await cluster_nc.jetstream().delete_object_store(store.bucket)


async def test_a_full_bucket_fails_clearly_and_keeps_what_it_holds(nats_url: str) -> None:
    nc = await nats.connect(nats_url, name="pytest-full-bucket")
    store = nats_store(nc, max_bucket_bytes=300 * 1024)
    kept: dict[str, np.ndarray] = {}
    try:
        with pytest.raises(StorageFull) as caught:
            for i in range(20):  # 20 x 64 kB: the 300 kB limit is hit on the fifth or so
                array = np.full((8192,), float(i))
                await asyncio.wait_for(store.put_ndarray(f"fill{i}", array, num_chunks=2), 30)
                kept[f"fill{i}"] = array
        assert store.bucket in str(caught.value) and "full" in str(caught.value)
        assert caught.value.retryable is False
        assert 0 < len(kept) < 20
        for name, array in kept.items():  # everything written before stays intact
            np.testing.assert_array_equal(await store.get_ndarray(name), array)
        await store.delete(next(iter(kept)))  # freeing space makes writes possible again
        await store.put_ndarray("after", np.ones(16))
        np.testing.assert_array_equal(await store.get_ndarray("after"), np.ones(16))
    finally:
        await store.aclose()
        await nc.jetstream().delete_object_store(store.bucket)
        await nc.close()
