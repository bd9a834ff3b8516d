"""MictlanX v4 router client (aiohttp), wire-compatible with the reference client 0.1.0a5.

Wire sequence (docs/storage.md §5.1): a chunk put is ``POST /api/v4/buckets/{b}/metadata`` (JSON) then
``POST /api/v4/buckets/data/{task_id}/chunked`` (raw bytes); a chunk get is
``GET /api/v4/buckets/{b}/metadata/{key}`` then ``GET /api/v4/buckets/{b}/{key}`` (streamed, no
Content-Length). A ball is deleted with ``DELETE /api/v4/buckets/{b}/bid/{ball}``.

Router quirks handled here:

* a missing key's metadata answers **500** with ``detail`` ``"404: ..."`` -> ``NotFound``;
* put-metadata answers **404** (``code: 666``, "No available peers") when the key exists -> the key
  is deleted and the chunk put retried (``Conflict`` if that never succeeds);
* a data upload answered 200 with ``peer_ids: []`` stored nothing -> retried as a failure;
* a 200 data body shorter than the metadata ``size`` (router->peer stream broke) -> retried; a body
  longer than it, or one whose SHA-256 differs twice from the chunk ``checksum`` -> ``CorruptObject``;
* listings may repeat a key once per replica -> merged by key;
* names the router would sanitise -> ``InvalidName`` before anything is sent.

Every body is read with a bound: chunk data up to the size its metadata declares, JSON answers up to
:data:`MAX_ANSWER_BYTES` (listings :data:`MAX_LISTING_BYTES`), error bodies only their first
:data:`MAX_ERROR_BYTES`. A larger answer is ``StorageUnavailable`` (or, for data, ``CorruptObject``),
never an allocation of whatever size the router chooses.

Atomicity: MictlanX has no rename, versioning or compare-and-swap, and a put of an existing key
fails, so a write is "delete, then put" as in Rory. To keep our own readers from ever treating a
half-written ball as complete, chunk 0 (the one readers open first, carrying ``num_chunks``) is
uploaded **last** and deleted **first**: until it lands, readers get ``NotFound``. A reader that
races a concurrent rewrite may still fetch chunks of two different writes; every chunk carries the
write's ``full_checksum`` and its own ``checksum``, so that is reported as ``CorruptObject`` (or
``NotFound`` when a chunk vanished), never returned as data. A failed put deletes what it wrote.

Retries: every request is retried on connection errors, timeouts, truncated bodies and 5xx/408/429
answers, rotating over the configured routers (round-robin, so a dead router fails over), with the
bounded back-off of :class:`~worker.storage.retry.RetryPolicy`. An operation therefore gives up
(``StorageUnavailable``) after at most ``MICTLANX_MAX_RETRIES + 1`` attempts, i.e. within
``(MICTLANX_MAX_RETRIES + 1) * MICTLANX_TIMEOUT + RetryPolicy.max_total_sleep()`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import parse_qs

import aiohttp
import numpy as np

from worker.errors import BadRequest, Conflict, CorruptObject, NotFound, StorageUnavailable
from worker.settings import Settings
from worker.storage.base import Allocator, BallInfo, allocate_output
from worker.storage.breaker import CircuitBreaker, pause
from worker.storage.codec import (
    DEFAULT_MAX_OBJECT_BYTES,
    BallPlan,
    ChunkMeta,
    ChunkPayload,
    Layout,
    check_budget,
    check_first_chunk,
    decode_bytes_list,
    normalise_checksum,
    num_chunks_of,
    off_loop,
    read_layout,
)
from worker.storage.names import check_ball_id, check_bucket_id, chunk_key
from worker.storage.planned import PlannedStore
from worker.storage.retry import RetryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

API = "/api/v4"
SUPPORTED_API_VERSION = 4
_HASH_INLINE_LIMIT = 1024 * 1024  # smaller payloads are hashed on the loop (cheaper than a thread hop)
_DETAIL_CODE = re.compile(r"\s*(\d{3})\s*:")
#: The most bytes read of a JSON answer (metadata, put and delete answers, peer stats).
MAX_ANSWER_BYTES = 1024 * 1024
#: ... of a bucket listing (one record per chunk and replica).
MAX_LISTING_BYTES = 64 * 1024 * 1024
#: Only this much of an error body is read (for the message); the rest is dropped with the connection.
MAX_ERROR_BYTES = 64 * 1024
_READ_PIECE = 64 * 1024


# ----------------------------------------------------------------------------- endpoints
@dataclass(frozen=True)
class RouterEndpoint:
    """One router: ``protocol://host:port`` (the port is kept for https too, unlike the reference)."""

    router_id: str
    host: str
    port: int
    protocol: str = "http"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}"


