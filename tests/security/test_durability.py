"""What the local store promises about crashes, power losses and file permissions (docs/storage.md 4).

* ``STORAGE_FSYNC`` reaches the store the worker opens; with it on, a commit fsyncs every file it
  wrote (chunks, manifest, pointer) and the directories holding them, the version directory before
  the pointer is renamed and the bucket directory after; with it off nothing is fsynced.
* The version a commit replaces is kept until the next commit. A reader that finds the current
  version incomplete (a file missing, empty or short: what a write that never reached the disk
  leaves after a power loss) reads the previous one; a checksum mismatch is never papered over.
* Every file the store creates is mode 0600 and every directory 0700, whatever the umask allows.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from worker.errors import CorruptObject
from worker.settings import Settings
from worker.storage import LocalStore, open_store

BUCKET = "rory"


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, storage_backend="local", storage_path=str(tmp_path), **values)  # type: ignore[call-arg]


def _refs(root: Path, ball: str) -> list[str]:
    return (root / BUCKET / f"{ball}.ref").read_text().split()


def _version_dir(root: Path, ball: str, version: str) -> Path:
    return root / BUCKET / f"{ball}.{version}"


# ----------------------------------------------------------------------------- the setting
async def test_storage_fsync_reaches_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(tmp_path).storage_fsync is False
    monkeypatch.setenv("STORAGE_FSYNC", "true")
    from_env = Settings(_env_file=None, storage_backend="local", storage_path=str(tmp_path))  # type: ignore[call-arg]
    assert from_env.storage_fsync is True
    for settings, expected in ((from_env, True), (_settings(tmp_path, storage_fsync=False), False)):
        store = open_store(settings)
        try:
            assert isinstance(store, LocalStore) and store.fsync is expected
        finally:
            await store.aclose()
    async with open_store(from_env, fsync=False) as explicit:
        assert explicit.fsync is False  # type: ignore[attr-defined]  # an explicit option still wins


async def test_the_worker_store_gets_the_setting(tmp_path: Path) -> None:
    from worker.runtime.service import open_default_store

    store = await open_default_store(_settings(tmp_path, storage_fsync=True))
    try:
        assert store.fsync is True  # wrappers (breaker, cache) forward to the local store
    finally:
        await store.aclose()


# ----------------------------------------------------------------------------- fsync calls
@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every os.fsync ("file"/"dir", path) and pointer rename ("replace", name), in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        events.append(("replace", Path(dst).name))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    yield events


@pytest.mark.parametrize("rows", [4, 300_000], ids=["small", "large"])
async def test_fsync_on_syncs_files_then_directories(
    tmp_path: Path, syncs: list[tuple[str, str]], rows: int
) -> None:
    store = open_store(_settings(tmp_path, storage_fsync=True))
    try:
        await store.put_ndarray("ball", np.ones((rows, 2)), num_chunks=3)  # creates the bucket too
        first = list(syncs)
        syncs.clear()
        await store.put_ndarray("ball", np.zeros((rows, 2)), num_chunks=3)
        np.testing.assert_array_equal(await store.get_ndarray("ball"), np.zeros((rows, 2)))
    finally:
        await store.aclose()
    bucket = str(tmp_path / BUCKET)
    version = _version_dir(tmp_path, "ball", _refs(tmp_path, "ball")[0])
    files = {path for kind, path in syncs if kind == "file"}
    assert {str(version / f"ball_{i}") for i in range(3)} | {str(version / "manifest.json")} <= files
    assert any(path.endswith(".ref") for path in files)  # the new pointer, before its rename
    kinds = [kind for kind, _ in syncs]
    renamed = kinds.index("replace")
    assert ("dir", str(version)) in syncs[:renamed]  # the version directory, before the commit
    assert all(kind == "file" for kind, path in syncs[:renamed] if kind != "dir")
    assert syncs[renamed:] == [("replace", "ball.ref"), ("dir", bucket)]  # then the rename, synced
    assert ("dir", str(tmp_path)) in first  # the bucket's own entry when it was created


async def test_fsync_on_syncs_a_delete(tmp_path: Path, syncs: list[tuple[str, str]]) -> None:
    async with LocalStore(tmp_path, fsync=True) as store:
        await store.put_ndarray("gone", np.ones(3))
        syncs.clear()
        assert await store.delete("gone") == 1
    assert syncs == [("dir", str(tmp_path / BUCKET))]


async def test_fsync_off_never_syncs(tmp_path: Path, syncs: list[tuple[str, str]]) -> None:
    async with open_store(_settings(tmp_path)) as store:
        for rows in (4, 300_000):
            await store.put_ndarray("ball", np.ones((rows, 2)), num_chunks=2)
        await store.delete("ball")
    assert [kind for kind, _ in syncs] == ["replace", "replace"]


# ----------------------------------------------------------------------------- previous version
async def _settled(root: Path, ball: str, expected: set[str]) -> set[str]:
    """The ball's version directories once background removal is done (or after ~2 s)."""
    for _ in range(200):
        found = {p.name for p in (root / BUCKET).iterdir() if p.is_dir() and p.name.startswith(f"{ball}.v")}
        if found == expected:
            break
        await asyncio.sleep(0.01)
    return found


