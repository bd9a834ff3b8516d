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

The router endpoints are parsed in ``mictlanx_uri.py`` and its answers read in ``mictlanx_http.py``
(both re-exported here); the read and write discipline shared with the nats backend is ``remote.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import aiohttp

from worker.errors import Conflict, CorruptObject, NotFound, StorageUnavailable
from worker.settings import Settings
from worker.storage.base import BallInfo, settings_options
from worker.storage.breaker import CircuitBreaker, pause
from worker.storage.codec import DEFAULT_MAX_OBJECT_BYTES, BallPlan, ChunkMeta, ChunkPayload, Layout
from worker.storage.mictlanx_http import (
    API,
    MAX_ANSWER_BYTES,
    MAX_ERROR_BYTES,
    MAX_LISTING_BYTES,
    KeyExists,
    Transient,
    check_answer,
    detail_text,
    error_detail,
    json_body,
    metadata_record,
    read_body,
)
from worker.storage.mictlanx_uri import (
    SUPPORTED_API_VERSION,
    RouterEndpoint,
    parse_mictlanx_routers,
    parse_mictlanx_uri,
    router_endpoints,
)
from worker.storage.names import check_ball_id, check_bucket_id, chunk_key
from worker.storage.remote import (
    HASH_INLINE_LIMIT,
    RemoteStore,
    plan_checksums,
    sha256_hex,
    stored_info,
)
from worker.storage.retry import RetryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")


