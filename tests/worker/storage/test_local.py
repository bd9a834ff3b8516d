"""Local backend specifics: layout, atomic overwrite, crash safety, on-disk corruption."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from worker.errors import CorruptObject, InvalidName, NotFound, StorageUnavailable
from worker.settings import Settings
from worker.storage import LocalStore, MictlanXStore, open_store
from worker.storage import local as local_module
from worker.storage.base import ForwardingStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    store = LocalStore(tmp_path, "rory", max_workers=4)
    yield store
    await store.aclose()


def _version_dir(root: Path, ball_id: str) -> Path:
    version = (root / "rory" / f"{ball_id}.ref").read_text().split()[0]  # current, then previous
    return root / "rory" / f"{ball_id}.{version}"


def _manifest(root: Path, ball_id: str) -> dict:
    return json.loads((_version_dir(root, ball_id) / "manifest.json").read_text())


async def test_layout_and_mictlanx_tags(store: LocalStore, tmp_path: Path) -> None:
    array = np.arange(30, dtype=np.float64).reshape(10, 3)
    await store.put_ndarray("udm", array, num_chunks=4, tags={"job": "7"})
    directory = _version_dir(tmp_path, "udm")
    assert sorted(p.name for p in directory.iterdir()) == [
        "manifest.json",
        "udm_0",
        "udm_1",
        "udm_2",
        "udm_3",
    ]
    assert (directory / "udm_3").read_bytes() == array[6:].tobytes()  # raw C-order bytes, remainder last
    manifest = _manifest(tmp_path, "udm")
    tags = [chunk["tags"] for chunk in manifest["chunks"]]
    assert [t["shape"] for t in tags] == ["(2, 3)", "(2, 3)", "(2, 3)", "(4, 3)"]
    assert {t["dtype"] for t in tags} == {"float64"}
    assert {t["full_shape"] for t in tags} == {"(10, 3)"}
    assert [t["index"] for t in tags] == ["0", "1", "2", "3"]
    assert {t["num_chunks"] for t in tags} == {"4"}
    assert tags[0]["records"] == "2" and tags[0]["attributes"] == "3" and tags[0]["group_id"] == "udm"
    assert tags[0]["job"] == "7" and tags[0]["rory_kind"] == "ndarray"


async def test_sha256_option_records_mictlanx_checksums(tmp_path: Path) -> None:
    async with LocalStore(tmp_path, sha256=True, fsync=True) as store:
        array = np.arange(40, dtype=np.int64).reshape(8, 5)
        info = await store.put_ndarray("s", array, num_chunks=3)
        assert info.checksum == hashlib.sha256(array.tobytes()).hexdigest()
        assert (await store.info("s")).checksum == info.checksum
        chunks = _manifest(tmp_path, "s")["chunks"]
        assert chunks[1]["checksum"] == hashlib.sha256(array[2:4].tobytes()).hexdigest()
        assert {c["tags"]["full_checksum"] for c in chunks} == {info.checksum}
        np.testing.assert_array_equal(await store.get_ndarray("s"), array)


async def test_large_chunks_use_several_blocks(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "BLOCK_SIZE", 64 * 1024)
    monkeypatch.setattr(local_module, "PIECE_SIZE", 16 * 1024)
    array = np.random.default_rng(1).standard_normal((300, 100))  # 240 kB in one chunk -> 4 blocks
    await store.put_ndarray("big", array)
    assert len(_manifest(tmp_path, "big")["chunks"][0]["xxh3"]) == 4
    np.testing.assert_array_equal(await store.get_ndarray("big"), array)
    path = _version_dir(tmp_path, "big") / "big_0"
    data = bytearray(path.read_bytes())
    data[200_000] ^= 1  # a single bit in the last block
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObject, match="checksum mismatch"):
        await store.get_ndarray("big")


async def test_overwrite_is_atomic_for_concurrent_readers(store: LocalStore) -> None:
    versions = [np.full((64, 8), float(v)) for v in (1, 2)]
    await store.put_ndarray("hot", versions[0], num_chunks=8)
    stop = asyncio.Event()
    seen: set[float] = set()

    async def reader() -> None:
        while not stop.is_set():
            got = await store.get_ndarray("hot")
            values = np.unique(got)
            assert len(values) == 1, f"mixed versions: {values}"  # never a mix of two writes
            seen.add(float(values[0]))

    async def writer() -> None:
        for round_ in range(30):
            await store.put_ndarray("hot", versions[round_ % 2], num_chunks=1 + round_ % 8)
        stop.set()

    await asyncio.gather(writer(), *(reader() for _ in range(4)))
    assert seen <= {1.0, 2.0}


async def test_concurrent_writers_of_one_ball_leave_one_complete_version(
    store: LocalStore, tmp_path: Path
) -> None:
    arrays = [np.full((16, 2), float(i)) for i in range(8)]
    await asyncio.gather(*(store.put_ndarray("race", a, num_chunks=4) for a in arrays))
    got = await store.get_ndarray("race")
    assert len(np.unique(got)) == 1
    kept = {f"race.{v}" for v in (tmp_path / "rory" / "race.ref").read_text().split()}
    assert len(kept) == 2  # the current version and the one it replaced
    for _ in range(200):  # older versions are removed in the background
        leftovers = {p.name for p in (tmp_path / "rory").iterdir() if p.name.startswith("race.v")}
        if leftovers == kept:
            break
        await asyncio.sleep(0.01)
    assert leftovers == kept  # every other replaced version was removed


async def test_failed_write_keeps_the_old_version(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = np.arange(12.0).reshape(6, 2)
    await store.put_ndarray("keep", old, num_chunks=3)
    calls = 0
    real = local_module._write_pieces

    def flaky(pieces):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        return real(pieces)

    monkeypatch.setattr(local_module, "BLOCK_SIZE", 256)  # one thread task per 256-byte block
    monkeypatch.setattr(local_module, "_write_pieces", flaky)
    with pytest.raises(StorageUnavailable, match="No space left"):
        await store.put_ndarray("keep", np.zeros((60, 2)), num_chunks=3)
    np.testing.assert_array_equal(await store.get_ndarray("keep"), old)
    await asyncio.sleep(0.05)  # the janitor thread removes the half-written version
    assert [p.name for p in (tmp_path / "rory").iterdir() if p.name.startswith("keep.v")] == [
        _version_dir(tmp_path, "keep").name
    ]


async def _cancel_while_writing(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, ball_id: str, array: np.ndarray, num_chunks: int = 1
) -> None:
    """Start a put, cancel it while its chunk files are being written, and wait until it has ended."""
    gate = threading.Event()
    real = local_module._write_pieces

    def slow(pieces):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return real(pieces)

    monkeypatch.setattr(local_module, "_write_pieces", slow)
    task = asyncio.ensure_future(store.put_ndarray(ball_id, array, num_chunks=num_chunks))
    await asyncio.sleep(0.05)
    task.cancel()
    # Let the task take the cancellation (a few loop turns; the write is held, so nothing races)
    # before the write goes on: a cancel the loop has not delivered yet cannot stop a commit.
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()  # still waiting for its writer thread before it cleans up
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_write_leaves_nothing(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _cancel_while_writing(store, monkeypatch, "never", np.ones((8, 2)), num_chunks=4)
    for _ in range(100):
        if not any(p.name.startswith("never.") for p in (tmp_path / "rory").iterdir()):
            break
        await asyncio.sleep(0.01)
    assert not any(p.name.startswith("never") for p in (tmp_path / "rory").iterdir())
    assert not await store.exists("never")


async def test_a_cancelled_small_overwrite_keeps_the_old_version(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small put writes and commits in one thread hop; cancelled before its commit, it commits nothing."""
    await store.put_ndarray("state", np.zeros((5, 8)))
    await _cancel_while_writing(store, monkeypatch, "state", np.ones((5, 8)))
    np.testing.assert_array_equal(await store.get_ndarray("state"), np.zeros((5, 8)))
    for _ in range(100):
        if len([p for p in (tmp_path / "rory").iterdir() if p.name.startswith("state.v")]) == 1:
            break
        await asyncio.sleep(0.01)
    assert [p.name for p in (tmp_path / "rory").iterdir() if p.name.startswith("state.v")] == [
        _version_dir(tmp_path, "state").name
    ]


