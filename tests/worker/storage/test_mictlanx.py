"""MictlanX backend specifics: wire format, interoperability, router quirks, faults and retries."""

from __future__ import annotations

import hashlib
import pickle
import socket
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest

from tests.fakes.mictlanx_router import FakeRouter, StoredObject, running_fake_router
from tests.worker.storage.conftest import FAST_RETRY, mictlanx_store
from worker.errors import Conflict, CorruptObject, NotFound, StorageUnavailable
from worker.settings import Settings
from worker.storage import MictlanXStore, RetryPolicy, RouterEndpoint, router_endpoints
from worker.storage.mictlanx import parse_mictlanx_routers, parse_mictlanx_uri


@pytest.fixture
async def store(fake_router: FakeRouter) -> AsyncIterator[MictlanXStore]:
    store = mictlanx_store(fake_router)
    yield store
    await store.aclose()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reference_chunk(router: FakeRouter, ball_id: str, index: int, data: bytes, tags: dict[str, str]) -> None:
    """Store a chunk exactly as mictlanx 0.1.0a5 + rorycommon would have (no rory_kind tag)."""
    key = f"{ball_id}_{index}"
    router.objects[("rory", key)] = StoredObject(
        {
            "key": key,
            "size": len(data),
            "checksum": _sha(data),
            "tags": tags,
            "content_type": "application/octet-stream",
            "producer_id": "client-0",
            "ball_id": ball_id,
            "bucket_id": "rory",
            "is_disabled": False,
        },
        data,
        ["fake-peer-0"],
    )


# ----------------------------------------------------------------------------- URI parsing
def test_parse_uri() -> None:
    [router] = parse_mictlanx_uri("mictlanx://mictlanx-router-0@localhost:63666?api_version=4&protocol=http")
    assert router == RouterEndpoint("mictlanx-router-0", "localhost", 63666, "http")
    assert router.base_url == "http://localhost:63666"
    many = parse_mictlanx_uri("mictlanx://a@h1:1,b@h2:2/?protocol=https&http2=0")
    assert [(r.router_id, r.host, r.port, r.protocol) for r in many] == [
        ("a", "h1", 1, "https"),
        ("b", "h2", 2, "https"),
    ]
    assert many[0].base_url == "https://h1:1"  # the port is kept for https
    assert parse_mictlanx_uri("mictlanx://h:5")[0].router_id == "router-0"
    assert parse_mictlanx_uri("mictlanx://r@[::1]:5")[0].base_url == "http://[::1]:5"


@pytest.mark.parametrize(
    "uri",
    [
        "http://r@h:1",
        "mictlanx://r@h",
        "mictlanx://r@h:0",
        "mictlanx://r@h:70000",
        "mictlanx://r@h:1?api_version=3",
        "mictlanx://r@h:1?protocol=ftp",
        "mictlanx://",
    ],
)
def test_parse_uri_errors(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_mictlanx_uri(uri)


def test_parse_routers() -> None:
    routers = parse_mictlanx_routers("r0:localhost:60666, r1:10.0.0.2:60667")
    assert [(r.router_id, r.host, r.port) for r in routers] == [
        ("r0", "localhost", 60666),
        ("r1", "10.0.0.2", 60667),
    ]
    assert parse_mictlanx_routers(["r0:h:1"], protocol="https")[0].base_url == "https://h:1"
    for bad in ("r0:h", "r0:h:x", ":h:1", ""):
        with pytest.raises(ValueError):
            parse_mictlanx_routers(bad)


def test_router_endpoints_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MICTLANX_URI", "MICTLANX_ROUTERS", "MICTLANX_API_VERSION"):
        monkeypatch.delenv(name, raising=False)
    default = router_endpoints(Settings(_env_file=None))  # type: ignore[call-arg]
    assert default == [RouterEndpoint("mictlanx-router-0", "localhost", 60666, "http")]
    uri = Settings(_env_file=None, mictlanx_uri="mictlanx://x@h:9?api_version=4&protocol=http")  # type: ignore[call-arg]
    assert router_endpoints(uri)[0].port == 9
    with pytest.raises(ValueError):
        router_endpoints(Settings(_env_file=None, mictlanx_api_version=3))  # type: ignore[call-arg]


def test_retry_policy_grows_and_is_bounded() -> None:
    policy = RetryPolicy(max_retries=10, delay=2.0, backoff_factor=0.5, max_delay=30.0)
    caps = [policy.cap(k) for k in range(1, 11)]
    assert caps[:4] == [2.0, 3.0, 4.5, 6.75]
    assert caps == sorted(caps) and max(caps) == 30.0
    assert policy.max_total_sleep() == pytest.approx(sum(caps))
    for k in range(1, 11):
        assert policy.cap(k) / 2 <= policy.sleep_for(k) <= policy.cap(k)
    assert RetryPolicy(max_retries=0).max_total_sleep() == 0
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)


