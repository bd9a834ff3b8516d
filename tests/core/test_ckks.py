"""CKKS core: profiles, public/secret separation, key directory, packing, round trips, pitfalls."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from core.crypto import ckks
from core.crypto.ckks import (
    CkksProfile,
    MalformedMaterial,
    MissingKeyMaterial,
    SecretKeyPresent,
)
from core.errors import CoreError

# --------------------------------------------------------------------------------------------------
# profiles


def test_profiles_are_consistent() -> None:
    assert set(ckks.PROFILES) == {
        "default-128", "default-192", "default-256", "ml-128", "ml-192", "ml-256", "pplr-128", "pplr-192",
        "pplr-256",
    }
    for p in ckks.PROFILES.values():
        assert ckks.validate_profile(p) is p
        assert all(b == p.scale_bits for b in p.coeff_mod_bit_sizes[1:-1])
    assert ckks.PROFILES["default-128"].coeff_mod_bit_sizes == (60, 40, 40, 60)
    assert ckks.PROFILES["ml-128"].depth == 7
    fixed = ckks.PROFILES["default-256"]
    assert (fixed.poly_modulus_degree, fixed.scale_bits) == (32768, 50)
    assert fixed.coeff_mod_bit_sizes == (60, 50, 50, 50, 60)
    assert fixed.headroom_bits == 10


def test_original_broken_256_profile_is_rejected() -> None:
    broken = CkksProfile("orig-256", 32768, (60, 50, 50, 50, 60), 60, 256)
    with pytest.raises(CoreError, match="rescaling primes"):
        ckks.validate_profile(broken)


def test_profile_over_security_budget_is_rejected() -> None:
    with pytest.raises(CoreError, match="HE standard"):
        ckks.validate_profile(CkksProfile("x", 8192, (60, 40, 40, 40, 60), 40, 128))


def test_get_profile_names() -> None:
    assert ckks.get_profile("default") is ckks.PROFILES["default-128"]
    assert ckks.get_profile("ml") is ckks.PROFILES["ml-128"]
    with pytest.raises(CoreError):
        ckks.get_profile("nope")


def test_context_matches_profile(owner: ts.Context) -> None:
    assert owner.is_private()
    assert ckks.slot_count(owner) == 4096
    assert owner.global_scale == 2.0**40
    assert owner.has_relin_keys() and not owner.has_galois_keys()


# --------------------------------------------------------------------------------------------------
# public context: cannot decrypt, secret material refused


def test_public_context_cannot_decrypt(owner: ts.Context, worker: ts.Context) -> None:
    assert not worker.is_private() and worker.has_public_key() and worker.has_relin_keys()
    v = ts.ckks_vector(worker, [1.0, 2.0, 3.0])  # the worker can encrypt...
    with pytest.raises(ValueError):
        v.decrypt()  # ...but not decrypt
    with pytest.raises(MissingKeyMaterial):
        ckks.decrypt_vector(worker, v)
    np.testing.assert_allclose(ckks.decrypt_vector(owner, v), [1, 2, 3], atol=1e-6)


def test_public_bytes_carry_no_secret(owner: ts.Context, public_bytes: bytes) -> None:
    assert {f.number for f in ckks._fields(public_bytes)} == {1, 2}
    assert 1_000_000 < len(public_bytes) < 3_000_000  # N=8192: ~1.86 MB (public key + relin keys)


@pytest.mark.parametrize("loader", [ckks.load_public_context, ckks.cached_public_context])
def test_secret_bearing_material_is_refused(owner: ts.Context, loader) -> None:
    for data in (owner.serialize(save_secret_key=True), ckks.private_context_bytes(owner)):
        with pytest.raises(SecretKeyPresent):
            loader(data)


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x0a\x05abc"])
def test_malformed_context_is_refused(data: bytes) -> None:
    with pytest.raises(MalformedMaterial):
        ckks.load_public_context(data)


def test_cached_context_is_reused(public_bytes: bytes) -> None:
    a = ckks.cached_public_context(public_bytes)
    b = ckks.cached_public_context(bytes(public_bytes))
    assert a is b and not a.is_private()


# --------------------------------------------------------------------------------------------------
# key directory


def test_key_directory_round_trip(owner: ts.Context, tmp_path) -> None:
    paths = ckks.write_public_keys(owner, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx", "pubkey", "relinkey"]
    assert paths["ctx"].stat().st_size < 1000  # parameters only
    ctx = ckks.read_public_context(tmp_path)
    assert not ctx.is_private() and ctx.has_relin_keys()
    v = ts.ckks_vector(ctx, [4.0, 5.0])
    np.testing.assert_allclose(ckks.decrypt_vector(owner, v), [4, 5], atol=1e-6)
    sq = v * v  # relinearisation keys made it through
    np.testing.assert_allclose(ckks.decrypt_vector(owner, sq), [16, 25], atol=1e-4)


def test_key_directory_custom_names(owner: ts.Context, tmp_path) -> None:
    ckks.write_public_keys(owner, tmp_path, "c", "p", "r")
    ctx = ckks.read_public_context(tmp_path, "c", "p", "r")
    assert not ctx.is_private()


def test_key_directory_refuses_secret_file(owner: ts.Context, tmp_path) -> None:
    ckks.write_public_keys(owner, tmp_path)
    (tmp_path / "secretkey").write_bytes(b"anything")
    with pytest.raises(SecretKeyPresent, match="secretkey"):
        ckks.read_public_context(tmp_path)


def test_key_directory_refuses_private_ctx(owner: ts.Context, tmp_path) -> None:
    ckks.write_public_keys(owner, tmp_path)
    (tmp_path / "ctx").write_bytes(owner.serialize(save_secret_key=True))
    with pytest.raises(SecretKeyPresent):
        ckks.read_public_context(tmp_path)


def test_key_directory_missing(tmp_path) -> None:
    with pytest.raises(MissingKeyMaterial):
        ckks.read_public_context(tmp_path)


def test_key_directory_single_file_layout(owner: ts.Context, public_bytes: bytes, tmp_path) -> None:
    (tmp_path / "ctx").write_bytes(public_bytes)
    ctx = ckks.read_public_context(tmp_path)
    assert ctx.has_public_key() and ctx.has_relin_keys() and not ctx.is_private()


def test_key_directory_without_public_key(owner: ts.Context, tmp_path) -> None:
    ckks.write_public_keys(owner, tmp_path)
    (tmp_path / "pubkey").unlink()
    with pytest.raises(MissingKeyMaterial, match="public key"):
        ckks.read_public_context(tmp_path)


def test_rotation_keys_for_given_steps(owner: ts.Context, tmp_path) -> None:
    ctx = ckks.create_context("default-128")
    paths = ckks.write_public_keys(ctx, tmp_path, galois=True, rotation_steps=[1, 2, -1])
    assert paths["rotatekey"].stat().st_size < 10_000_000  # 3 keys, not the full 33 MB set
    pub = ckks.read_public_context(tmp_path)
    assert pub.has_galois_keys()
    x, w = ts.ckks_vector(pub, [1.0, 2.0]), ts.ckks_vector(pub, [3.0, 4.0])
    np.testing.assert_allclose(ckks.decrypt_vector(ctx, x.dot(w)), [11.0], atol=1e-3)
    # without the rotatekey file the context has no Galois keys
    assert not ckks.read_public_context(tmp_path, rotatekey_filename=None).has_galois_keys()


def test_galois_element_matches_seal() -> None:
    assert ckks.galois_element(1, 8192) == 3
    assert ckks.galois_element(2, 8192) == 9
    assert ckks.galois_element(-1, 8192) == pow(3, 4095, 16384)
    with pytest.raises(CoreError):
        ckks.galois_element(0, 8192)


# --------------------------------------------------------------------------------------------------
# packing and round trips


def test_row_round_trip(owner: ts.Context, worker: ts.Context) -> None:
    X = np.random.default_rng(1).uniform(-100, 100, size=(5, 7))
    rows = ckks.encrypt_rows(worker, X)
    assert [v.size() for v in rows] == [7] * 5
    back = ckks.deserialize(owner, ckks.serialize(rows))
    np.testing.assert_allclose(ckks.decrypt_vectors(owner, back), X, atol=1e-5)


def test_column_round_trip_with_padding(owner: ts.Context) -> None:
    X = np.arange(30.0).reshape(10, 3)
    blocks = ckks.encrypt_columns(owner, X, slots=4)
    assert len(blocks) == 3 and all(len(b) == 3 for b in blocks)
    assert {v.size() for b in blocks for v in b} == {4}
    dec = np.stack([ckks.decrypt_vectors(owner, b) for b in blocks])  # (blocks, a, 4)
    flat = dec.transpose(0, 2, 1).reshape(-1, 3)
    np.testing.assert_allclose(flat[:10], X, atol=1e-5)
    np.testing.assert_allclose(flat[10:], 0.0, atol=1e-5)
    single = ckks.encrypt_columns(owner, X)
    assert len(single) == 1 and single[0][0].size() == 10


def test_replicated(owner: ts.Context) -> None:
    vs = ckks.encrypt_replicated(owner, [1.5, -2.0], 6)
    np.testing.assert_allclose(ckks.decrypt_vectors(owner, vs), [[1.5] * 6, [-2.0] * 6], atol=1e-6)
    with pytest.raises(CoreError):
        ckks.encrypt_replicated(owner, [1.0], 5000)


def test_input_validation(owner: ts.Context) -> None:
    with pytest.raises(CoreError):
        ckks.encrypt_rows(owner, [1.0, 2.0])
    with pytest.raises(CoreError):
        ckks.encrypt_rows(owner, [[np.nan, 1.0]])
    with pytest.raises(CoreError):
        ckks.encrypt_rows(owner, np.zeros((1, 5000)))
    with pytest.raises(CoreError):
        ckks.encrypt_columns(owner, np.zeros((3, 2)), slots=10_000)


def test_deserialize_rejects_garbage_and_forged_sizes(owner: ts.Context) -> None:
    with pytest.raises(MalformedMaterial):
        ckks.deserialize(owner, [b"not a ciphertext"])
    blob = ts.ckks_vector(owner, [1.0, 2.0]).serialize()
    forged = b"".join(
        ckks._len_field(1, ckks._enc_varint(10_000)) if f.number == 1 else bytes(f.raw)
        for f in ckks._fields(blob)
    )
    with pytest.raises(MalformedMaterial):
        ckks.deserialize(owner, [forged])


def test_decode_rule() -> None:
    vals = [1.23456, -0.004]
    np.testing.assert_array_equal(ckks.decode(vals), vals)
    np.testing.assert_array_equal(ckks.decode(vals, round_=True), [1.23, -0.0])
    np.testing.assert_array_equal(ckks.decode(vals, round_=True, decimals=4), [1.2346, -0.004])
    np.testing.assert_array_equal(ckks.post_process([1e-6, -2e-6, 0.5]), [0.0, 0.0, 0.5])


# --------------------------------------------------------------------------------------------------
# homomorphic helpers and the transparent-ciphertext pitfall


def test_transparent_subtraction_is_handled(owner: ts.Context, worker: ts.Context) -> None:
    a = ts.ckks_vector(worker, [1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError, match="transparent"):
        _ = a - a  # raw TenSEAL
    np.testing.assert_allclose(ckks.decrypt_vector(owner, ckks.subtract(a, a)), 0.0, atol=1e-6)
    # the k-means case: the same centroid recomputed from the same members is bit-identical
    c1, c2 = (a + a) * 0.5, (a + a) * 0.5
    with pytest.raises(RuntimeError, match="transparent"):
        _ = c1 - c2
    zero = ckks.encrypted_zero(worker, 3)
    np.testing.assert_allclose(ckks.decrypt_vector(owner, ckks.subtract(c1, c2, zero)), 0.0, atol=1e-6)
    np.testing.assert_allclose(ckks.decrypt_vector(owner, (c1 + zero) - c2), 0.0, atol=1e-6)
    b = ts.ckks_vector(worker, [0.5, 0.5, 0.5])
    np.testing.assert_allclose(ckks.decrypt_vector(owner, ckks.subtract(a, b)), [0.5, 1.5, 2.5], atol=1e-6)


def test_sum_and_levels(owner: ts.Context) -> None:
    vs = ckks.encrypt_rows(owner, np.arange(12.0).reshape(4, 3))
    np.testing.assert_allclose(ckks.decrypt_vector(owner, ckks.sum_vectors(vs)), [18, 22, 26], atol=1e-5)
    with pytest.raises(CoreError):
        ckks.sum_vectors([])
    assert ckks.levels_left(vs[0]) == 2 and ckks.levels_left(vs[0] * 0.5) == 1
    with pytest.raises(CoreError, match="levels"):
        ckks.require_levels(vs[0] * 0.5 * 0.5, 1, "test")


def test_ciphertext_of_other_parameters_is_refused(owner: ts.Context) -> None:
    other = ckks.create_context("ml-128")
    blob = ts.ckks_vector(other, [1.0]).serialize()
    with pytest.raises(MalformedMaterial):
        ckks.deserialize(owner, [blob])