async def test_crash_leftovers_are_invisible_and_swept(store: LocalStore, tmp_path: Path) -> None:
    await store.put_ndarray("ok", np.ones(4))
    orphan = tmp_path / "rory" / "ok.v0123456789abcdef"  # a writer died before its commit
    orphan.mkdir()
    (orphan / "ok_0").write_bytes(b"partial")
    (tmp_path / "rory" / ".tmp" / "ok.v1.ref").write_text("v1\n")
    np.testing.assert_array_equal(await store.get_ndarray("ok"), np.ones(4))
    assert await store.sweep(min_age_s=3600) == 0  # too young: could be a write in progress
    assert await store.sweep(min_age_s=0) == 2
    assert not orphan.exists()
    np.testing.assert_array_equal(await store.get_ndarray("ok"), np.ones(4))


@pytest.mark.parametrize(
    "damage", ["truncate", "extend", "remove-chunk", "manifest-json", "manifest-crc", "ref"]
)
async def test_on_disk_damage_is_corrupt_object(store: LocalStore, tmp_path: Path, damage: str) -> None:
    await store.put_ndarray("d", np.arange(20.0).reshape(10, 2), num_chunks=2)
    directory = _version_dir(tmp_path, "d")
    chunk = directory / "d_1"
    if damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:-1])
    elif damage == "extend":
        chunk.write_bytes(chunk.read_bytes() + b"\0")
    elif damage == "remove-chunk":
        chunk.unlink()
    elif damage == "manifest-json":
        (directory / "manifest.json").write_text("{not json")
    elif damage == "manifest-crc":
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["chunks"][0]["xxh3"] = ["x"]
        (directory / "manifest.json").write_text(json.dumps(manifest))
    else:
        (tmp_path / "rory" / "d.ref").write_text("../../etc\n")
    with pytest.raises(CorruptObject):
        await store.get_ndarray("d")
    fresh = np.ones(3)
    await store.put_ndarray("d", fresh)  # a damaged ball can always be overwritten
    np.testing.assert_array_equal(await store.get_ndarray("d"), fresh)
    assert await store.delete("d") == 1


