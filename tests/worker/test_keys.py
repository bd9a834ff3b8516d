"""The worker's CKKS key material: lazy, public only, failures confined to the CKKS command."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
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


# ----------------------------------------------------------------------------- key-file layout
# docs/ckks-keys.md: ``ctx`` may carry the keys itself; ``pubkey``/``relinkey``/``rotatekey`` add or
# replace them, each as the raw SEAL key or as a whole public context that carries it.


@functools.cache
def _material() -> dict[str, bytes]:
    """Every serialisation the table below combines, from the owner's N=8192 context."""
    owner = owner_context()
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckks.write_public_keys(owner, tmp)
        for name in ("ctx", "pubkey", "relinkey"):
            out[name] = (Path(tmp) / name).read_bytes()
        owner.public_key().data.save(str(Path(tmp) / "saved"))
        out["saved_pubkey"] = (Path(tmp) / "saved").read_bytes()
    out["bare_ctx"] = out.pop("ctx")
    out["raw_pubkey"] = out.pop("pubkey")
    out["raw_relinkey"] = out.pop("relinkey")
    out["public_ctx"] = ckks.public_context_bytes(owner)  # public key + relinearisation keys
    out["private_ctx"] = ckks.private_context_bytes(owner)
    other = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    other.global_scale = 2**20
    out["other_params_ctx"] = ckks.public_context_bytes(other)
    return out