# ----------------------------------------------------------------------------- wire format
async def test_wire_format_matches_the_reference_client(
    store: MictlanXStore, fake_router: FakeRouter
) -> None:
    array = np.arange(15, dtype=np.float64).reshape(5, 3)
    info = await store.put_ndarray("m", array, num_chunks=2, tags={"job": "1"})
    first, second = fake_router.objects[("rory", "m_0")], fake_router.objects[("rory", "m_1")]
    assert first.data == array[:2].tobytes() and second.data == array[2:].tobytes()
    meta = second.metadata
    assert meta["ball_id"] == "m" and meta["bucket_id"] == "rory" and meta["size"] == 72
    assert meta["checksum"] == _sha(array[2:].tobytes())
    assert meta["content_type"] == "application/octet-stream" and meta["producer_id"] == "rory-worker"
    tags = meta["tags"]
    assert tags["shape"] == "(3, 3)" and tags["dtype"] == "float64" and tags["full_shape"] == "(5, 3)"
    assert tags["index"] == "1" and tags["num_chunks"] == "2" and tags["full_dtype"] == "float64"
    assert tags["full_checksum"] == _sha(array.tobytes()) == info.checksum
    assert tags["records"] == "3" and tags["attributes"] == "3" and tags["chunk_size"] == "72"
    assert tags["job"] == "1" and all(isinstance(v, str) for v in tags.values())
    vector = np.arange(5.0)
    await store.put_ndarray("v", vector, num_chunks=2)
    assert fake_router.objects[("rory", "v_0")].metadata["tags"]["shape"] == "(2,)"


async def test_blob_is_byte_split_with_whole_shape_tags(fake_router: FakeRouter) -> None:
    async with mictlanx_store(fake_router, chunk_size=4096) as store:
        array = np.random.default_rng(0).standard_normal((50, 30))  # 12 000 bytes -> 3 pieces
        info = await store.put_blob("kmeansin", array)
        assert info.num_chunks == 3
        pieces = [fake_router.objects[("rory", f"kmeansin_{i}")] for i in range(3)]
        assert b"".join(p.data or b"" for p in pieces) == array.tobytes()
        assert {p.metadata["tags"]["shape"] for p in pieces} == {"(50, 30)"}
        np.testing.assert_array_equal(await store.get_ndarray("kmeansin"), array)


async def test_reads_row_chunks_written_by_the_reference_client(
    store: MictlanXStore, fake_router: FakeRouter
) -> None:
    array = np.arange(10 * 2 * 3, dtype=np.float32).reshape(10, 2, 3)
    parts = [array[0:3], array[3:6], array[6:10]]
    full = _sha(array.tobytes())
    for index, part in enumerate(parts):
        tags = {
            "index": str(index),
            "chunk_size": str(part.nbytes),
            "group_id": "encx",
            "shape": str(part.shape),
            "dtype": "float32",
            "records": str(part.shape[0]),
            "attributes": "2",
            "num_chunks": "3",
            "full_checksum": full,
            "full_shape": "(10, 2, 3)",
            "full_dtype": "float64",  # original's wrong tag
        }
        _reference_chunk(fake_router, "encx", index, part.tobytes(), tags)
    np.testing.assert_array_equal(await store.get_ndarray("encx"), array)
    info = await store.info("encx")
    assert info.kind == "ndarray" and info.full_shape == (10, 2, 3) and info.full_dtype == "float32"
    assert info.checksum == full and info.tags == {}