@pytest.mark.parametrize("fsync", [False, True])
async def test_the_previous_version_is_kept_until_the_next_commit(tmp_path: Path, fsync: bool) -> None:
    async with LocalStore(tmp_path, fsync=fsync) as store:
        await store.put_ndarray("b", np.full(4, 1.0))
        (v1,) = _refs(tmp_path, "b")
        await store.put_ndarray("b", np.full(4, 2.0))
        v2, kept = _refs(tmp_path, "b")
        assert kept == v1 and _version_dir(tmp_path, "b", v1).is_dir()
        await store.put_ndarray("b", np.full(4, 3.0))
        assert _refs(tmp_path, "b")[1] == v2
        assert await _settled(tmp_path, "b", {f"b.{v}" for v in _refs(tmp_path, "b")}) == {
            f"b.{v}" for v in _refs(tmp_path, "b")
        }
        assert await store.sweep(min_age_s=0) == 0  # both kept versions are referenced
        assert await store.delete("b") == 1
        assert await _settled(tmp_path, "b", set()) == set()


def _lose(directory: Path, what: str) -> None:
    """What a write that never reached the disk can look like after a power loss."""
    if what == "empty-chunk":
        (directory / "b_1").write_bytes(b"")
    elif what == "missing-chunk":
        (directory / "b_1").unlink()
    elif what == "empty-manifest":
        (directory / "manifest.json").write_bytes(b"")
    elif what == "missing-manifest":
        (directory / "manifest.json").unlink()
    else:
        raise AssertionError(what)


@pytest.mark.parametrize("what", ["empty-chunk", "missing-chunk", "empty-manifest", "missing-manifest"])
async def test_an_incomplete_current_version_reads_as_the_previous_one(tmp_path: Path, what: str) -> None:
    old, new = np.arange(8.0).reshape(4, 2), -np.arange(8.0).reshape(4, 2)
    async with LocalStore(tmp_path) as store:
        await store.put_ndarray("b", old, num_chunks=2)
        await store.put_ndarray("b", new, num_chunks=2)
        current, previous = _refs(tmp_path, "b")
        _lose(_version_dir(tmp_path, "b", current), what)
        got, info = await store.fetch_ndarray("b")
        np.testing.assert_array_equal(got, old)
        assert info.etag == previous  # the info names the version actually read
        _lose(_version_dir(tmp_path, "b", previous), what)
    # A power loss restarts the worker: a fresh store has no manifest it read before.
    async with LocalStore(tmp_path) as store:
        with pytest.raises(CorruptObject):
            await store.get_ndarray("b")
        await store.put_ndarray("b", new)  # a lost ball can always be written again
        np.testing.assert_array_equal(await store.get_ndarray("b"), new)