async def test_evaluating_tags_is_impossible(store: LocalStore, tmp_path: Path) -> None:
    await store.put_ndarray("evil", np.zeros((2, 2)))
    directory = _version_dir(tmp_path, "evil")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["chunks"][0]["tags"]["shape"] = "__import__('os').system('false')"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptObject, match="shape"):
        await store.get_ndarray("evil")


async def test_verify_off_skips_crc(tmp_path: Path) -> None:
    async with LocalStore(tmp_path, verify=False) as store:
        await store.put_ndarray("nv", np.zeros(16))
        path = _version_dir(tmp_path, "nv") / "nv_0"
        data = bytearray(path.read_bytes())
        data[0] = 1
        path.write_bytes(bytes(data))
        assert (await store.get_ndarray("nv"))[0] != 0  # documented: no verification when disabled


async def test_delete_removes_files(store: LocalStore, tmp_path: Path) -> None:
    await store.put_ndarray("gone", np.zeros((9, 1)), num_chunks=3)
    assert await store.delete("gone") == 3
    assert sorted(p.name for p in (tmp_path / "rory").iterdir()) == [".lock", ".tmp"]
    with pytest.raises(NotFound):
        await store.info("gone")


async def test_closed_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.aclose()
    assert await store.ping() is False
    with pytest.raises(StorageUnavailable):
        await store.get_ndarray("x")


