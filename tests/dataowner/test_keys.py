"""The owner's key directory: 0600 secrets, no pickle, and nothing secret in the exported public dir."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from core.crypto import ckks, fdhope, liu
from dataowner.keys import KeysError, OwnerKeys, write_secret


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def owner(tmp_path_factory) -> OwnerKeys:
    return OwnerKeys.generate(tmp_path_factory.mktemp("k") / "owner")


def test_generate_writes_owner_only_files(owner):
    d = owner.directory
    assert _mode(d) == 0o700
    files = [p for p in d.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"keys.json", "liu.json", "ckks-default-128.ctx"}
    for p in files:
        assert _mode(p) == 0o600, p
    manifest = json.loads((d / "keys.json").read_text())
    assert manifest["format"] == "rory-owner-keys" and manifest["ckks_profiles"] == ["default-128"]
    # no pickle anywhere: the Liu key is plain JSON
    assert json.loads((d / "liu.json").read_text())["format"] == "liu-key"


def test_load_roundtrip_decrypts(owner):
    again = OwnerKeys.load(owner.directory)
    assert again.liu == owner.liu
    x = np.array([[1.5, -2.0], [3.0, 4.25]])
    np.testing.assert_allclose(liu.decrypt(again.liu, liu.encrypt(owner.liu, x)), x, atol=1e-6)
    ctx = again.ckks()
    assert ctx.is_private()
    vec = ckks.encrypt_rows(owner.ckks(), x)
    np.testing.assert_allclose(ckks.decrypt_vectors(ctx, vec, width=2), x, atol=1e-4)
    assert "k" not in repr(again).split("(")[0] and "liu" not in repr(again)


def test_generate_refuses_to_overwrite(owner):
    with pytest.raises(KeysError, match="already holds keys"):
        OwnerKeys.generate(owner.directory)


def test_export_public_has_no_secret(owner, tmp_path):
    pub = tmp_path / "worker-keys"
    paths = owner.export_public(pub)
    assert set(paths) == {"ctx", "pubkey", "relinkey"}
    names = {p.name for p in pub.iterdir()}
    assert names == {"ctx", "pubkey", "relinkey"}
    assert not any("liu" in n or "secret" in n or n.endswith(".json") for n in names)
    # what the worker loads is a public context: it can encrypt but not decrypt
    ctx = ckks.read_public_context(pub)
    assert not ctx.is_private()
    # the secret key's bytes (field 3 of TenSEAL's context protobuf) appear in no exported file
    private = ckks.private_context_bytes(owner.ckks())
    secret = [bytes(f.payload) for f in ckks._fields(private) if f.number == 3]
    assert len(secret) == 1 and len(secret[0]) > 1000
    for p in pub.iterdir():
        data = p.read_bytes()
        assert secret[0] not in data and secret[0][:256] not in data
        assert b"liu-key" not in data
    assert not list(pub.glob("secret*"))


def test_export_refuses_the_secret_directory(owner):
    with pytest.raises(KeysError, match="refusing to export"):
        owner.export_public(owner.directory)
    with pytest.raises(KeysError, match="refusing to export"):
        owner.export_public(owner.directory / "pub")
    with pytest.raises(KeysError, match="refusing to export"):
        owner.export_public(owner.directory.parent)


def test_export_removes_stale_rotation_keys(owner, tmp_path):
    pub = tmp_path / "k"
    pub.mkdir()
    (pub / "rotatekey").write_bytes(b"old")
    owner.export_public(pub)
    assert not (pub / "rotatekey").exists()


def test_fdhope_keys_are_kept_per_dataset(owner):
    data = np.arange(20, dtype=float).reshape(4, 5)
    key = fdhope.generate_key(data)
    path = owner.save_fdhope("iris-udm", key)
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert OwnerKeys.load(owner.directory).fdhope("iris-udm") == key
    assert owner.has_fdhope("iris-udm") and not owner.has_fdhope("wine-udm")
    with pytest.raises(KeysError, match="invalid FDH-OPE key name"):
        owner.save_fdhope("../escape", key)
    with pytest.raises(KeysError, match="missing"):
        owner.fdhope("wine-udm")


def test_too_open_files_are_refused(tmp_path):
    keys = OwnerKeys.generate(tmp_path / "o", profiles=())
    os.chmod(keys.directory / "liu.json", 0o644)
    with pytest.raises(KeysError, match="chmod 600"):
        _ = OwnerKeys.load(keys.directory).liu
    os.chmod(keys.directory / "liu.json", 0o600)
    os.chmod(keys.directory, 0o755)
    with pytest.raises(KeysError, match="chmod 700"):
        OwnerKeys.load(keys.directory)


def test_missing_and_corrupt_material(tmp_path):
    with pytest.raises(KeysError, match="missing"):
        OwnerKeys.load(tmp_path / "nowhere")
    keys = OwnerKeys.generate(tmp_path / "o", profiles=())
    with pytest.raises(KeysError, match="no CKKS default-128 context"):
        keys.ckks("default-128")
    write_secret(keys.directory / "liu.json", b"not json")
    with pytest.raises(KeysError, match=r"liu\.json"):
        _ = OwnerKeys.load(keys.directory).liu
    write_secret(keys.directory / "ckks-default-128.ctx", b"\x00garbage")
    with pytest.raises(KeysError, match="not a TenSEAL context"):
        OwnerKeys.load(keys.directory).ckks()


def test_write_secret_is_0600_even_over_an_open_file(tmp_path):
    p = tmp_path / "s"
    p.write_text("old")
    os.chmod(p, 0o644)
    write_secret(p, b"new")
    assert p.read_bytes() == b"new" and _mode(p) == 0o600
    assert not list(tmp_path.glob(".s.*"))