@functools.cache
def _galois_material() -> dict[str, bytes]:
    """A small context with Galois keys (N=4096 keeps them at a few MB)."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    ctx.global_scale = 2**20
    with tempfile.TemporaryDirectory() as tmp:
        paths = ckks.write_public_keys(ctx, tmp, galois=True)
        files = {name: path.read_bytes() for name, path in paths.items()}
    return {
        "bare_ctx": files["ctx"],
        "raw_pubkey": files["pubkey"],
        "raw_relinkey": files["relinkey"],
        "raw_rotatekey": files["rotatekey"],
        "galois_ctx": ckks.public_context_bytes(ctx, galois=True),
    }


M = _material
G = _galois_material
Files = Callable[[], dict[str, bytes]]


@dataclass(frozen=True)
class Accepted:
    files: Files
    relin: bool
    galois: bool = False
    rotate: bool = False  # load as an operation that asks for Galois keys


@dataclass(frozen=True)
class Refused:
    files: Files
    file: str  # the file the message must name
    pattern: str  # what the message must say
    rotate: bool = False


ACCEPTED = {
    "ctx alone with public and relin keys": Accepted(lambda: {"ctx": M()["public_ctx"]}, relin=True),
    "split files from write_public_keys": Accepted(
        lambda: {"ctx": M()["bare_ctx"], "pubkey": M()["raw_pubkey"], "relinkey": M()["raw_relinkey"]},
        relin=True,
    ),
    "ctx without keys + raw pubkey (TenSEAL key.data.save)": Accepted(
        lambda: {"ctx": M()["bare_ctx"], "pubkey": M()["saved_pubkey"]}, relin=False
    ),
    "ctx without keys + whole public context in pubkey": Accepted(
        lambda: {"ctx": M()["bare_ctx"], "pubkey": M()["public_ctx"]}, relin=False
    ),
    "whole public context in pubkey and relinkey": Accepted(
        lambda: {"ctx": M()["bare_ctx"], "pubkey": M()["public_ctx"], "relinkey": M()["public_ctx"]},
        relin=True,
    ),
    "ctx with keys, replaced by raw files": Accepted(
        lambda: {"ctx": M()["public_ctx"], "pubkey": M()["raw_pubkey"], "relinkey": M()["raw_relinkey"]},
        relin=True,
    ),
    "raw relin and Galois keys": Accepted(
        lambda: {
            "ctx": G()["bare_ctx"],
            "pubkey": G()["raw_pubkey"],
            "relinkey": G()["raw_relinkey"],
            "rotatekey": G()["raw_rotatekey"],
        },
        relin=True,
        galois=True,
        rotate=True,
    ),
    "whole context with Galois keys in rotatekey": Accepted(
        lambda: {"ctx": G()["bare_ctx"], "pubkey": G()["raw_pubkey"], "rotatekey": G()["galois_ctx"]},
        relin=False,
        galois=True,
        rotate=True,
    ),
    "Galois keys inside ctx, not asked for": Accepted(lambda: {"ctx": G()["galois_ctx"]}, relin=True),
    "Galois keys inside ctx, asked for": Accepted(
        lambda: {"ctx": G()["galois_ctx"]}, relin=True, galois=True, rotate=True
    ),
}

GARBAGE = b"\x0a\x03abc\x12\x01"  # parses as a protobuf message, but is no context and no SEAL key
REFUSED = {
    "ctx with a secret key": Refused(lambda: {"ctx": M()["private_ctx"]}, "ctx", r"refusing.*secret key"),
    "secret key file present": Refused(
        lambda: {"ctx": M()["public_ctx"], "secretkey": b"never opened"}, "secretkey", r"refusing.*secret key"
    ),
    "private context in pubkey": Refused(
        lambda: {"ctx": M()["bare_ctx"], "pubkey": M()["private_ctx"]}, "pubkey", r"refusing.*secret key"
    ),
    "no public key anywhere": Refused(
        lambda: {"ctx": M()["bare_ctx"], "relinkey": M()["raw_relinkey"]}, "pubkey", r"incomplete.*no public"
    ),
    "garbage ctx": Refused(
        lambda: {"ctx": b"\x00\x01garbage", "pubkey": M()["raw_pubkey"]},
        "ctx",
        r"unusable.*expected a TenSEAL context serialized without its secret key",
    ),
    "garbage pubkey": Refused(
        lambda: {"ctx": M()["bare_ctx"], "pubkey": GARBAGE},
        "pubkey",
        r"unusable.*expected pubkey to hold the public key: the raw SEAL PublicKey",
    ),
    "truncated raw pubkey": Refused(
        lambda: {"ctx": M()["public_ctx"], "pubkey": M()["raw_pubkey"][:1000]},
        "pubkey",
        r"raw SEAL PublicKey.*expected pubkey to hold the public key",
    ),
    "garbage relinkey": Refused(
        lambda: {"ctx": M()["public_ctx"], "relinkey": b"garbage"},
        "relinkey",
        r"expected relinkey to hold the relinearisation keys: the raw SEAL RelinKeys",
    ),
    "relin keys in pubkey": Refused(
        lambda: {"ctx": M()["bare_ctx"], "pubkey": M()["raw_relinkey"]}, "pubkey", r"expected pubkey"
    ),
    "garbage rotatekey": Refused(
        lambda: {"ctx": G()["galois_ctx"], "rotatekey": GARBAGE * 3},
        "rotatekey",
        r"expected rotatekey to hold the Galois keys: the raw SEAL GaloisKeys",
        rotate=True,
    ),
    "public context without Galois keys in rotatekey": Refused(
        lambda: {"ctx": M()["public_ctx"], "rotatekey": M()["public_ctx"]},
        "rotatekey",
        r"incomplete.*TenSEAL context without the Galois keys",
        rotate=True,
    ),
    "context with other parameters in pubkey": Refused(
        lambda: {"ctx": M()["bare_ctx"], "pubkey": M()["other_params_ctx"]},
        "pubkey",
        r"other encryption parameters than .*ctx",
    ),
    "context without keys in pubkey": Refused(
        lambda: {"ctx": M()["bare_ctx"], "pubkey": M()["bare_ctx"]},
        "pubkey",
        r"TenSEAL context without the public key",
    ),
}


def _write(directory: Path, files: dict[str, bytes]) -> KeySource:
    directory.mkdir(exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return KeySource(str(directory))


@pytest.mark.parametrize("case", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_key_file_layouts_that_load(tmp_path: Path, case: Accepted) -> None:
    source = _write(tmp_path / "keys", case.files())
    if case.rotate:
        source = KeySource(source.directory, rotatekey_filename="rotatekey")
    context, _ = load_context(source)
    assert context.is_public() and not context.has_secret_key() and context.has_public_key()
    assert (context.has_relin_keys(), context.has_galois_keys()) == (case.relin, case.galois)
    vector = ts.ckks_vector(context, [1.0, 2.0])
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    if ckks.slot_count(context) == ckks.slot_count(owner_context()):  # material from the owner's context
        # the owner's secret key decrypts what the assembled public key encrypted: the keys fit
        owner_view = ckks.deserialize(owner_context(), [vector.serialize()])[0]
        assert np.allclose(owner_view.decrypt(), [1.0, 2.0], atol=1e-3)


@pytest.mark.parametrize("case", list(REFUSED.values()), ids=list(REFUSED))
def test_key_file_layouts_that_are_refused(tmp_path: Path, case: Refused) -> None:
    source = _write(tmp_path / "keys", case.files())
    if case.rotate:
        source = KeySource(source.directory, rotatekey_filename="rotatekey")
    with pytest.raises(MissingKeys, match=case.pattern) as caught:
        load_context(source)
    assert str(tmp_path / "keys" / case.file) in str(caught.value)
    assert caught.value.code == 422


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


async def test_whole_public_context_in_pubkey_serves_a_command(nats_url: str, tmp_path: Path) -> None:
    """The layout that used to fail with "not a TenSEAL context: incompatible version", end to end."""
    worker = await start_pqc_worker(nats_url, tmp_path)
    try:
        worker.keys_dir.mkdir()
        (worker.keys_dir / "ctx").write_bytes(M()["bare_ctx"])
        (worker.keys_dir / "pubkey").write_bytes(M()["public_ctx"])
        (worker.keys_dir / "relinkey").write_bytes(M()["public_ctx"])
        await _store_kmeans_inputs(worker)
        result = await worker.ok(KMEANS, {"step_index": 1, "plaintext_matrix_id": "kd", "k": 2})
        assert result["distances_shape"] == [1, 2]
        flat = await worker.get_ciphertexts(owner_context(), result["encrypted_distances_id"])
        x = np.arange(12, dtype=float).reshape(6, 2)
        expected = ((x[:, None, :] - x[None, :2, :]) ** 2).sum(axis=-1)
        got = np.array([flat[j].decrypt() for j in range(2)]).T
        assert np.allclose(got, expected, atol=1e-2)
    finally:
        await stop_pqc_worker(worker)
