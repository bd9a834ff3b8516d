"""End-to-end property: random commands sent to a real worker (every Rory operation registered, real
local store) always get a well-formed error Reply, and the worker keeps serving.

Hypothesis drives a few dozen requests over a real nats-server: raw random bytes, command-shaped maps
with wrong fields, and valid envelopes with random params, in msgpack and in JSON. The store holds a
few small objects under the keys the generator likes, so some commands get past validation to storage
checks (absurd declared shapes meet a real object and must be refused without allocating).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec, subjects
from schemas.envelopes import Reply
from schemas.operations import Op
from tests.fuzz.strategies import OPS, commands, params_dicts
from tests.ops import command, request
from worker.handlers import register_all
from worker.runtime.registry import Registry
from worker.storage.local import LocalStore

EXPECTED_CODES = {400, 404, 422}


@pytest.fixture
async def fuzz_rig(start_worker, make_settings, tmp_path) -> dict[str, Any]:
    store = LocalStore(tmp_path / "css")
    for key in ("m", "encryptedm", "mudm", "x", "model", "records", "encryptedmodel", "encryptedrecords"):
        await store.put_ndarray(key, np.arange(12.0).reshape(4, 3))
    registry = Registry()
    register_all(registry)
    settings = make_settings(storage_path=str(tmp_path / "css"), keys_path=str(tmp_path / "no-keys"))
    worker = await start_worker(registry=registry, store=store, settings=settings)
    return {"worker": worker, "store": store}


def _payloads() -> st.SearchStrategy[tuple[str, bytes, bool]]:
    """(op for the subject, payload, json_mode)."""
    op = st.sampled_from([*OPS, "nope.op"])
    raw = st.tuples(op, st.binary(max_size=300), st.booleans())
    shaped = st.tuples(op, commands().map(lambda c: codec.encode(c)), st.just(False))
    shaped_json = st.tuples(op, commands(json_safe=True).map(lambda c: json.dumps(c).encode()), st.just(True))

    @st.composite
    def valid_envelope(draw: st.DrawFn) -> tuple[str, bytes, bool]:
        name = draw(st.sampled_from(OPS))
        json_mode = draw(st.booleans())
        params = draw(params_dicts(name, json_safe=json_mode))
        return name, codec.encode(command(name, params), json_mode=json_mode), json_mode

    return st.one_of(raw, shaped, shaped_json, valid_envelope(), valid_envelope(), valid_envelope())


async def _send(nc: Any, worker: Any, op: str, payload: bytes, json_mode: bool) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"} if json_mode else None
    msg = await nc.request(
        subjects.node_cmd(worker.prefix, worker.node_id, op), payload, timeout=10, headers=headers
    )
    reply = codec.decode(msg.data, json_mode=codec.is_json(msg.headers), max_bytes=4 * 1024 * 1024)
    Reply.model_validate(reply)
    assert reply["ok"] is False, reply
    error = reply["error"]
    assert error["code"] in EXPECTED_CODES, error
    assert msg.headers["Nats-Service-Error-Code"] == str(error["code"])
    assert "\n" not in msg.headers["Nats-Service-Error"]
    assert reply["node_id"] == worker.node_id
    return reply


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=_payloads())
async def test_random_commands_get_error_replies(fuzz_rig, nc, case) -> None:
    op, payload, json_mode = case
    worker = fuzz_rig["worker"]
    await _send(nc, worker, op, payload, json_mode)
    health = json.loads(
        (await nc.request(subjects.health(worker.prefix, worker.node_id), b"", timeout=5)).data
    )
    assert health["status"] == "ready" and health["inflight"] == 0, health


@pytest.mark.parametrize(
    ("op", "params", "code"),
    [
        (Op.SKMEANS, {"plaintext_matrix_id": "m", "encrypted_matrix_shape": [2**62, 2**62]}, 422),
        (Op.SKMEANS, {"plaintext_matrix_id": "m", "encrypted_matrix_shape": [2**40, 3, 3]}, 422),
        (
            Op.SKNN_PREDICT,
            {"model_id": "model", "records_test_id": "records", "encrypted_model_shape": [2**60]},
            422,
        ),
        (Op.KMEANS, {"plaintext_matrix_id": "x", "k": 1000}, 400),
        (Op.KMEANS, {"plaintext_matrix_id": "../../etc/passwd"}, 400),
        (Op.KMEANS, {"plaintext_matrix_id": "x", "num_chunks": 10**9}, 400),
    ],
    ids=["skm-huge-2d", "skm-huge-3d", "sknn-huge", "k>n", "path", "chunks"],
)
async def test_absurd_but_well_typed_params(fuzz_rig, nc, op, params, code) -> None:
    reply = await _send(nc, fuzz_rig["worker"], op.value, codec.encode(command(op.value, params)), False)
    assert reply["error"]["code"] == code, reply["error"]


async def test_worker_still_serves_after_the_fuzzing(fuzz_rig, nc) -> None:
    worker = fuzz_rig["worker"]
    for op in OPS:  # one garbage message per endpoint, then a health check and the error counters
        await _send(nc, worker, op, b"\xc1", False)
    health = json.loads(
        (await nc.request(subjects.health(worker.prefix, worker.node_id), b"", timeout=5)).data
    )
    assert health["status"] in ("ready", "busy") and health["inflight"] == 0
    stats = json.loads(
        (await nc.request(f"$SRV.STATS.rory-worker.{worker.instance_id}", b"", timeout=5)).data
    )
    assert sum(e["num_errors"] for e in stats["endpoints"]) == len(OPS)
    reply, _ = await request(
        nc,
        subjects.node_cmd(worker.prefix, worker.node_id, "clustering.kmeans"),
        command("clustering.kmeans", {"plaintext_matrix_id": "x", "k": 2}),
    )
    assert reply["ok"], reply
