"""Numbers that used to end in a 500 are a 400 before anything is written.

* a JSON integer no float can hold (``10**400``) in ``ts`` or ``deadline_s``: ``math.isfinite`` raised
  OverflowError while the command was validated;
* an unbounded ``iterations``: step 1 wrote its state, then ``iterations + 1`` did not fit msgpack;
* NaN or infinity in ``tolerance``, ``learning_rate``, ``scale``, ``threshold``,
  ``encrypted_threshold`` (msgpack carries them; JSON cannot, and ``10**400`` in JSON is as bad).

Each is sent to a real worker (every Rory operation, real local store holding valid inputs, so the
same command with sane numbers does write) and must get 400 BAD_REQUEST with the store unchanged.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas import keys, subjects
from schemas.operations import MAX_COUNT, Op
from tests.every_operation import start_every_operation
from tests.ops import command, request
from tests.schemas.legacy_requests import ORIGINAL_REQUESTS
from tests.worker.handlers.owner import snapshot, upload_secure_kmeans
from worker.runtime.service import WorkerService
from worker.settings import Settings
from worker.storage.local import LocalStore

HUGE = 10**400  # a valid JSON integer; no float holds it
ROOT = "m"


async def _inputs(store: LocalStore) -> None:
    rng = np.random.default_rng(11)
    data = np.round(rng.normal(size=(10, 3)), 3)
    await store.put_ndarray(ROOT, data)
    await upload_secure_kmeans(store, data, 2, ROOT)  # encrypted<P> and <P>udm
    await store.put_ndarray(keys.encrypted_distance_matrix(ROOT), np.abs(data[:, None, 0] - data[None, :, 0]))
    await store.put_ndarray(keys.distance_matrix(ROOT), np.abs(data[:, None, 0] - data[None, :, 0]))
    await store.put_ndarray("train_x", data)
    await store.put_ndarray("train_y", (data[:, 0] > 0).astype(np.float64))


@pytest.fixture
async def hostile_rig(
    start_worker: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[tuple[WorkerService, LocalStore]]:
    store = LocalStore(tmp_path / "css")
    await _inputs(store)
    worker, _ = await start_every_operation(start_worker, make_settings, store, tmp_path)
    yield worker, store
    await store.aclose()


_SKM = {"plaintext_matrix_id": ROOT, "k": 2, "step_index": 1, "clustering_status": 1}
_LR = {"weights_id": "w", "bias_id": "b"}
_PPLR = {
    "encrypted_matrix_train_id": "x",
    "encrypted_label_vector_train_id": "y",
    "encrypted_weights_id": "w",
    "encrypted_bias_id": "b",
}

#: (case id, op, params, envelope fields, json_mode, what the 400's message names)
CASES: list[tuple[str, Op, dict[str, Any], dict[str, Any], bool, str]] = [
    ("ts-huge-int", Op.KMEANS, {"plaintext_matrix_id": ROOT, "k": 2}, {"ts": HUGE}, True, "ts"),
    ("ts-huge-negative-int", Op.KMEANS, {"plaintext_matrix_id": ROOT}, {"ts": -HUGE}, True, "ts"),
    ("deadline-huge-int", Op.KMEANS, {"plaintext_matrix_id": ROOT}, {"deadline_s": HUGE}, True, "deadline_s"),
    ("iterations-uint64-max", Op.SKMEANS, {**_SKM, "iterations": 2**64 - 1}, {}, False, "params.iterations"),
    (
        "iterations-over-bound",
        Op.SKMEANS,
        {**_SKM, "iterations": MAX_COUNT + 1},
        {},
        False,
        "params.iterations",
    ),
    ("iterations-json-huge", Op.DBSKMEANS, {**_SKM, "iterations": HUGE}, {}, True, "params.iterations"),
    (
        "pqc-kmeans-iterations",
        Op.PQC_KMEANS,
        {"plaintext_matrix_id": ROOT, "iterations": 2**63},
        {},
        False,
        "params.iterations",
    ),
    (
        "tolerance-nan",
        Op.KMEANS,
        {"plaintext_matrix_id": ROOT, "tolerance": math.nan},
        {},
        False,
        "tolerance",
    ),
    (
        "tolerance-inf",
        Op.KMEANS,
        {"plaintext_matrix_id": ROOT, "tolerance": math.inf},
        {},
        False,
        "tolerance",
    ),
    ("learning-rate-nan", Op.LR_TRAIN, {**_LR, "learning_rate": math.nan}, {}, False, "learning_rate"),
    ("learning-rate-inf", Op.LR_TRAIN, {**_LR, "learning_rate": math.inf}, {}, False, "learning_rate"),
    ("learning-rate-json-huge", Op.LR_TRAIN, {**_LR, "learning_rate": HUGE}, {}, True, "learning_rate"),
    (
        "pplr-learning-rate-nan",
        Op.PPLR_TRAIN,
        {**_PPLR, "learning_rate": math.nan},
        {},
        False,
        "learning_rate",
    ),
    ("pplr-scale-inf", Op.PPLR_TRAIN, {**_PPLR, "scale": math.inf}, {}, False, "scale"),
    (
        "pplr-predict-scale-nan",
        Op.PPLR_PREDICT,
        {
            "encrypted_matrix_test_id": "x",
            "encrypted_weights_id": "w",
            "encrypted_bias_id": "b",
            "scale": math.nan,
        },
        {},
        False,
        "scale",
    ),
    ("threshold-nan", Op.NNC, {"plaintext_matrix_id": ROOT, "threshold": math.nan}, {}, False, "threshold"),
    (
        "encrypted-threshold-nan",
        Op.DBSNNC,
        {"plaintext_matrix_id": ROOT, "encrypted_threshold": math.nan},
        {},
        False,
        "encrypted_threshold",
    ),
    (
        "encrypted-threshold-neg-inf",
        Op.DBSNNC,
        {"plaintext_matrix_id": ROOT, "encrypted_threshold": -math.inf},
        {},
        False,
        "encrypted_threshold",
    ),
    (
        "n-samples-uint64",
        Op.PPLR_TRAIN,
        {**_PPLR, "n_samples": 2**64 - 1},
        {},
        False,
        "n_samples",
    ),
    (
        "shape-over-int64",
        Op.SKMEANS,
        {**_SKM, "encrypted_matrix_shape": [2**64 - 1, 3, 3]},
        {},
        False,
        "encrypted_matrix_shape",
    ),
    (
        "legacy-experiment-iteration",
        Op.SKMEANS,
        {**ORIGINAL_REQUESTS[Op.SKMEANS], "plaintext_matrix_id": ROOT, "experiment_iteration": 2**64 - 1},
        {},
        False,
        "experiment_iteration",
    ),
]


async def _send(
    nc: Any, worker: WorkerService, op: Op, params: dict[str, Any], fields: dict[str, Any], js: bool
) -> dict[str, Any]:
    subject = subjects.node_cmd(worker.prefix, worker.node_id, op.value)
    reply, _ = await request(nc, subject, command(op.value, params, **fields), json_mode=js, timeout=30)
    return reply


@pytest.mark.parametrize(
    ("op", "params", "fields", "json_mode", "names"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_hostile_numbers_are_a_400_and_write_nothing(
    hostile_rig: tuple[WorkerService, LocalStore],
    nc: Any,
    op: Op,
    params: dict[str, Any],
    fields: dict[str, Any],
    json_mode: bool,
    names: str,
) -> None:
    worker, store = hostile_rig
    before = await snapshot(store)
    reply = await _send(nc, worker, op, params, fields, json_mode)
    assert reply["ok"] is False, reply
    error = reply["error"]
    assert (error["code"], error["type"]) == (400, "BAD_REQUEST"), error
    assert names in error["message"], error
    assert await snapshot(store) == before


async def test_the_same_commands_with_sane_numbers_do_write(
    hostile_rig: tuple[WorkerService, LocalStore], nc: Any
) -> None:
    """The control: the store above is not read-only, so 'nothing written' means the 400 came first."""
    worker, store = hostile_rig
    before = set(await store.list_balls())
    reply = await _send(
        nc, worker, Op.SKMEANS, {**_SKM, "iterations": MAX_COUNT}, {"deadline_s": 1e300}, True
    )
    assert reply["ok"], reply
    assert reply["result"]["n_iterations"] == MAX_COUNT + 1
    reply = await _send(nc, worker, Op.LR_TRAIN, {**_LR, "learning_rate": 0.05}, {}, False)
    assert reply["ok"], reply
    assert {"w", "b", keys.centroids_current(ROOT)} <= set(await store.list_balls()) - before
