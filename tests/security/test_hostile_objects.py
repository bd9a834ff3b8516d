"""Objects and router answers crafted to exhaust the worker's memory are refused cheaply.

* Byte lists (CKKS ciphertext lists: one msgpack array of ``bin`` items per chunk) are parsed by a
  reader that accepts only bin items and builds no object before the whole chunk checks out: an
  8 MiB chunk of empty msgpack maps (which msgpack.unpackb turns into ~600 MiB of dicts) and an
  array header claiming 2**32 items are CorruptObject, with a few MiB of memory at most. Lists of
  many tiny valid items are charged their per-item overhead against MAX_OBJECT_BYTES.
* A local manifest over 16 MiB is refused without being read, whatever MAX_OBJECT_BYTES says; a small
  one declaring a 2**40-byte chunk is refused from the declared size, with no block list built for it.
* A symlink or FIFO planted in place of a local pointer, manifest or chunk file is CorruptObject
  (never followed, never blocking the store's thread).
* Every MictlanX HTTP body is read with a bound: an oversized error body or JSON answer is a typed
  storage error after reading at most a little of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.fakes.mictlanx_router import FakeRouter
from worker.errors import BadRequest, CorruptObject, NotFound, PayloadTooLarge, StorageUnavailable
from worker.storage import LocalStore, MictlanXStore, ObjectStore, RetryPolicy, parse_mictlanx_uri
from worker.storage import local as local_module
from worker.storage import mictlanx as mictlanx_module
from worker.storage.codec import ITEM_OVERHEAD, scan_bytes_list, unpack_bytes_list

MIB = 1024 * 1024
CHUNK = 8 * MIB
#: Extra memory a refused read may take (the 8 MiB payload itself plus change); the unpatched reader
#: took ~580 MiB on the empty-maps chunk.
BOUND = 64 * MIB
FAST = RetryPolicy(max_retries=2, delay=0.001, backoff_factor=1.0, max_delay=0.01, jitter=False)


def empty_maps(size: int = CHUNK) -> bytes:
    """A msgpack array32 of empty maps filling ``size`` bytes; its count passes the size check."""
    count = (size - 5) // 2  # claims no more items than bin items could fill: the items are refused
    return b"\xdd" + struct.pack(">I", count) + b"\x80" * (size - 5)


def only_maps(size: int = CHUNK) -> bytes:
    """As many empty maps as bytes: refused from the header (each bin item needs >= 2 bytes)."""
    return b"\xdd" + struct.pack(">I", size - 5) + b"\x80" * (size - 5)


def huge_count(size: int = CHUNK) -> bytes:
    """A header claiming 2**32 - 1 items (array32's most), then filler."""
    return b"\xdd\xff\xff\xff\xff" + b"\xc4\x00" * ((size - 5) // 2)


CRAFTED = {"empty-maps": empty_maps, "only-maps": only_maps, "huge-count": huge_count}


def _peak_while(action: Callable[[], Any]) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def _apeak_while(action: Callable[[], Awaitable[Any]]) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        await action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------- the reader
@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_chunks_are_refused_with_little_memory(name: str) -> None:
    payload = CRAFTED[name]()

    def read() -> None:
        with pytest.raises(CorruptObject, match="not a msgpack array of byte strings"):
            unpack_bytes_list("evil_0", memoryview(payload), {})

    assert _peak_while(read) < MIB  # nothing is built: not even a copy of the payload


def test_msgpack_would_have_built_millions_of_objects() -> None:
    """(Why the reader exists: the generic unpacker allocates ~70x the payload for empty maps.)"""
    payload = only_maps(MIB)
    assert _peak_while(lambda: msgpack.unpackb(payload)) > 32 * MIB


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x80",  # a map (and the first byte of every pickle)
        b"\x80\x04\x95junk",  # pickle protocol 4
        msgpack.packb({"a": b"x"}),
        msgpack.packb([1, 2]),
        msgpack.packb(["text"]),
        msgpack.packb([[b"nested"]]),
        msgpack.packb([b"a"]) + b"\x00",  # trailing bytes
        msgpack.packb([b"abc"])[:-1],  # an item running past the end
        b"\x92\xc4\x01a",  # two items announced, one present
        b"\xdc\x00",  # a truncated array16 header
        b"\x91\xc5\x00",  # a truncated bin16 header
        b"\x91\xc6\xff\xff\xff\xff",  # a bin32 claiming 4 GiB
    ],
)
def test_only_arrays_of_bin_items_are_accepted(payload: bytes) -> None:
    with pytest.raises(CorruptObject):
        unpack_bytes_list("k_0", payload, {})


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65_535, 65_536])
def test_every_array_and_bin_size_reads_back(count: int) -> None:
    items = [os.urandom(n % 7) for n in range(count)]
    if count == 16:
        items = [b"", b"x" * 255, b"y" * 256, b"z" * 65_535, b"w" * 65_536, *items[5:]]  # bin8/16/32
    payload = msgpack.packb(items, use_bin_type=True)
    assert scan_bytes_list("k_0", payload, {"records": str(count)}) == count
    assert unpack_bytes_list("k_0", memoryview(payload), {}) == items
    with pytest.raises(CorruptObject, match="records"):
        scan_bytes_list("k_0", payload, {"records": str(count + 1)})