async def test_reads_a_blob_written_by_the_reference_client(
    store: MictlanXStore, fake_router: FakeRouter
) -> None:
    array = np.arange(1000, dtype=np.float64).reshape(250, 4)
    data = array.tobytes()
    pieces = [data[0:2560], data[2560:5120], data[5120:]]  # 256-byte-ish split, remainder merged
    for index, piece in enumerate(pieces):
        tags = {
            "index": str(index),
            "chunk_size": str(len(piece)),
            "group_id": "plain",
            "shape": "(250, 4)",
            "dtype": "float64",
            "num_chunks": "3",
            "full_checksum": _sha(data),
        }
        _reference_chunk(fake_router, "plain", index, piece, tags)
    assert (await store.info("plain")).kind == "blob"
    np.testing.assert_array_equal(await store.get_ndarray("plain"), array)


async def test_pickled_ciphertexts_are_refused(store: MictlanXStore, fake_router: FakeRouter) -> None:
    payload = pickle.dumps([b"ct0", b"ct1"])
    _reference_chunk(fake_router, "pqc", 0, payload, {"index": "0", "num_chunks": "1"})
    assert (await store.info("pqc")).kind == "bytes_list"
    with pytest.raises(CorruptObject, match="pickle"):
        await store.get_bytes_list("pqc")


async def test_mixed_writes_are_detected(store: MictlanXStore, fake_router: FakeRouter) -> None:
    await store.put_ndarray("mix", np.zeros((4, 2)), num_chunks=2)
    other = np.ones((2, 2)).tobytes()
    tags = dict(fake_router.objects[("rory", "mix_1")].metadata["tags"], full_checksum=_sha(b"another write"))
    _reference_chunk(fake_router, "mix", 1, other, tags)
    with pytest.raises(CorruptObject, match="full_checksum"):
        await store.get_ndarray("mix")


async def test_body_longer_than_metadata_is_corrupt(store: MictlanXStore, fake_router: FakeRouter) -> None:
    await store.put_ndarray("long", np.zeros(4))
    stored = fake_router.objects[("rory", "long_0")]
    stored.data = (stored.data or b"") + b"extra"
    with pytest.raises(CorruptObject):
        await store.get_ndarray("long")


async def test_checksum_mismatch_is_retried_once_then_corrupt(
    store: MictlanXStore, fake_router: FakeRouter
) -> None:
    await store.put_ndarray("cs", np.arange(8.0))
    fake_router.corrupt("cs_0", offset=3)
    with pytest.raises(CorruptObject, match="checksum"):
        await store.get_ndarray("cs")
    assert fake_router.count("GET", r"/buckets/rory/cs_0$") == 2


# ----------------------------------------------------------------------------- router quirks
async def test_500_with_404_detail_is_not_found(store: MictlanXStore, fake_router: FakeRouter) -> None:
    await store.put_ndarray("k", np.zeros(2))
    fake_router.fail_next(1, status=500, detail="404: No metadata found for rory@k_0", path="/metadata/k_0")
    with pytest.raises(NotFound):
        await store.get_ndarray("k")
    assert fake_router.count("GET", "/metadata/k_0") == 1  # not retried
    np.testing.assert_array_equal(await store.get_ndarray("k"), np.zeros(2))


async def test_missing_chunk_of_a_ball_is_not_found(store: MictlanXStore, fake_router: FakeRouter) -> None:
    await store.put_ndarray("hole", np.zeros((6, 1)), num_chunks=3)
    del fake_router.objects[("rory", "hole_2")]
    with pytest.raises(NotFound, match="chunk 2 of 3"):
        await store.get_ndarray("hole")