class MictlanXStore(RemoteStore):
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
        options = settings_options(
            settings,
            options,
            client_id=settings.mictlanx_client_id,
            timeout=settings.mictlanx_timeout,
            chunk_size=settings.mictlanx_chunk_size,
            retry=RetryPolicy(
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
            except KeyExists as error:
                last = error  # the router answered: not an outage
            except Transient as error:
                last = error
                self.breaker.failed(error)
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                last = error
                self.breaker.failed(error)
            log.debug("%s: attempt %d failed: %s", what, number + 1, last)
        if isinstance(last, NotFound):
            raise last
        if isinstance(last, KeyExists):
            raise Conflict(f"{what}: key still exists after {self.retry.attempts} attempts: {last}")
        raise StorageUnavailable(
            f"{what}: gave up after {self.retry.attempts} attempts: {type(last).__name__}: {last}"
        )

    # ------------------------------------------------------------------ single requests
    async def _record(self, key: str) -> ChunkMeta:
        what = f"metadata of {self.bucket}/{key}"

        async def attempt(router: RouterEndpoint) -> ChunkMeta:
            url = self._url(router, f"/buckets/{self.bucket}/metadata/{key}")
            async with self._http().get(url) as response:
                await check_answer(response, what)
                body = await json_body(response, what)
            meta = metadata_record(body.get("metadata"), what)
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
            digest = hashlib.sha256() if meta.checksum and meta.size <= HASH_INLINE_LIMIT else None
            position = 0
            async with self._http().get(url, headers=self._get_headers()) as response:
                await check_answer(response, what)
                async for piece in response.content.iter_chunked(self.chunk_size):
                    end = position + len(piece)
                    if end > meta.size:
                        raise CorruptObject(f"{what}: more than the {meta.size} bytes its metadata declares")
                    dest[position:end] = piece
                    if digest is not None:
                        digest.update(piece)
                    position = end
            if position < meta.size:
                raise Transient(f"{what}: truncated body ({position} of {meta.size} bytes)")
            if not meta.checksum:
                return
            if digest is not None:
                actual = digest.hexdigest()
            else:
                actual = await asyncio.to_thread(sha256_hex, [dest])
            if actual != meta.checksum:
                mismatches += 1
                if mismatches > 1:
                    raise CorruptObject(f"{what}: SHA-256 does not match the chunk checksum")
                raise Transient(f"{what}: checksum mismatch (retrying once)")

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
                await check_answer(response, what)
                body = await json_body(response, what)
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
                        await check_answer(response, f"delete {chunk.key} before retrying")
            url = self._url(router, f"/buckets/{self.bucket}/metadata")
            async with session.post(url, json=metadata) as response:
                if response.status == 404:
                    dirty = True
                    raise KeyExists(f"{what}: {detail_text(await error_detail(response))}")
                dirty = True  # metadata may have been registered even if the answer got lost
                await check_answer(response, what, missing_is_transient=True)
                body = await json_body(response, what)
            tasks = body.get("tasks_ids")
            if not isinstance(tasks, list) or not tasks or not isinstance(tasks[0], str):
                raise Transient(f"{what}: router returned no task id")
            url = self._url(router, f"/buckets/data/{tasks[0]}/chunked")
            headers = {"Content-Type": "application/octet-stream", "Chunk-Size": str(self.chunk_size)}
            async with session.post(url, data=chunk.data, headers=headers) as response:
                await check_answer(response, what, missing_is_transient=True)
                body = await json_body(response, what)
            if not body.get("peer_ids"):
                raise Transient(f"{what}: the router stored the data on no peer (peer_ids empty)")

        await self._retrying(what, attempt)

    def _meta_of(self, record: ChunkMeta) -> ChunkMeta:
        return record  # _record parses the router's record already

    # ------------------------------------------------------------------ balls
    async def _consistent(self, ball_id: str, read: Callable[[Layout, list[Any]], Awaitable[T]]) -> T:
        """One load and one read: a concurrent rewrite shows up as ``CorruptObject`` (mixed
        ``full_checksum``) or ``NotFound`` (a vanished chunk), never as data (module docstring)."""
        check_ball_id(ball_id)
        layout, records = await self._load(ball_id)
        return await read(layout, records)

    async def _fill(self, layout: Layout, records: Sequence[Any], flat: memoryview) -> None:
        await self._bounded(
            [
                lambda m=meta, o=offset: self._get_data(m, flat[o : o + m.size])  # type: ignore[misc]
                for meta, offset in zip(layout.chunks, layout.offsets, strict=True)
            ]
        )
        if layout.full_checksum and any(meta.checksum is None for meta in layout.chunks):
            # Without per-chunk checksums (possible in objects from other writers) check the whole.
            actual = await asyncio.to_thread(sha256_hex, [flat])
            if actual != layout.full_checksum:
                raise CorruptObject(f"{layout.ball_id}: SHA-256 does not match full_checksum")

    def _info(self, layout: Layout) -> BallInfo:
        """BallInfo with an ``etag`` that reads verify: every chunk's checksum (checked as each chunk
        arrives), else the ``full_checksum`` (then checked over the whole payload), else none."""
        info = super()._info(layout)
        if info.etag is None and layout.full_checksum:
            info = replace(info, etag=f"full-sha256:{layout.full_checksum}")
        return info

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
                await check_answer(response, what)
                body = await json_body(response, what, MAX_LISTING_BYTES)
            balls = body.get("balls", [])
            if not isinstance(balls, list):
                raise Transient(f"{what}: 'balls' is not a list")
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
                        raw, complete = await read_body(response, MAX_ANSWER_BYTES)
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
    async def _put(self, plan: BallPlan) -> BallInfo:
        self._http()
        await self.delete(plan.ball_id)  # Rory's delete-then-put: MictlanX cannot overwrite a key
        sums, full = await plan_checksums(plan)
        plan.set_full_checksum(full)
        try:
            await self._store_chunks(plan, lambda c: self._put_chunk(plan.ball_id, c, sums[c.index]))
        except BaseException:
            cleanup = asyncio.ensure_future(self._discard(plan.ball_id))
            self._background.add(cleanup)
            cleanup.add_done_callback(self._background.discard)
            with contextlib.suppress(BaseException):
                await asyncio.shield(cleanup)
            raise
        return stored_info(plan, full, sums)

    async def _discard(self, ball_id: str) -> None:
        """One best-effort pass (no retries) removing a failed put's chunks."""
        try:
            router = self._next_router()
            for path in (
                f"/buckets/{self.bucket}/{chunk_key(ball_id, 0)}",
                f"/buckets/{self.bucket}/bid/{ball_id}",
            ):
                async with self._http().delete(self._url(router, path), headers={"Force": "1"}) as response:
                    await read_body(response, MAX_ERROR_BYTES)
        except Exception as error:
            log.warning("could not remove the partial ball %s/%s: %s", self.bucket, ball_id, error)


__all__ = [
    "API",
    "MAX_ANSWER_BYTES",
    "MAX_ERROR_BYTES",
    "MAX_LISTING_BYTES",
    "SUPPORTED_API_VERSION",
    "MictlanXStore",
    "RouterEndpoint",
    "parse_mictlanx_routers",
    "parse_mictlanx_uri",
    "router_endpoints",
]