def test_bucket_name_is_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidName):
        LocalStore(tmp_path, "../up")


async def test_open_store_chooses_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MICTLANX_URI", "MICTLANX_ROUTERS", "STORAGE_BACKEND", "STORAGE_PATH"):
        monkeypatch.delenv(name, raising=False)
    local = open_store(Settings(_env_file=None, storage_path=str(tmp_path)))  # type: ignore[call-arg]
    uri = "mictlanx://r0@127.0.0.1:1?api_version=4&protocol=http"
    remote = open_store(Settings(_env_file=None, mictlanx_uri=uri))  # type: ignore[call-arg]
    routers = open_store(Settings(_env_file=None, mictlanx_routers="r0:127.0.0.1:1"))  # type: ignore[call-arg]
    forced = open_store(
        Settings(_env_file=None, storage_backend="local", mictlanx_uri=uri, storage_path=str(tmp_path))  # type: ignore[call-arg]
    )
    try:
        assert isinstance(local, LocalStore) and local.directory == tmp_path / "rory"
        assert isinstance(remote, MictlanXStore) and remote.routers[0].port == 1
        assert isinstance(routers, MictlanXStore) and routers.routers[0].router_id == "r0"
        assert isinstance(forced, LocalStore)
        assert await remote.ping() is False  # nothing listens on port 1; ping never raises
    finally:
        for store in (local, remote, routers, forced):
            await store.aclose()


async def test_file_io_runs_off_the_event_loop(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[str] = set()
    real_write, real_read = local_module._write_pieces, local_module._read_pieces

    def write(pieces):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        return real_write(pieces)

    def read(pieces, verify):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        return real_read(pieces, verify)

    monkeypatch.setattr(local_module, "_write_pieces", write)
    monkeypatch.setattr(local_module, "_read_pieces", read)
    await store.put_ndarray("t", np.ones((4, 4)), num_chunks=2)
    await store.get_ndarray("t")
    assert threads and all(name.startswith("css-local") for name in threads)
    assert os.getpid()  # (the loop thread is MainThread; none of the I/O ran there)


# ----------------------------------------------------------------------------- block hashes
def _chunk_and_manifest(root: Path, ball_id: str) -> tuple[Path, Path, dict]:
    directory = _version_dir(root, ball_id)
    return directory / f"{ball_id}_0", directory / "manifest.json", _manifest(root, ball_id)


async def test_manifests_record_xxh3_only(store: LocalStore, tmp_path: Path) -> None:
    """XXH3 is what this version writes and verifies (CRC32 would halve a put's speed)."""
    xxhash = pytest.importorskip("xxhash")
    array = np.random.default_rng(3).random(300_000)  # 2.4 MB: one block
    await store.put_ndarray("h", array)
    chunk, _, manifest = _chunk_and_manifest(tmp_path, "h")
    record = manifest["chunks"][0]
    data = chunk.read_bytes()
    assert manifest["block_hashes"] == ["xxh3_64"]
    assert "crc32" not in record and record["xxh3"] == [xxhash.xxh3_64_intdigest(data)]


@pytest.mark.parametrize("field, detected", [("xxh3", True), ("crc32", False)])
async def test_reads_verify_xxh3(store: LocalStore, tmp_path: Path, field: str, detected: bool) -> None:
    pytest.importorskip("xxhash")
    await store.put_ndarray("h", np.arange(64.0))
    chunk, path, manifest = _chunk_and_manifest(tmp_path, "h")
    # As the previous version wrote it: both lists.
    manifest["block_hashes"] = ["crc32", "xxh3_64"]
    manifest["chunks"][0]["crc32"] = [zlib.crc32(chunk.read_bytes())]
    manifest["chunks"][0][field][0] ^= 1
    path.write_text(json.dumps(manifest))
    if detected:
        with pytest.raises(CorruptObject, match="xxh3_64"):
            await store.get_ndarray("h")
    else:  # (an older worker would refuse this one; this one checks XXH3 only)
        np.testing.assert_array_equal(await store.get_ndarray("h"), np.arange(64.0))


async def test_crc32_only_manifests_of_earlier_versions_are_read_and_verified(
    store: LocalStore, tmp_path: Path
) -> None:
    await store.put_ndarray("old", np.arange(64.0))
    chunk, path, manifest = _chunk_and_manifest(tmp_path, "old")
    manifest.pop("block_hashes", None)
    manifest["chunks"][0].pop("xxh3", None)
    manifest["chunks"][0]["crc32"] = [zlib.crc32(chunk.read_bytes())]
    path.write_text(json.dumps(manifest))
    np.testing.assert_array_equal(await store.get_ndarray("old"), np.arange(64.0))
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptObject, match="crc32"):
        await store.get_ndarray("old")