async def test_a_manifest_read_before_still_checks_every_byte(tmp_path: Path) -> None:
    """The store keeps manifests it parsed (a version never changes after its commit): a manifest
    rewritten on disk afterwards is not read again, and chunk bytes changed under it are still
    refused by the block hashes of the manifest first read."""
    async with LocalStore(tmp_path) as store:
        await store.put_ndarray("b", np.arange(8.0), num_chunks=2)
        assert tuple((await store.info("b")).full_shape or ()) == (8,)
        current = _refs(tmp_path, "b")[0]
        directory = _version_dir(tmp_path, "b", current)
        (directory / "manifest.json").write_bytes(b"{}")
        np.testing.assert_array_equal(await store.get_ndarray("b"), np.arange(8.0))
        chunk = directory / "b_1"
        chunk.write_bytes(bytes(len(chunk.read_bytes())))
        with pytest.raises(CorruptObject):
            await store.get_ndarray("b")


async def test_a_byte_list_falls_back_too(tmp_path: Path) -> None:
    async with LocalStore(tmp_path) as store:
        await store.put_bytes_list("b", [b"old", b"items"], num_chunks=2)
        await store.put_bytes_list("b", [b"new", b"items"], num_chunks=2)
        _lose(_version_dir(tmp_path, "b", _refs(tmp_path, "b")[0]), "empty-chunk")
        assert await store.get_bytes_list("b") == [b"old", b"items"]


async def test_a_checksum_mismatch_is_not_hidden_by_the_previous_version(tmp_path: Path) -> None:
    async with LocalStore(tmp_path) as store:
        await store.put_ndarray("b", np.ones(16))
        await store.put_ndarray("b", np.zeros(16))
        chunk = _version_dir(tmp_path, "b", _refs(tmp_path, "b")[0]) / "b_0"
        data = bytearray(chunk.read_bytes())
        data[3] ^= 0xFF  # same size, wrong bytes: damage, not a lost write
        chunk.write_bytes(bytes(data))
        with pytest.raises(CorruptObject, match="checksum"):
            await store.get_ndarray("b")


async def test_a_ball_written_once_has_nothing_to_fall_back_to(tmp_path: Path) -> None:
    async with LocalStore(tmp_path) as store:
        await store.put_ndarray("b", np.ones((4, 2)), num_chunks=2)
        _lose(_version_dir(tmp_path, "b", _refs(tmp_path, "b")[0]), "empty-chunk")
        with pytest.raises(CorruptObject, match="b_1"):
            await store.get_ndarray("b")


async def test_single_line_pointers_of_earlier_versions_still_read(tmp_path: Path) -> None:
    async with LocalStore(tmp_path) as store:
        await store.put_ndarray("b", np.ones(4))
        await store.put_ndarray("b", np.zeros(4))
        current = _refs(tmp_path, "b")[0]
        (tmp_path / BUCKET / "b.ref").write_text(current + "\n")  # the format before the previous kept
        np.testing.assert_array_equal(await store.get_ndarray("b"), np.zeros(4))
        await store.put_ndarray("b", np.full(4, 2.0))
        assert _refs(tmp_path, "b")[1] == current


# ----------------------------------------------------------------------------- permissions
@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0, so every mode seen below is the one the store asked for."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("fsync", [False, True])
async def test_files_are_0600_and_directories_0700(tmp_path: Path, open_umask: None, fsync: bool) -> None:
    root = tmp_path / "not" / "yet" / "there"
    async with LocalStore(root, fsync=fsync) as store:
        assert await store.ping()
        await store.put_ndarray("arr", np.ones((300_000, 2)), num_chunks=2)  # the large-write path
        await store.put_ndarray("arr", np.zeros((4, 2)), num_chunks=2)  # small path, pointer rewrite
        await store.put_blob("blob", np.ones(5))
        await store.put_bytes_list("items", [b"a", b"bc"], num_chunks=2)
        await store.delete("blob")
    entries = [root, *root.rglob("*")]
    for parent in (tmp_path / "not", tmp_path / "not" / "yet"):
        entries.append(parent)
    files = [p for p in entries if p.is_file()]
    directories = [p for p in entries if p.is_dir()]
    assert len(files) > 8 and len(directories) > 4
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o600"}, files
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in directories} == {"0o700"}, directories

