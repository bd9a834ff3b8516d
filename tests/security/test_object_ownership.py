"""A command may not overwrite objects it does not own: through a real worker and the public command path.

* A caller-named output (``weights_id``/``bias_id`` of ``ml.lr.train``) that names a data-owner upload
  or another operation's output is refused with 409 CONFLICT and the object is left byte for byte.
* The same operation re-run over its own outputs (a retry) still works.
* ``<namespace>_<key>`` is injective: a namespace containing ``_`` is refused (before the fix, namespace
  ``a`` + key ``b_c...`` and namespace ``a_b`` + key ``c...`` named one object).
* ``put_all``'s cleanup after a failed step deletes only what that step wrote, not the same key
  committed meanwhile by another job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from schemas import keys
from schemas.operations import Op
from tests.worker.handlers.owner import Rig, snapshot
from worker.errors import StorageUnavailable
from worker.handlers.common import WRITE_TOKEN_TAG, WRITER_TAG
from worker.settings import Settings
from worker.storage.base import BallInfo, ForwardingStore, ObjectStore
from worker.storage.local import LocalStore

RNG = np.random.default_rng(7)
X = RNG.normal(size=(12, 3))
Y = (X[:, 0] > 0).astype(np.float64)
OTHER_JOB_BIAS = np.array([42.0])


class CommitThenFail(ForwardingStore):
    """Fails the blob put of ``key`` right after another job committed that same key.

    This is the interleaving that made the old cleanup delete someone else's object: the step's own
    write fails, the key now holds another writer's commit, and the step cleans up its "new" keys.
    """

    def __init__(self, inner: ObjectStore, key: str) -> None:
        super().__init__(inner)
        self.key = key

    async def put_blob(self, ball_id: str, array: np.ndarray, **kwargs: Any) -> BallInfo:
        if ball_id == self.key:
            other = {WRITER_TAG: Op.LR_TRAIN.value, WRITE_TOKEN_TAG: "another-job"}
            await self.inner.put_blob(ball_id, OTHER_JOB_BIAS, tags=other)
            raise StorageUnavailable(f"injected failure writing {ball_id}")
        return await self.inner.put_blob(ball_id, array, **kwargs)


async def _rig(start_worker: Any, nc: Any, store: LocalStore, settings: Settings, served: Any = None) -> Rig:
    from tests.worker.handlers.conftest import handler_registry

    worker = await start_worker(registry=handler_registry(), store=served or store, settings=settings)
    await worker.pool.wait_ready(timeout=60)
    return Rig(nc=nc, settings=settings, store=store, worker=worker)


@pytest.fixture
async def store(tmp_path: Any) -> Any:
    s = LocalStore(tmp_path / "css")
    yield s
    await s.aclose()


@pytest.fixture
async def rig(start_worker: Any, nc: Any, store: LocalStore, make_settings: Callable[..., Settings]) -> Rig:
    return await _rig(start_worker, nc, store, make_settings(storage_path=str(store.root)))


def _train(weights_id: str, bias_id: str) -> dict[str, Any]:
    return {
        "plaintext_matrix_train_id": "ownx",
        "plaintext_label_vector_train_id": "owny",
        "weights_id": weights_id,
        "bias_id": bias_id,
        "epochs": 3,
        "learning_rate": 0.1,
    }


async def _upload_training_data(store: LocalStore) -> None:
    await store.put_ndarray("ownx", X)
    await store.put_ndarray("owny", Y)


async def test_lr_train_cannot_overwrite_a_data_owner_dataset(rig: Rig):
    await _upload_training_data(rig.store)
    victim = keys.encrypted("secret")  # another dataset's ciphertexts, uploaded by its owner
    await rig.store.put_bytes_list(victim, [b"ct-0", b"ct-1"], shape=[2])
    await rig.store.put_ndarray("ownerplain", np.arange(3.0))
    before = await snapshot(rig.store)
    for weights_id, bias_id in ((victim, "fresh-b"), ("fresh-w", "ownerplain")):
        err = await rig.error(Op.LR_TRAIN, _train(weights_id, bias_id))
        assert err["code"] == 409 and err["type"] == "CONFLICT", err
    assert await snapshot(rig.store) == before
    assert await rig.store.get_bytes_list(victim) == [b"ct-0", b"ct-1"]


async def test_lr_train_cannot_overwrite_another_operations_output(rig: Rig):
    await _upload_training_data(rig.store)
    await rig.ok(Op.LR_TRAIN, _train("modelw", "modelb"))
    pred = await rig.ok(
        Op.LR_PREDICT, {"plaintext_matrix_test_id": "ownx", "weights_id": "modelw", "bias_id": "modelb"}
    )
    predictions = pred["predictions_id"]
    assert (await rig.store.info(predictions)).tags[WRITER_TAG] == Op.LR_PREDICT.value
    before = await snapshot(rig.store)
    err = await rig.error(Op.LR_TRAIN, _train(predictions, "modelb"))
    assert err["code"] == 409 and predictions in err["message"]
    assert await snapshot(rig.store) == before


async def test_lr_train_retry_over_its_own_outputs_still_works(rig: Rig):
    await _upload_training_data(rig.store)
    await rig.ok(Op.LR_TRAIN, _train("retryw", "retryb"))
    first = await rig.store.get_ndarray("retryw"), await rig.store.get_ndarray("retryb")
    await rig.ok(Op.LR_TRAIN, _train("retryw", "retryb"))  # the same command again: same outputs
    np.testing.assert_array_equal(await rig.store.get_ndarray("retryw"), first[0])
    np.testing.assert_array_equal(await rig.store.get_ndarray("retryb"), first[1])
    assert (await rig.store.info("retryw")).tags[WRITER_TAG] == Op.LR_TRAIN.value


async def test_namespaced_keys_no_longer_collide(rig: Rig):
    await _upload_training_data(rig.store)
    await rig.ok(Op.LR_TRAIN, _train("nsw", "nsb"))
    await rig.store.put_ndarray("b_c", X)
    await rig.store.put_ndarray("c", X[:5])
    model = {"weights_id": "nsw", "bias_id": "nsb"}
    pred = await rig.ok(Op.LR_PREDICT, {**model, "plaintext_matrix_test_id": "b_c", "namespace": "a"})
    assert pred["predictions_id"] == "a_b_cpredictions"
    before = await snapshot(rig.store)
    # Namespace "a_b" with test id "c" used to write "a_b_cpredictions" too.
    err = await rig.error(Op.LR_PREDICT, {**model, "plaintext_matrix_test_id": "c", "namespace": "a_b"})
    assert err["code"] == 400
    assert await snapshot(rig.store) == before
    with pytest.raises(ValueError):
        keys.predictions("c", "a_b")
    assert keys.predictions("c", "a-b") != keys.predictions("b_c", "a")


async def test_failed_step_cleanup_keeps_another_jobs_commit(
    start_worker: Any, nc: Any, store: LocalStore, make_settings: Callable[..., Settings]
):
    settings = make_settings(storage_path=str(store.root))
    rig = await _rig(start_worker, nc, store, settings, served=CommitThenFail(store, "raceb"))
    await _upload_training_data(store)
    err = await rig.error(Op.LR_TRAIN, _train("racew", "raceb"))
    assert err["code"] == 503, err
    assert not await store.exists("racew")  # this step's own new object: removed
    np.testing.assert_array_equal(await store.get_ndarray("raceb"), OTHER_JOB_BIAS)  # the other job's
    assert (await store.info("raceb")).tags[WRITE_TOKEN_TAG] == "another-job"