async def test_poisoned_key_data_404_is_not_found(store: MictlanXStore, fake_router: FakeRouter) -> None:
    await store.put_ndarray("p", np.zeros(3))
    fake_router.objects[("rory", "p_0")].data = None  # metadata registered, data never arrived
    with pytest.raises(NotFound):
        await store.get_ndarray("p")
    assert fake_router.count("GET", r"/buckets/rory/p_0$") == 1 + store.not_found_retries


async def test_duplicate_listing_entries_are_merged(store: MictlanXStore, fake_router: FakeRouter) -> None:
    await store.put_ndarray("d1", np.zeros((4, 1)), num_chunks=2)
    await store.put_bytes_list("d2", [b"x"])
    assert len(fake_router.peers) == 2  # the bucket listing repeats every record once per peer
    assert await store.list_balls() == ["d1", "d2"]


async def test_existing_key_is_replaced(store: MictlanXStore, fake_router: FakeRouter) -> None:
    # A stray chunk key under another ball id survives the delete-by-ball-id; the put must still win.
    _reference_chunk(fake_router, "stray", 0, b"x", {"index": "0", "num_chunks": "1"})
    fake_router.objects[("rory", "w_1")] = fake_router.objects.pop(("rory", "stray_0"))
    array = np.arange(6.0).reshape(3, 2)
    await store.put_ndarray("w", array, num_chunks=3)
    np.testing.assert_array_equal(await store.get_ndarray("w"), array)


async def test_existing_key_that_cannot_be_removed_is_conflict(
    store: MictlanXStore, fake_router: FakeRouter
) -> None:
    fake_router.fail_next(
        100, status=404, detail={"msg": "No available peers.", "code": 666}, path="/metadata$"
    )
    with pytest.raises(Conflict):
        await store.put_ndarray("c", np.zeros(2))


async def test_chunk_zero_is_written_last_and_deleted_first(
    store: MictlanXStore, fake_router: FakeRouter
) -> None:
    await store.put_ndarray("order", np.zeros((8, 2)), num_chunks=4)
    assert fake_router.put_order[-1] == "order_0"
    start = len(fake_router.requests)
    await store.delete("order")
    deletes = [path for method, path in fake_router.requests[start:] if method == "DELETE"]
    assert deletes[0].endswith("/order_0") and "/bid/order" in deletes[1]


async def test_failed_put_leaves_no_visible_ball(store: MictlanXStore, fake_router: FakeRouter) -> None:
    await store.put_ndarray("f", np.ones((6, 2)), num_chunks=3)
    fake_router.fail_next(1000, status=500, detail="Connection error - peers unavailable", path=r"/chunked$")
    with pytest.raises(StorageUnavailable):
        await store.put_ndarray("f", np.zeros((6, 2)), num_chunks=3)
    fake_router.reset_faults()
    assert not await store.exists("f")
    assert fake_router.keys() == []  # the partial chunks were removed


async def test_data_stored_on_no_peer_is_retried(store: MictlanXStore, fake_router: FakeRouter) -> None:
    fake_router.no_peers_next(2)
    array = np.arange(10.0)
    await store.put_ndarray("np", array, num_chunks=2)
    np.testing.assert_array_equal(await store.get_ndarray("np"), array)


async def test_routes_under_the_mictlanx_prefix(fake_router: FakeRouter) -> None:
    async with mictlanx_store(fake_router) as store:
        await store.put_ndarray("pre", np.ones(3))
    url = f"{fake_router.base_url}/mictlanx/api/v4/buckets/rory/metadata/pre_0"
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        assert (await answer.json())["metadata"]["key"] == "pre_0"


