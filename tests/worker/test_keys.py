"""The worker's CKKS key material: lazy, public only, failures confined to the CKKS command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from core.algorithms import pqc_kmeans
from core.crypto import ckks
from schemas import keys
from tests.ops import test_registry
from tests.worker.handlers.pqc_support import PqcWorker, owner_context, start_pqc_worker, stop_pqc_worker
from worker import keys as worker_keys
from worker.errors import MissingKeys
from worker.keys import KeysChanged, KeySource, PublicKeys, context_for, inspect_keys, load_context

KMEANS = "clustering.pqc.kmeans"


async def _store_kmeans_inputs(worker: PqcWorker, root: str = "kd") -> None:
    owner = owner_context()
    x = np.arange(12, dtype=float).reshape(6, 2)
    cols = ckks.encrypt_columns(owner, x)
    await worker.put_ciphertexts(keys.encrypted(root), [v for b in cols for v in b], [len(cols), 2])
    enc = pqc_kmeans.encrypt_centroids(owner, x[:2], 6)
    await worker.put_ciphertexts(keys.pqc_kmeans_centroids(root), [v for r in enc for v in r], [2, 2])


# ----------------------------------------------------------------------------- in-process
def test_public_context_from_keys_path_cannot_decrypt(tmp_path: Path) -> None:
    owner = owner_context()
    ckks.write_public_keys(owner, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx", "pubkey", "relinkey"]
    context, digest = load_context(KeySource(str(tmp_path)))
    assert not context.is_private() and context.has_public_key() and context.has_relin_keys()
    vector = ts.ckks_vector(context, [1.0, 2.0, 3.0])  # the public key encrypts...
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()  # ...but nothing decrypts
    foreign = ckks.deserialize(context, [ts.ckks_vector(owner, [4.0]).serialize()])[0]
    with pytest.raises(ValueError):
        foreign.decrypt()
    summary = inspect_keys(KeySource(str(tmp_path)))
    assert summary == PublicKeys(KeySource(str(tmp_path)), digest, 8192, 4096, True, False)
    assert context_for(summary) is not None


def test_secret_key_material_is_refused(tmp_path: Path) -> None:
    owner = owner_context()
    ckks.write_public_keys(owner, tmp_path)
    (tmp_path / "secretkey").write_bytes(b"whatever is in it, it is never opened")
    with pytest.raises(MissingKeys, match="secret"):
        load_context(KeySource(str(tmp_path)))
    (tmp_path / "secretkey").unlink()
    (tmp_path / "ctx").write_bytes(ckks.private_context_bytes(owner))  # a full private context as ctx
    with pytest.raises(MissingKeys, match="secret key"):
        load_context(KeySource(str(tmp_path)))


def test_missing_or_garbage_material_is_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(MissingKeys, match="does not exist"):
        load_context(KeySource(str(tmp_path / "absent")))
    with pytest.raises(MissingKeys, match="not found"):
        load_context(KeySource(str(tmp_path)))
    (tmp_path / "ctx").write_bytes(b"\x00\x01garbage")
    with pytest.raises(MissingKeys, match=r"unusable|incomplete"):
        load_context(KeySource(str(tmp_path)))


def test_changed_files_are_detected_by_pool_processes(tmp_path: Path) -> None:
    ckks.write_public_keys(owner_context(), tmp_path)
    summary = inspect_keys(KeySource(str(tmp_path)))
    ckks.write_public_keys(ckks.create_context("default-128"), tmp_path)  # keys rotated underneath
    worker_keys._contexts.clear()  # a fresh pool process
    with pytest.raises(KeysChanged, match="changed"):
        context_for(summary)


def test_galois_keys_are_loaded_only_on_request(tmp_path: Path) -> None:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    ctx.global_scale = 2**20
    ckks.write_public_keys(ctx, tmp_path, galois=True)
    plain = inspect_keys(KeySource(str(tmp_path)))
    rotating = inspect_keys(KeySource(str(tmp_path), rotatekey_filename="rotatekey"))
    assert not plain.has_galois_keys and rotating.has_galois_keys
    assert plain.digest != rotating.digest
    with pytest.raises(MissingKeys, match="Galois"):
        plain.require_galois_keys("ml.pplr.train")


# ----------------------------------------------------------------------------- over NATS
async def test_no_key_files_fail_only_the_ckks_command(nats_url: str, tmp_path: Path) -> None:
    worker = await start_pqc_worker(nats_url, tmp_path, extra=list(test_registry()))
    try:
        await _store_kmeans_inputs(worker)
        params = {"step_index": 1, "plaintext_matrix_id": "kd", "k": 2}
        error = await worker.error(KMEANS, params)
        assert (error["code"], error["type"]) == (422, "MISSING_KEYS")
        assert "KEYS_PATH" in error["message"] and str(worker.keys_dir) in error["message"]
        error = await worker.error(
            "ml.pplr.train",
            {
                "encrypted_matrix_train_id": "x",
                "encrypted_label_vector_train_id": "y",
                "encrypted_weights_id": "w",
                "encrypted_bias_id": "b",
            },
        )
        assert error["type"] == "MISSING_KEYS"

        # other operations keep working: a test op, and the CKKS ops' plaintext steps
        echo = await worker.ok("test.echo", {"message": "still here"})
        assert echo["message"] == "still here"
        x = np.array([[1, 2], [1.5, 1.8], [8, 8], [9, 8.5]])
        udm = x[:, None, :] - x[None, :2, :]
        await worker.store.put_ndarray(keys.udm("P"), udm)
        await worker.store.put_ndarray(keys.shift_matrix("P"), np.array([[0.0, 0.0], [-4.6667, -4.3]]))
        step2 = await worker.ok(
            "clustering.pqc.skmeans",
            {"step_index": 2, "plaintext_matrix_id": "P", "k": 2, "is_zero": False, "clustering_status": 2},
        )
        assert step2["clustering_status"] == 2 and step2["udm_shape"] == [4, 2, 2]
        assert worker_keys.RESOURCE_PUBLIC not in worker.service.resources  # nothing cached on failure

        # the operator adds the files: the next CKKS command loads them, no restart needed
        ckks.write_public_keys(owner_context(), worker.keys_dir)
        result = await worker.ok(KMEANS, params)
        assert result["distances_shape"] == [1, 2]
        loaded = worker.service.resources[worker_keys.RESOURCE_PUBLIC]
        await worker.ok(KMEANS, params)
        assert worker.service.resources[worker_keys.RESOURCE_PUBLIC] is loaded  # loaded once
        assert not loaded.has_galois_keys  # Galois keys are not loaded for k-means
    finally:
        await stop_pqc_worker(worker)


async def test_key_directory_with_a_secret_key_is_refused(nats_url: str, tmp_path: Path) -> None:
    worker = await start_pqc_worker(nats_url, tmp_path, keys_ctx=owner_context())
    try:
        (worker.keys_dir / "secretkey").write_bytes(b"never read")
        await _store_kmeans_inputs(worker)
        error = await worker.error(KMEANS, {"step_index": 1, "plaintext_matrix_id": "kd", "k": 2})
        assert (error["code"], error["type"]) == (422, "MISSING_KEYS")
        assert "secret" in error["message"]
        (worker.keys_dir / "secretkey").unlink()
        assert (await worker.ok(KMEANS, {"step_index": 1, "plaintext_matrix_id": "kd", "k": 2}))[
            "block_size"
        ] == 6
    finally:
        await stop_pqc_worker(worker)
