"""Every protocol family through the in-process worker port, and the NATS port against it.

The in-process port runs the worker's own dispatcher and handlers on a real local store, so these
tests check the drivers' rounds and typed messages without a bus; one dataset then goes through a
real nats-server and worker and must give exactly the same labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.algorithms.kmeans import KMeans
from core.algorithms.knn import knn_predict
from core.algorithms.lr import LogisticRegression
from dataowner.client import DataOwnerClient, WorkerError
from dataowner.inprocess_port import InProcessPort
from dataowner.keys import OwnerKeys
from dataowner.progress import ProgressEvent
from schemas.operations import KMeansParams, KMeansResult
from tests.dataowner.blobs import labelled_blobs
from worker.handlers import default_registry
from worker.storage import LocalStore


def _blobs(seed: int, n_per: int, a: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return labelled_blobs(seed, n_per, a, spread=5.0, sigma=0.7, decimals=3)


@pytest.fixture(scope="module")
def owner(tmp_path_factory) -> tuple[OwnerKeys, str, str]:
    base = tmp_path_factory.mktemp("owner")
    keys = OwnerKeys.generate(base / "owner-keys", profiles=("default-128", "ml-128"))
    keys.export_public(base / "worker-keys")
    keys.export_public(base / "ml-keys", "ml-128", galois=True)
    return keys, str(base / "worker-keys"), str(base / "ml-keys")


@pytest.fixture
async def inproc(tmp_path, owner):
    keys, keys_path, _ = owner
    store = LocalStore(tmp_path / "css")
    client = DataOwnerClient(None, store, keys, port=InProcessPort(store, keys_path=keys_path))
    yield client
    await client.close()
    await store.aclose()


async def test_plain_clustering(inproc):
    x, _ = _blobs(1, 10)
    km = await inproc.kmeans(x, 3)
    np.testing.assert_array_equal(km.labels, KMeans(n_clusters=3).fit(x).labels_)
    nnc = await inproc.nnc(x)
    dbs = await inproc.dbsnnc(x)
    assert nnc.labels.shape == dbs.labels.shape == (x.shape[0],)
    assert nnc.extra["threshold"] > 0 and km.commands == nnc.commands == dbs.commands == 1


async def test_secure_kmeans_family_and_accounting(inproc):
    x, _ = _blobs(2, 8)
    events: list[ProgressEvent] = []
    sk = await inproc.skmeans(x, 3, progress=events.append)
    assert sk.labels.shape == (x.shape[0],) and sk.converged
    assert len(sk.rounds) == sk.iterations == len(sk.shifts)
    # accounting: owner CPU apart from waiting, bytes both ways, per round and in total
    assert sk.owner_cpu_seconds > 0 and sk.wait_seconds > 0 and sk.retries == 0
    assert sk.bytes_up > x.nbytes and sk.bytes_down > 0
    assert sum(r["bytes_up"] for r in sk.rounds) <= sk.bytes_up
    assert all(r["wait"] > 0 and r["owner_cpu"] >= 0 for r in sk.rounds)
    assert sk.summary()["bytes_up"] == sk.bytes_up
    assert [e.phase for e in events][-1] == "done"
    dbs = await inproc.dbskmeans(x, 3, max_iterations=5)
    pqc = await inproc.pqc_skmeans(x, 3, max_iterations=5)
    pqc_dbs = await inproc.pqc_dbskmeans(x, 3, max_iterations=3, refresh_udm=True)
    for report in (dbs, pqc, pqc_dbs):
        assert report.labels.shape == (x.shape[0],) and 1 <= report.iterations <= 5
    np.testing.assert_array_equal(pqc.labels, sk.labels)  # the same plaintext UDM rounds, other scheme
    assert pqc_dbs.commands == pqc_dbs.iterations  # refresh: step 1 only


async def test_pqc_kmeans(inproc):
    x, _ = _blobs(3, 6)
    report = await inproc.pqc_kmeans(x, 3)
    np.testing.assert_array_equal(report.labels, KMeans(n_clusters=3).fit(x).labels_)
    assert report.converged


async def test_classification_family(inproc):
    x, y = _blobs(4, 8)
    model, labels, records = x[:18], y[:18], x[18:]
    expected = knn_predict(model, labels, records, "euclidean")
    knn = await inproc.knn(model, labels, records, distance="EUCLIDEAN")
    sknn = await inproc.sknn(model, labels, records)
    packed = await inproc.pqc_sknn(model, labels, records, layout="packed")
    rows = await inproc.pqc_sknn(model, labels, records, layout="rows")
    for report in (knn, sknn, packed, rows):
        np.testing.assert_array_equal(report.predictions, expected)
    assert sknn.commands == 2 and sknn.extra["exact"] is True


async def test_regression_family(tmp_path, owner):
    keys, _, ml_keys = owner
    store = LocalStore(tmp_path / "css")
    client = DataOwnerClient(None, store, keys, port=InProcessPort(store, keys_path=ml_keys))
    try:
        x, y = _blobs(5, 8)
        target = (y == 0).astype(np.int64)
        trained = await client.lr_train(x[:18], target[:18], epochs=5)
        model = LogisticRegression(epochs=5, learning_rate=0.1).fit(x[:18], target[:18])
        np.testing.assert_allclose(trained.extra["weights"], model.weights_, atol=1e-9)
        predicted = await client.lr_predict(x[18:], train_id=trained.extra["train_id"])
        np.testing.assert_array_equal(predicted.predictions, model.predict(x[18:]))
        pplr = await client.pplr_train(x[:12], target[:12], epochs=1)
        assert pplr.extra["weights"].shape == (3,) and pplr.owner_cpu_seconds > 0
        scored = await client.pplr_predict(
            x[12:], train_id=pplr.extra["train_id"], weights=pplr.extra["weights"], bias=pplr.extra["bias"]
        )
        assert set(np.unique(scored.predictions)) <= {0, 1}
    finally:
        await store.aclose()


async def test_typed_messages_and_errors(inproc):
    with pytest.raises(WorkerError) as info:
        await inproc.request("clustering.kmeans", {"plaintext_matrix_id": "nothing-here", "k": 2})
    assert info.value.code == 404
    with pytest.raises(WorkerError) as info:
        await inproc.request("clustering.kmeans", KMeansParams(plaintext_matrix_id="nothing-here", k=2))
    assert info.value.code == 404 and not info.value.retryable
    await inproc.store.put_blob("tiny", np.arange(6.0).reshape(3, 2))
    params = KMeansParams(plaintext_matrix_id="tiny", k=1)
    answer = await inproc.port.call("clustering.kmeans", params, KMeansResult)
    assert isinstance(answer, KMeansResult) and answer.label_vector == [0, 0, 0]


async def test_the_nats_port_gives_the_in_process_labels(start_worker, nats_url, tmp_path, owner, inproc):
    keys, keys_path, _ = owner
    css = tmp_path / "nats-css"
    worker = await start_worker(
        registry=default_registry(), store=LocalStore(css), keys_path=keys_path, storage_path=str(css)
    )
    store = LocalStore(css)
    client = DataOwnerClient(
        nats_url, store, keys, prefix=worker.settings.rory_subject_prefix, node=worker.settings.node_id
    )
    try:
        await client.connect()
        x, _ = _blobs(6, 10)
        over_nats = await client.skmeans(x, 3, max_iterations=10)
        in_process = await inproc.skmeans(x, 3, max_iterations=10)
        np.testing.assert_array_equal(over_nats.labels, in_process.labels)
        assert over_nats.iterations == in_process.iterations
        assert over_nats.nodes == [worker.settings.node_id] and in_process.nodes == ["inprocess"]
    finally:
        await client.close()
        await store.aclose()