def _port(text: str, where: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{where}: port must be 1..65535, got {text!r}")
    return int(text)


def _protocol(text: str, where: str) -> str:
    if text not in ("http", "https"):
        raise ValueError(f"{where}: protocol must be http or https, got {text!r}")
    return text


def parse_mictlanx_uri(uri: str, *, default_protocol: str = "http") -> list[RouterEndpoint]:
    """Parse ``mictlanx://<id>@<host>:<port>[,<id>@<host>:<port>...][/][?protocol=http&api_version=4]``.

    Unknown query parameters (``http2``) are ignored; ``api_version`` other than 4 is an error (the
    router only serves ``/api/v4``). Without ``protocol=`` the ``default_protocol`` applies (the
    reference client defaults to https and then drops the port; we keep the port).
    """
    prefix = "mictlanx://"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        raise ValueError(f"MICTLANX_URI must start with {prefix}, got {uri!r}")
    routers_part, _, query = uri[len(prefix) :].partition("?")
    params = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    protocol = _protocol(params.get("protocol", default_protocol), "MICTLANX_URI")
    api_version = params.get("api_version", str(SUPPORTED_API_VERSION))
    if api_version != str(SUPPORTED_API_VERSION):
        raise ValueError(f"MICTLANX_URI: only api_version=4 is served by the router, got {api_version!r}")
    endpoints = []
    for index, item in enumerate(part.strip().strip("/") for part in routers_part.split(",")):
        if not item:
            continue
        router_id, at, address = item.rpartition("@")
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            raise ValueError(f"MICTLANX_URI: expected <id>@<host>:<port>, got {item!r}")
        host = host.strip("[]")
        endpoints.append(
            RouterEndpoint(
                router_id if at else f"router-{index}", host, _port(port, "MICTLANX_URI"), protocol
            )
        )
    if not endpoints:
        raise ValueError("MICTLANX_URI names no router")
    return endpoints


def parse_mictlanx_routers(routers: str | Iterable[str], *, protocol: str = "http") -> list[RouterEndpoint]:
    """Parse ``MICTLANX_ROUTERS`` entries ``id:host:port`` (a comma-separated string or a list)."""
    items = routers.split(",") if isinstance(routers, str) else list(routers)
    endpoints = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise ValueError(f"MICTLANX_ROUTERS: expected id:host:port, got {item!r}")
        endpoints.append(
            RouterEndpoint(
                parts[0],
                parts[1],
                _port(parts[2], "MICTLANX_ROUTERS"),
                _protocol(protocol, "MICTLANX_PROTOCOL"),
            )
        )
    if not endpoints:
        raise ValueError("MICTLANX_ROUTERS names no router")
    return endpoints


def router_endpoints(settings: Settings) -> list[RouterEndpoint]:
    """The routers to use: ``MICTLANX_URI`` when set, else ``MICTLANX_ROUTERS``."""
    if settings.mictlanx_api_version != SUPPORTED_API_VERSION:
        raise ValueError(f"MICTLANX_API_VERSION: only 4 is supported, got {settings.mictlanx_api_version}")
    if settings.mictlanx_uri:
        return parse_mictlanx_uri(settings.mictlanx_uri, default_protocol=settings.mictlanx_protocol)
    return parse_mictlanx_routers(settings.mictlanx_routers, protocol=settings.mictlanx_protocol)


# ----------------------------------------------------------------------------- errors
class _Transient(Exception):
    """Worth another attempt (possibly on another router)."""


class _KeyExists(_Transient):
    """put-metadata said 404/666: the key is already there (delete it, then retry)."""


def _detail_text(detail: Any) -> str:
    return detail if isinstance(detail, str) else str(detail)[:300]


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body if it has at most ``limit`` bytes, else its first ``limit`` bytes (the rest is left
    unread and the connection dropped); and whether that was all of it."""
    body = bytearray()
    async for piece in response.content.iter_chunked(_READ_PIECE):
        body += piece
        if len(body) > limit:
            return bytes(body[:limit]), False
    return bytes(body), True


async def _detail(response: aiohttp.ClientResponse) -> Any:
    """The ``detail`` of an error answer, from its first MAX_ERROR_BYTES only."""
    try:
        raw, complete = await _read_body(response, MAX_ERROR_BYTES)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return ""
    if not complete:
        return f"(an error body over {MAX_ERROR_BYTES} bytes, not read; it starts {raw[:80]!r})"
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return raw[:300].decode("utf-8", "replace")
    return body.get("detail", body) if isinstance(body, dict) else body


def _embedded_status(detail: Any) -> int | None:
    """The status the router wrapped into a 500: ``"404: No available peers"`` -> 404."""
    if isinstance(detail, str):
        match = _DETAIL_CODE.match(detail)
        return int(match.group(1)) if match else None
    if isinstance(detail, dict) and isinstance(detail.get("code"), int):
        return int(detail["code"])
    return None


async def _check(response: aiohttp.ClientResponse, what: str, *, missing_is_transient: bool = False) -> None:
    """Raise the right error for a non-2xx answer."""
    status = response.status
    if status < 400:
        return
    detail = await _detail(response)
    text = f"{what}: HTTP {status} {_detail_text(detail)}"
    missing = status == 404 or (status >= 500 and _embedded_status(detail) == 404)
    if missing:
        if missing_is_transient:
            raise _Transient(text)
        raise NotFound(text)
    if status >= 500 or status in (408, 425, 429, 499):
        raise _Transient(text)
    raise BadRequest(f"MictlanX rejected the request: {text}")


async def _json_body(response: aiohttp.ClientResponse, what: str, limit: int | None = None) -> dict[str, Any]:
    """A JSON object answer of at most ``limit`` bytes (MAX_ANSWER_BYTES by default); a larger one is
    ``StorageUnavailable`` without reading the rest."""
    limit = MAX_ANSWER_BYTES if limit is None else limit
    raw, complete = await _read_body(response, limit)
    if not complete:
        raise StorageUnavailable(f"{what}: the router's answer is larger than {limit} bytes; refused")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise _Transient(f"{what}: unreadable JSON answer ({type(error).__name__})") from None
    if not isinstance(body, dict):
        raise _Transient(f"{what}: expected a JSON object")
    return body


def _metadata_record(record: Any, what: str) -> ChunkMeta:
    if not isinstance(record, dict):
        raise CorruptObject(f"{what}: metadata record is not an object")
    key, size, tags = record.get("key"), record.get("size"), record.get("tags", {})
    if not isinstance(key, str) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise CorruptObject(f"{what}: metadata without a key or a valid size")
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise CorruptObject(f"{what}: tags must map str to str")
    return ChunkMeta(key=key, size=size, checksum=normalise_checksum(record.get("checksum")), tags=tags)


def _sha256_hex(views: Sequence[memoryview]) -> str:
    digest = hashlib.sha256()
    for view in views:
        digest.update(view)
    return digest.hexdigest()


def _content_etag(chunks: Sequence[tuple[int, str | None]]) -> str | None:
    """A version token from the chunks' (size, SHA-256): the content itself names the version."""
    if not chunks or not all(checksum for _, checksum in chunks):
        return None
    text = "\n".join(f"{size}:{checksum}" for size, checksum in chunks)
    return "chunks-sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _info(layout: Layout) -> BallInfo:
    """BallInfo with an ``etag`` that reads verify: every chunk's checksum (checked as each chunk
    arrives), else the ``full_checksum`` (then checked over the whole payload), else none."""
    etag = _content_etag([(meta.size, meta.checksum) for meta in layout.chunks])
    if etag is None and layout.full_checksum:
        etag = f"full-sha256:{layout.full_checksum}"
    return replace(layout.info(), etag=etag)


# ----------------------------------------------------------------------------- the store
class MictlanXStore(PlannedStore):
    """One bucket on one or more MictlanX v4 routers."""

    backend = "mictlanx"

    def __init__(
        self,
        routers: Sequence[RouterEndpoint],
        bucket: str = "rory",
        *,
        client_id: str = "rory-worker",
        timeout: float = 120.0,
        max_workers: int = 4,
        retry: RetryPolicy | None = None,
        chunk_size: int = 256 * 1024,
        replication_factor: int = 1,
        force_get: bool = True,
        not_found_retries: int = 2,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not routers:
            raise ValueError("at least one MictlanX router is required")
        self.routers = list(routers)
        self.bucket = check_bucket_id(bucket)
        self.client_id = client_id
        self.timeout = float(timeout)
        self.max_workers = max(1, int(max_workers))
        self.retry = retry or RetryPolicy()
        # Every attempt reports to the breaker, so an outage opens it within the first retry schedule.
        self.breaker = breaker or CircuitBreaker(probe=self.ping)
        self.chunk_size = max(4096, int(chunk_size))
        self.blob_piece_size = self.chunk_size
        self.replication_factor = max(1, int(replication_factor))
        self.force_get = force_get
        self.not_found_retries = max(0, int(not_found_retries))
        # Reads refuse (PayloadTooLarge) a ball whose metadata declares more bytes than this.
        self.max_object_bytes = int(max_object_bytes)
        self._rr = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> MictlanXStore:
        options.setdefault("client_id", settings.mictlanx_client_id)
        options.setdefault("timeout", settings.mictlanx_timeout)
        options.setdefault("max_workers", settings.mictlanx_max_workers)
        options.setdefault("chunk_size", settings.mictlanx_chunk_size)
        options.setdefault("max_object_bytes", settings.max_object_bytes)
        options.setdefault(
            "retry",
            RetryPolicy(
                max_retries=settings.mictlanx_max_retries,
                delay=settings.mictlanx_delay,
                backoff_factor=settings.mictlanx_backoff_factor,
            ),
        )
        return cls(router_endpoints(settings), settings.mictlanx_bucket_id, **options)

    # ------------------------------------------------------------------ plumbing
    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise StorageUnavailable("MictlanX store is closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_workers * 4, ttl_dns_cache=60),
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(self.timeout, 10.0)),
                auto_decompress=False,
                trust_env=False,
                read_bufsize=1 << 20,
            )
        return self._session

    def _next_router(self) -> RouterEndpoint:
        return self.routers[next(self._rr) % len(self.routers)]

    def _url(self, router: RouterEndpoint, path: str) -> str:
        return f"{router.base_url}{API}{path}"

    async def _retrying(
        self, what: str, attempt: Callable[[RouterEndpoint], Awaitable[T]], *, not_found_retries: int = 0
    ) -> T:
        """Run ``attempt`` until it succeeds, rotating routers and sleeping per the retry policy."""
        last: BaseException | None = None
        tolerated_missing = min(not_found_retries, self.retry.max_retries)
        for number in range(self.retry.attempts):
            if number:
                await pause(self.retry.sleep_for(number), what)
            self.breaker.admit(what)
            try:
                result = await attempt(self._next_router())
                self.breaker.succeeded()
                return result
            except NotFound as error:
                if tolerated_missing <= 0:
                    raise
                tolerated_missing -= 1
                last = error
            except _KeyExists as error:
                last = error  # the router answered: not an outage
            except _Transient as error:
                last = error
                self.breaker.failed(error)
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                last = error
                self.breaker.failed(error)
            log.debug("%s: attempt %d failed: %s", what, number + 1, last)
        if isinstance(last, NotFound):
            raise last
        if isinstance(last, _KeyExists):
            raise Conflict(f"{what}: key still exists after {self.retry.attempts} attempts: {last}")
        raise StorageUnavailable(
            f"{what}: gave up after {self.retry.attempts} attempts: {type(last).__name__}: {last}"
        )

    async def _bounded(self, factories: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run at most ``max_workers`` at a time; the first failure cancels the rest."""
        if not factories:
            return []
        gate = asyncio.Semaphore(self.max_workers)

        async def run(factory: Callable[[], Awaitable[T]]) -> T:
            async with gate:
                return await factory()

        tasks = [asyncio.ensure_future(run(factory)) for factory in factories]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # ------------------------------------------------------------------ single requests
    async def _get_meta(self, key: str) -> ChunkMeta:
        what = f"metadata of {self.bucket}/{key}"

        async def attempt(router: RouterEndpoint) -> ChunkMeta:
            url = self._url(router, f"/buckets/{self.bucket}/metadata/{key}")
            async with self._http().get(url) as response:
                await _check(response, what)
                body = await _json_body(response, what)
            meta = _metadata_record(body.get("metadata"), what)
            if meta.key != key:
                raise CorruptObject(f"{what}: router answered for key {meta.key!r}")
            return meta

        return await self._retrying(what, attempt)

    def _get_headers(self) -> dict[str, str]:
        return {
            "Chunk-Size": str(self.chunk_size),
            "Accept-Encoding": "identity",
            "Force-Get": "1" if self.force_get else "0",
        }

    async def _get_data(self, meta: ChunkMeta, dest: memoryview) -> None:
        """Stream one chunk straight into ``dest``, verifying length and checksum."""
        what = f"data of {self.bucket}/{meta.key}"
        mismatches = 0

        async def attempt(router: RouterEndpoint) -> None:
            nonlocal mismatches
            url = self._url(router, f"/buckets/{self.bucket}/{meta.key}")
            # Small chunks are hashed piece by piece on the loop; big ones once received, in a thread
            # (keeps the loop free and lets several chunks hash in parallel).
            digest = hashlib.sha256() if meta.checksum and meta.size <= _HASH_INLINE_LIMIT else None
            position = 0
            async with self._http().get(url, headers=self._get_headers()) as response:
                await _check(response, what)
                async for piece in response.content.iter_chunked(self.chunk_size):
                    end = position + len(piece)
                    if end > meta.size:
                        raise CorruptObject(f"{what}: more than the {meta.size} bytes its metadata declares")
                    dest[position:end] = piece
                    if digest is not None:
                        digest.update(piece)
                    position = end
            if position < meta.size:
                raise _Transient(f"{what}: truncated body ({position} of {meta.size} bytes)")
            if not meta.checksum:
                return
            if digest is not None:
                actual = digest.hexdigest()
            else:
                actual = await asyncio.to_thread(_sha256_hex, [dest])
            if actual != meta.checksum:
                mismatches += 1
                if mismatches > 1:
                    raise CorruptObject(f"{what}: SHA-256 does not match the chunk checksum")
                raise _Transient(f"{what}: checksum mismatch (retrying once)")

        await self._retrying(what, attempt, not_found_retries=self.not_found_retries)

    async def _delete_key(self, key: str) -> int:
        return await self._delete(f"delete {self.bucket}/{key}", f"/buckets/{self.bucket}/{key}")

    async def _delete_ball_id(self, ball_id: str) -> int:
        what = f"delete ball {self.bucket}/{ball_id}"
        return await self._delete(what, f"/buckets/{self.bucket}/bid/{ball_id}")

    async def _delete(self, what: str, path: str) -> int:
        """Forced DELETE of ``path`` on a router: the ``n_deletes`` it reports, 0 when already gone (404)."""

        async def attempt(router: RouterEndpoint) -> int:
            url = self._url(router, path)
            async with self._http().delete(url, headers={"Force": "1"}) as response:
                if response.status == 404:
                    return 0
                await _check(response, what)
                body = await _json_body(response, what)
            return int(body.get("n_deletes", 0) or 0)

        return await self._retrying(what, attempt)

    async def _put_chunk(self, ball_id: str, chunk: ChunkPayload, checksum: str) -> None:
        what = f"put {self.bucket}/{chunk.key}"
        metadata = {
            "bucket_id": self.bucket,
            "key": chunk.key,
            "ball_id": ball_id,
            "checksum": checksum,
            "size": chunk.size,
            "tags": chunk.tags,
            "producer_id": self.client_id,
            "content_type": "application/octet-stream",
            "is_disabled": False,
            "replication_factor": self.replication_factor,
        }
        dirty = False  # a previous attempt (or another writer) may have left this key behind

        async def attempt(router: RouterEndpoint) -> None:
            nonlocal dirty
            session = self._http()
            if dirty:
                url = self._url(router, f"/buckets/{self.bucket}/{chunk.key}")
                async with session.delete(url, headers={"Force": "1"}) as response:
                    if response.status != 404:
                        await _check(response, f"delete {chunk.key} before retrying")
            url = self._url(router, f"/buckets/{self.bucket}/metadata")
            async with session.post(url, json=metadata) as response:
                if response.status == 404:
                    dirty = True
                    raise _KeyExists(f"{what}: {_detail_text(await _detail(response))}")
                dirty = True  # metadata may have been registered even if the answer got lost
                await _check(response, what, missing_is_transient=True)
                body = await _json_body(response, what)
            tasks = body.get("tasks_ids")
            if not isinstance(tasks, list) or not tasks or not isinstance(tasks[0], str):
                raise _Transient(f"{what}: router returned no task id")
            url = self._url(router, f"/buckets/data/{tasks[0]}/chunked")
            headers = {"Content-Type": "application/octet-stream", "Chunk-Size": str(self.chunk_size)}
            async with session.post(url, data=chunk.data, headers=headers) as response:
                await _check(response, what, missing_is_transient=True)
                body = await _json_body(response, what)
            if not body.get("peer_ids"):
                raise _Transient(f"{what}: the router stored the data on no peer (peer_ids empty)")

        await self._retrying(what, attempt)

    # ------------------------------------------------------------------ balls
    async def _load(self, ball_id: str) -> Layout:
        check_ball_id(ball_id)
        first = await self._get_meta(chunk_key(ball_id, 0))
        count = num_chunks_of(first.tags, ball_id)
        check_first_chunk(ball_id, first, count, self.max_object_bytes)  # before fetching n-1 records

        async def fetch(index: int) -> ChunkMeta:
            try:
                return await self._get_meta(chunk_key(ball_id, index))
            except NotFound:
                raise NotFound(
                    f"{ball_id}: chunk {index} of {count} is missing (incomplete or being rewritten)"
                ) from None

        rest = await self._bounded([lambda i=i: fetch(i) for i in range(1, count)])  # type: ignore[misc]
        layout = read_layout(ball_id, [first, *rest])
        check_budget(layout, self.max_object_bytes)  # before any read allocates its output
        return layout

    async def _fill(self, layout: Layout, flat: memoryview) -> None:
        await self._bounded(
            [
                lambda m=meta, o=offset: self._get_data(m, flat[o : o + m.size])  # type: ignore[misc]
                for meta, offset in zip(layout.chunks, layout.offsets, strict=True)
            ]
        )
        if layout.full_checksum and any(meta.checksum is None for meta in layout.chunks):
            # Without per-chunk checksums (possible in objects from other writers) check the whole.
            actual = await asyncio.to_thread(_sha256_hex, [flat])
            if actual != layout.full_checksum:
                raise CorruptObject(f"{layout.ball_id}: SHA-256 does not match full_checksum")

    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        return (await self.fetch_ndarray(ball_id))[0]

    async def fetch_ndarray(
        self, ball_id: str, *, allocate: Allocator | None = None
    ) -> tuple[np.ndarray, BallInfo]:
        """Read an ndarray; the info's ``etag`` is the content hash the read bytes were checked against."""
        layout = await self._load(ball_id)
        layout.require_array()
        out, flat = await allocate_output(layout, allocate)
        await self._fill(layout, memoryview(flat))
        return out, _info(layout)

    async def get_bytes_list(self, ball_id: str) -> list[bytes]:
        layout = await self._load(ball_id)
        layout.require_bytes_list()
        buffer = bytearray(layout.size)
        view = memoryview(buffer)
        await self._fill(layout, view)
        return await off_loop(layout.size, decode_bytes_list, layout, view, self.max_object_bytes)

    async def info(self, ball_id: str) -> BallInfo:
        return _info(await self._load(ball_id))

    async def exists(self, ball_id: str) -> bool:
        check_ball_id(ball_id)
        try:
            await self._get_meta(chunk_key(ball_id, 0))
        except NotFound:
            return False
        return True

    async def delete(self, ball_id: str) -> int:
        """Chunk 0 first (the ball disappears for readers at once), then the rest by ball id."""
        check_ball_id(ball_id)
        first = await self._delete_key(chunk_key(ball_id, 0))
        return first + await self._delete_ball_id(ball_id)

    async def list_balls(self) -> list[str]:
        what = f"list bucket {self.bucket}"

        async def attempt(router: RouterEndpoint) -> list[str]:
            url = self._url(router, f"/buckets/{self.bucket}/metadata")
            async with self._http().get(url) as response:
                if response.status == 404:
                    return []
                await _check(response, what)
                body = await _json_body(response, what, MAX_LISTING_BYTES)
            balls = body.get("balls", [])
            if not isinstance(balls, list):
                raise _Transient(f"{what}: 'balls' is not a list")
            found = set()
            for record in balls:  # one entry per replica and peer: merge by key
                if isinstance(record, dict):
                    ball, key = record.get("ball_id"), record.get("key")
                    if isinstance(ball, str) and key == chunk_key(ball, 0):
                        found.add(ball)
            return sorted(found)

        return await self._retrying(what, attempt)

    async def ping(self) -> bool:
        """True when some router answers ``/api/v4/peers/stats`` with a non-empty object."""
        if self._closed:
            return False
        timeout = aiohttp.ClientTimeout(total=min(self.timeout, 5.0))
        for router in self.routers:
            try:
                async with self._http().get(self._url(router, "/peers/stats"), timeout=timeout) as response:
                    if response.status == 200:
                        raw, complete = await _read_body(response, MAX_ANSWER_BYTES)
                        if not complete:  # too big to parse here; an empty object is not that big
                            return raw.lstrip().startswith(b"{")
                        body = json.loads(raw)
                        if isinstance(body, dict) and body:
                            return True
            except Exception as error:
                log.debug("ping %s failed: %s", router.base_url, error)
        return False

    async def aclose(self) -> None:
        if self._closed:
            return
        if self._background:
            await asyncio.wait(self._background, timeout=self.timeout)
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ writes
    async def _checksums(self, plan: BallPlan) -> tuple[list[str], str]:
        views = [chunk.data for chunk in plan.chunks]
        if plan.size <= _HASH_INLINE_LIMIT:
            sums = [_sha256_hex([view]) for view in views]
            return sums, sums[0] if len(views) == 1 else _sha256_hex(views)
        jobs = [asyncio.to_thread(_sha256_hex, [view]) for view in views]
        if len(views) > 1:
            jobs.append(asyncio.to_thread(_sha256_hex, views))
        sums = await asyncio.gather(*jobs)
        return list(sums[: len(views)]), sums[-1]

    async def _put(self, plan: BallPlan) -> BallInfo:
        self._http()
        await self.delete(plan.ball_id)  # Rory's delete-then-put: MictlanX cannot overwrite a key
        sums, full = await self._checksums(plan)
        plan.set_full_checksum(full)
        first, *rest = plan.chunks
        try:
            await self._bounded(
                [lambda c=c: self._put_chunk(plan.ball_id, c, sums[c.index]) for c in rest]  # type: ignore[misc]
            )
            await self._put_chunk(plan.ball_id, first, sums[0])  # chunk 0 last: the commit point
        except BaseException:
            cleanup = asyncio.ensure_future(self._discard(plan.ball_id))
            self._background.add(cleanup)
            cleanup.add_done_callback(self._background.discard)
            with contextlib.suppress(BaseException):
                await asyncio.shield(cleanup)
            raise
        return replace(plan.info(full), etag=_content_etag([(c.size, sums[c.index]) for c in plan.chunks]))

    async def _discard(self, ball_id: str) -> None:
        """One best-effort pass (no retries) removing a failed put's chunks."""
        try:
            router = self._next_router()
            for path in (
                f"/buckets/{self.bucket}/{chunk_key(ball_id, 0)}",
                f"/buckets/{self.bucket}/bid/{ball_id}",
            ):
                async with self._http().delete(self._url(router, path), headers={"Force": "1"}) as response:
                    await _read_body(response, MAX_ERROR_BYTES)
        except Exception as error:
            log.warning("could not remove the partial ball %s/%s: %s", self.bucket, ball_id, error)