# ----------------------------------------------------------------------------- faults
@pytest.mark.parametrize(
    "inject",
    [
        lambda r: r.fail_next(3, status=503),
        lambda r: r.fail_next(2, status=500, detail="Connection error - peers unavailable - peer-0"),
        lambda r: r.drop_next(3),
        lambda r: r.truncate_next(3),
        # Only reads are slowed: a timed-out DELETE would still run on the server later (as on the
        # real router) and could remove the chunks written after it; see docs/storage.md.
        lambda r: r.delay_next(2, 0.5, method="GET"),
        lambda r: r.fail_next(2, status=429),
    ],
    ids=["503", "500", "dropped", "truncated", "slow", "429"],
)
async def test_transient_faults_are_retried(fake_router: FakeRouter, inject: object) -> None:
    array = np.arange(40, dtype=np.int64).reshape(20, 2)
    items = [b"a" * 50, b"b" * 60]
    async with mictlanx_store(fake_router, timeout=0.25) as store:
        inject(fake_router)  # type: ignore[operator]
        await store.put_ndarray("t", array, num_chunks=4)
        inject(fake_router)  # type: ignore[operator]
        np.testing.assert_array_equal(await store.get_ndarray("t"), array)
        inject(fake_router)  # type: ignore[operator]
        await store.put_bytes_list("tl", items, num_chunks=2)
        inject(fake_router)  # type: ignore[operator]
        assert await store.get_bytes_list("tl") == items
        inject(fake_router)  # type: ignore[operator]
        assert await store.delete("t") >= 4


@pytest.mark.parametrize("kind", ["error", "drop", "slow"])
async def test_persistent_faults_give_up_within_the_budget(fake_router: FakeRouter, kind: str) -> None:
    policy = RetryPolicy(max_retries=3, delay=0.001, backoff_factor=1.0, max_delay=0.004, jitter=False)
    async with mictlanx_store(fake_router, retry=policy, timeout=0.1) as store:
        await store.put_ndarray("u", np.zeros(3))
        if kind == "error":
            fake_router.fail_next(1000, status=503)
        elif kind == "drop":
            fake_router.drop_next(1000)
        else:
            fake_router.delay_next(1000, 0.3)
        start = len(fake_router.requests)
        with pytest.raises(StorageUnavailable, match="4 attempts"):
            await store.get_ndarray("u")
        sent = len(fake_router.requests) - start
        if kind == "drop":  # aiohttp itself re-sends an idempotent request once on a dropped keep-alive
            assert policy.attempts <= sent <= 2 * policy.attempts
        else:
            assert sent == policy.attempts  # exactly the budget, no more


async def test_dead_router_fails_over(fake_router: FakeRouter) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # closed again before use: connection refused
    routers = [RouterEndpoint("dead", "127.0.0.1", dead_port), *parse_mictlanx_uri(fake_router.uri)]
    async with MictlanXStore(routers, retry=FAST_RETRY, timeout=2.0) as store:
        array = np.arange(12.0).reshape(6, 2)
        await store.put_ndarray("fo", array, num_chunks=3)
        np.testing.assert_array_equal(await store.get_ndarray("fo"), array)
        assert await store.ping() is True


async def test_unreachable_router_is_storage_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with MictlanXStore(
        [RouterEndpoint("r", "127.0.0.1", port)], retry=FAST_RETRY, timeout=1.0
    ) as store:
        assert await store.ping() is False
        with pytest.raises(StorageUnavailable) as caught:
            await store.get_ndarray("x")
        assert caught.value.retryable and caught.value.code == 503


async def test_concurrency_is_bounded(fake_router: FakeRouter) -> None:
    async with mictlanx_store(fake_router, max_workers=2) as store:
        fake_router.latency = 0.002
        array = np.arange(64.0).reshape(32, 2)
        await store.put_ndarray("cc", array, num_chunks=16)
        np.testing.assert_array_equal(await store.get_ndarray("cc"), array)
    assert 1 < fake_router.max_inflight <= 2


def test_thread_backed_fake_router_for_synchronous_callers() -> None:
    with running_fake_router() as router:
        with urllib.request.urlopen(f"{router.base_url}/api/v4/peers/stats") as answer:
            assert b"fake-peer-0" in answer.read()
        assert router.uri.startswith("mictlanx://fake-router-0@127.0.0.1:")