async def test_block_hash_tags_are_strict(store: LocalStore, tmp_path: Path) -> None:
    await store.put_ndarray("t", np.arange(8.0))
    _, path, manifest = _chunk_and_manifest(tmp_path, "t")
    for bad in ("md5", ["md5"], [], ["crc32", 7]):
        path.write_text(json.dumps({**manifest, "block_hashes": bad}))
        with pytest.raises(CorruptObject, match="block hashes"):
            await store.get_ndarray("t")
    record = manifest["chunks"][0]
    for field, values in (("xxh3", [1 << 64]), ("xxh3", []), ("xxh3", [True])):
        path.write_text(json.dumps({**manifest, "chunks": [{**record, field: values}]}))
        with pytest.raises(CorruptObject, match="values"):
            await store.get_ndarray("t")


async def test_wrappers_report_the_overwrite_of_the_store_they_wrap(store: LocalStore) -> None:
    """put_all overwrites several keys at once only on a store whose overwrite is atomic: a wrapper
    says what its inner store says, and an inner object outside the interface counts as not atomic."""

    class Anything:
        backend = "proxy"

        def __getattr__(self, name: str) -> object:
            return lambda *args: None  # answers every attribute, as test doubles and proxies do

    assert store.atomic_overwrite is True
    assert ForwardingStore(ForwardingStore(store)).atomic_overwrite is True
    assert ForwardingStore(Anything()).atomic_overwrite is False  # type: ignore[arg-type]


async def test_lookups_see_a_version_another_store_wrote(store: LocalStore, tmp_path: Path) -> None:
    """info, exists and get answer from the kept manifest only while the pointer still names its
    version: a second store (another worker on the same directory) replacing or deleting the ball
    is seen at once."""
    other = LocalStore(tmp_path, "rory")
    try:
        await store.put_ndarray("shared", np.zeros((3, 2)))
        first = await store.info("shared")
        np.testing.assert_array_equal(await store.get_ndarray("shared"), np.zeros((3, 2)))
        written = await other.put_ndarray("shared", np.ones((4, 2)))
        assert (await store.info("shared")).etag == written.etag != first.etag
        np.testing.assert_array_equal(await store.get_ndarray("shared"), np.ones((4, 2)))
        await other.delete("shared")
        assert not await store.exists("shared")
        with pytest.raises(NotFound):
            await store.info("shared")
    finally:
        await other.aclose()


async def test_a_closed_store_refuses_lookups(tmp_path: Path) -> None:
    closed = LocalStore(tmp_path, "rory")
    await closed.put_ndarray("x", np.zeros(3))
    await closed.aclose()
    for lookup in (closed.exists, closed.info, closed.get_ndarray):
        with pytest.raises(StorageUnavailable):
            await lookup("x")