# ----------------------------------------------------------------------------- through the stores
@dataclass
class Backend:
    name: str
    store: ObjectStore
    plant: Callable[[str, bytes], None]  # replace chunk 0 of a one-chunk byte list, keeping it consistent


def _plant_local(root: Path) -> Callable[[str, bytes], None]:
    def plant(ball: str, payload: bytes) -> None:
        bucket = root / "rory"
        version = (bucket / f"{ball}.ref").read_text().split()[0]
        directory = bucket / f"{ball}.{version}"
        (directory / f"{ball}_0").write_bytes(payload)
        manifest = json.loads((directory / "manifest.json").read_text())
        block = manifest["block_size"]
        record = manifest["chunks"][0]
        record["size"] = len(payload)
        record["crc32"] = [zlib.crc32(payload[i : i + block]) for i in range(0, len(payload), block)] or [0]
        record.pop("xxh3", None)
        manifest["block_hashes"] = ["crc32"]  # as written before XXH3: still read (and verified)
        record["tags"].pop("records", None)
        (directory / "manifest.json").write_text(json.dumps(manifest))

    return plant


def _plant_router(router: FakeRouter) -> Callable[[str, bytes], None]:
    def plant(ball: str, payload: bytes) -> None:
        stored = router.objects[("rory", f"{ball}_0")]
        stored.data = payload
        digest = hashlib.sha256(payload).hexdigest()
        stored.metadata.update(size=len(payload), checksum=digest)
        stored.metadata["tags"].update(full_checksum=digest, chunk_size=str(len(payload)))
        stored.metadata["tags"].pop("records", None)

    return plant


@pytest.fixture(params=["local", "mictlanx"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "local":
        async with LocalStore(tmp_path) as store:
            yield Backend("local", store, _plant_local(tmp_path))
        return
    async with FakeRouter() as router:
        store = MictlanXStore(parse_mictlanx_uri(router.uri), retry=FAST, timeout=30.0, chunk_size=MIB)
        async with store:
            yield Backend("mictlanx", store, _plant_router(router))


@pytest.mark.parametrize("name", sorted(CRAFTED))
async def test_a_crafted_ciphertext_list_is_refused_by_both_stores(backend: Backend, name: str) -> None:
    await backend.store.put_bytes_list("ctx", [b"c" * 100])
    backend.plant("ctx", CRAFTED[name]())

    async def read() -> None:
        with pytest.raises(CorruptObject, match="not a msgpack array of byte strings"):
            await backend.store.get_bytes_list("ctx")

    assert await _apeak_while(read) < BOUND


async def test_many_tiny_items_are_charged_their_overhead(backend: Backend) -> None:
    items = [b""] * 20_000  # 40 KB of payload, ~1.3 MB once decoded
    await backend.store.put_bytes_list("tiny", items, num_chunks=2)
    backend.store.max_object_bytes = 20_000 * ITEM_OVERHEAD  # type: ignore[attr-defined]
    with pytest.raises(PayloadTooLarge, match="per item"):
        await backend.store.get_bytes_list("tiny")
    backend.store.max_object_bytes = 2 * 20_000 * ITEM_OVERHEAD  # type: ignore[attr-defined]
    assert await backend.store.get_bytes_list("tiny") == items


# ----------------------------------------------------------------------------- local manifests
async def test_a_huge_manifest_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with LocalStore(tmp_path, max_object_bytes=1 << 40) as store:
        await store.put_bytes_list("m", [b"x"])
        version = (tmp_path / "rory" / "m.ref").read_text().split()[0]
        manifest = tmp_path / "rory" / f"m.{version}" / "manifest.json"
        with open(manifest, "r+b") as handle:
            handle.truncate(local_module.MAX_MANIFEST_BYTES + 1)  # sparse: costs no disk
        opened: list[str] = []
        real_open = open

        def watching(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = real_open(path, mode, *args, **kwargs)
            if str(path) == str(manifest):
                opened.append(mode)
                handle.read = lambda *a: pytest.fail("the oversized manifest was read")  # type: ignore[method-assign]
            return handle

        monkeypatch.setattr("builtins.open", watching)
        with pytest.raises(CorruptObject, match="manifest"):
            await store.info("m")
        assert opened == ["rb"]


async def test_a_put_needing_a_huge_manifest_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "MAX_MANIFEST_BYTES", 4096)
    async with LocalStore(tmp_path) as store:
        with pytest.raises(BadRequest, match="manifest"):
            await store.put_bytes_list("many", [b"x"] * 64, num_chunks=64)
        assert not await store.exists("many")
        assert [p.name for p in (tmp_path / "rory").iterdir() if p.name.startswith("many")] == []


async def test_a_manifest_declaring_a_terabyte_chunk_costs_nothing(tmp_path: Path) -> None:
    """A ~300-byte manifest claims a 2**40-byte chunk (131072 blocks) with one hash per hash list: it
    is refused from the declared size, before anything as long as the size claims is built (the
    unpatched store built the whole block list first: 2**31 cost 65 MiB, 2**40 would need ~32 GiB)."""
    async with LocalStore(tmp_path) as store:  # the default budget (4 GiB)
        await store.put_bytes_list("m", [b"x"])
        version = (tmp_path / "rory" / "m.ref").read_text().split()[0]
        path = tmp_path / "rory" / f"m.{version}" / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["chunks"][0]["size"] = 1 << 40
        path.write_text(json.dumps(manifest))
        assert path.stat().st_size < 1024

        async def read() -> None:
            with pytest.raises(PayloadTooLarge, match="MAX_OBJECT_BYTES"):
                await store.info("m")

        assert await _apeak_while(read) < MIB
        with pytest.raises(PayloadTooLarge):
            await store.get_bytes_list("m")
    async with LocalStore(tmp_path, max_object_bytes=1 << 50) as roomy:
        # Within a (huge) budget the lie is still cheap: one hash where 131072 are due is corrupt.

        async def read_roomy() -> None:
            with pytest.raises(CorruptObject, match="131072"):
                await roomy.info("m")

        assert await _apeak_while(read_roomy) < MIB


# ----------------------------------------------------------------------------- planted files
def _version_dir(root: Path, ball: str) -> Path:
    version = (root / "rory" / f"{ball}.ref").read_text().split()[0]
    return root / "rory" / f"{ball}.{version}"


def _plant_special(target: Path, how: str, outside: Path) -> None:
    """Replace ``target`` by a FIFO, or by a symlink to a copy of its bytes outside the store (so
    following it would succeed: only the refusal to follow makes the read fail)."""
    content = target.read_bytes()
    target.unlink()
    if how == "fifo":
        os.mkfifo(target, 0o600)
    else:
        outside.write_bytes(content)
        target.symlink_to(outside)


@pytest.mark.parametrize("how", ["fifo", "symlink"])
@pytest.mark.parametrize("which", ["pointer", "manifest", "chunk"])
async def test_planted_fifos_and_symlinks_are_refused(tmp_path: Path, which: str, how: str) -> None:
    root = tmp_path / "store"
    async with LocalStore(root) as store:
        await store.put_bytes_list("p", [b"a" * 100, b"b" * 100], num_chunks=2)
        directory = _version_dir(root, "p")
        target = {
            "pointer": root / "rory" / "p.ref",
            "manifest": directory / "manifest.json",
            "chunk": directory / "p_1",
        }[which]
        _plant_special(target, how, tmp_path / "outside")
        with pytest.raises(CorruptObject, match=f"{target.name}.*(symlink|not a regular file)"):
            # wait_for only guards against a hang (a FIFO opened without O_NONBLOCK never returns)
            await asyncio.wait_for(store.get_bytes_list("p"), 30)
        if which != "chunk":
            with pytest.raises(CorruptObject, match=r"symlink|not a regular file"):
                await asyncio.wait_for(store.info("p"), 30)


# ----------------------------------------------------------------------------- MictlanX bodies
@pytest.fixture
async def router() -> AsyncIterator[FakeRouter]:
    async with FakeRouter() as router:
        yield router


def _store(router: FakeRouter) -> MictlanXStore:
    return MictlanXStore(parse_mictlanx_uri(router.uri), retry=FAST, timeout=30.0)


@pytest.mark.parametrize(
    "status, error", [(500, StorageUnavailable), (400, BadRequest), (404, NotFound)], ids=str
)
async def test_an_oversized_error_body_is_not_read(router: FakeRouter, status: int, error: type) -> None:
    size = 64 * MIB
    async with _store(router) as writer:
        await writer.put_bytes_list("x", [b"1"])
    router.oversize_next(FAST.attempts, size, status=status, path="/metadata/")
    async with _store(router) as store:

        async def read() -> None:
            with pytest.raises(error, match="error body over"):
                await store.info("x")

        assert await _apeak_while(read) < 16 * MIB
    assert router.oversized_sent < size // 2  # the client hung up early
    router.reset_faults()
    async with _store(router) as reader:
        assert await reader.get_bytes_list("x") == [b"1"]  # nothing else was disturbed


@pytest.mark.parametrize("path", ["/metadata/", "/peers/stats"])
async def test_an_oversized_answer_is_a_storage_error(router: FakeRouter, path: str) -> None:
    size = 8 * MIB
    async with _store(router) as store:
        await store.put_bytes_list("x", [b"1"])
        router.oversize_next(1, size, status=200, path=path)
        if path == "/peers/stats":  # too big to parse, but it is a non-empty object: reachable
            assert await store.ping() is True
        else:
            before = router.count("GET", path)
            with pytest.raises(StorageUnavailable, match="larger than"):
                await store.info("x")
            assert router.count("GET", path) == before + 1  # refused at once, not retried
        assert router.oversized_sent < size


async def test_listings_have_their_own_bound(router: FakeRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _store(router) as store:
        for index in range(20):
            await store.put_bytes_list(f"b{index}", [b"1"])
        assert len(await store.list_balls()) == 20
        monkeypatch.setattr(mictlanx_module, "MAX_LISTING_BYTES", 1024)
        with pytest.raises(StorageUnavailable, match="larger than 1024 bytes"):
            await store.list_balls()


async def test_a_data_body_longer_than_its_metadata_is_refused(router: FakeRouter) -> None:
    async with _store(router) as store:
        await store.put_bytes_list("x", [b"1" * 1000])
        stored = router.objects[("rory", "x_0")]
        stored.data = (stored.data or b"") + b"\0" * (32 * MIB)

        async def read() -> None:
            with pytest.raises(CorruptObject, match="more than"):
                await store.get_bytes_list("x")

        assert await _apeak_while(read) < 40 * MIB  # (the router's own 32 MiB copy is traced too)
