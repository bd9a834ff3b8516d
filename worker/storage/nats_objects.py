"""The ``nats`` backend: a bucket of chunked balls in a JetStream object store on the worker's cluster.

Each chunk ``<ball>_<i>`` is one object of the object store (stream ``OBJ_<bucket>``), named exactly as
on the other backends, with the chunk tags of :mod:`worker.storage.codec` (plus ``checksum``, the
chunk's SHA-256) kept in the object's ``headers`` as ``{tag: [value]}`` (the JSON shape Go's
``nats.Header`` uses). So a ball written here has the same logical content as on ``local`` or
``mictlanx``.

What nats-py 2.16's object store (``nats/js/object_store.py``) does and what we add around it:

* ``put`` publishes the bytes as messages on a fresh subject (``$O.<bucket>.C.<nuid>``), one ack per
  message, then the object's meta record with a roll-up header, then purges the previous version's
  chunks. A name therefore always resolves to one complete version: an overwrite needs no delete first.
  A ball of several chunks is not one object, though, so chunks 1..n-1 go first and chunk 0 (it
  carries ``num_chunks``) last, as the commit point; every chunk carries the write's
  ``full_checksum``, so a reader that meets chunks of two writes re-reads and, if the mix persists (a
  writer failed half way), reports ``CorruptObject``, never mixed data.
* nats-py's ``get`` reads an object through a new ordered consumer, which the server keeps until its
  inactivity threshold: hundreds of small reads pile up hundreds of consumers (a cluster refuses more,
  "maximum consumers limit reached"), and it waits forever when the version's messages were purged
  meanwhile. So reads use the meta record (``get_info``) and then fetch the messages of that version's
  subject one by one with direct gets (``next_by_subj``; no consumer, any current replica answers),
  checking the SHA-256 digest themselves. A message that is not there means the object was replaced
  (the read starts over on the new version) or a replica lags (retried).
* Sizes are checked from the meta records (``check_first_chunk``, ``check_budget``) before anything is
  allocated; the per-message size is ``chunk_size`` (under the server's ``max_payload``).

Errors: a missing object is ``NotFound``; a digest mismatch or a meta record that is not JSON is
``CorruptObject``; a bucket at its ``max_bytes`` (or a server out of JetStream storage) is
:class:`StorageFull` naming the bucket (not retried: only deleting data helps); timeouts, no
responders, a lost connection or a stream without a leader (a cluster electing one) are retried with
:class:`~worker.storage.retry.RetryPolicy` and end as the retryable ``StorageUnavailable``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import (
    APIError,
    BadObjectMetaError,
    BucketNotFoundError,
    DigestMismatchError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE
from nats.js.object_store import ObjectStore as JsObjectStore

from worker.errors import CorruptObject, NotFound, RoryError, StorageFull, StorageUnavailable
from worker.settings import Settings
from worker.storage.base import BallInfo, settings_options
from worker.storage.codec import (
    DEFAULT_MAX_OBJECT_BYTES,
    BallPlan,
    ChunkMeta,
    ChunkPayload,
    Layout,
    normalise_checksum,
    num_chunks_of,
)
from worker.storage.names import check_ball_id, check_bucket_id, chunk_key
from worker.storage.remote import RemoteStore, plan_checksums, stored_info
from worker.storage.retry import RetryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Bytes per JetStream message of an object; under the default 1 MB max_payload with room for headers.
DEFAULT_CHUNK_SIZE = 512 * 1024
#: Timeout of one JetStream request (a publish ack, a meta lookup).
DEFAULT_REQUEST_TIMEOUT = 10.0
#: Reads restarted because a writer replaced the ball meanwhile, before giving up.
MAX_RESTARTS = 5
#: A retry policy for a store on one cluster: leader elections take seconds, not minutes.
DEFAULT_RETRY = RetryPolicy(max_retries=6, delay=0.5, backoff_factor=1.0, max_delay=5.0)
_COPY_INLINE_LIMIT = 1024 * 1024
#: JetStream error codes (nats-server ``errors.json``): store failed (carries "maximum bytes
#: exceeded" for a full stream), insufficient storage resources, resource limits exceeded.
_FULL_ERR_CODES = frozenset({10077, 10047, 10023})
_FULL_MARKERS = ("maximum bytes", "insufficient storage", "insufficient resources", "storage resources")
_DIGEST_PREFIX = "SHA-256="


class _Transient(Exception):
    """Worth another attempt: a timeout, no responders, a reconnecting client, a leaderless stream."""


class _Changed(Exception):
    """A writer replaced (or deleted) the ball while it was being read: start the read over."""


_TRANSIENT_NATS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
    NoStreamResponseError,
    TimeoutError,
    ConnectionError,
)


def _is_full(error: APIError) -> bool:
    text = (error.description or "").lower()
    return error.err_code in _FULL_ERR_CODES and any(marker in text for marker in _FULL_MARKERS)


def _digest_hex(digest: object, what: str) -> str | None:
    """The object store's ``SHA-256=<urlsafe base64>`` digest as lower-case hex."""
    if digest in (None, ""):
        return None
    if not isinstance(digest, str) or not digest.upper().startswith(_DIGEST_PREFIX):
        raise CorruptObject(f"{what}: digest {digest!r:.80} is not SHA-256")
    try:
        raw = base64.urlsafe_b64decode(digest[len(_DIGEST_PREFIX) :])
    except (binascii.Error, ValueError):
        raise CorruptObject(f"{what}: digest {digest!r:.80} is not base64") from None
    if len(raw) != 32:
        raise CorruptObject(f"{what}: digest has {len(raw)} bytes, SHA-256 has 32")
    return raw.hex()


def _headers(tags: Mapping[str, str]) -> dict[str, list[str]]:
    return {key: [value] for key, value in tags.items()}


def _tags(info: api.ObjectInfo, what: str) -> dict[str, str]:
    """Headers back to tags: each value a string or a one-string list (Go writes lists)."""
    headers = info.headers or {}
    if not isinstance(headers, dict):
        raise CorruptObject(f"{what}: headers are not an object")
    tags: dict[str, str] = {}
    for key, value in headers.items():
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(key, str) or not isinstance(value, str):
            raise CorruptObject(f"{what}: header {key!r:.40} is not one string")
        tags[key] = value
    return tags


def _chunk_meta(info: api.ObjectInfo, what: str) -> ChunkMeta:
    size = info.size or 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise CorruptObject(f"{what}: invalid size {size!r}")
    tags = _tags(info, what)
    digest = _digest_hex(info.digest, what)
    tagged = normalise_checksum(tags.get("checksum"))
    if tagged is not None and digest is not None and tagged != digest:
        raise CorruptObject(f"{what}: checksum tag disagrees with the object's digest")
    return ChunkMeta(key=info.name, size=size, checksum=digest or tagged, tags=tags)


class _Source:
    """A ``readinto`` reader over a chunk's bytes, so nats-py reads a big chunk without a full copy."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.position = 0

    def readinto(self, buffer: bytearray) -> int:
        part = self.data[self.position : self.position + len(buffer)]
        buffer[: len(part)] = part
        self.position += len(part)
        return len(part)


class NatsObjectStore(RemoteStore):
    """One JetStream object-store bucket holding Rory balls (see the module docstring)."""

    backend = "nats"

    def __init__(
        self,
        bucket: str = "rory",
        *,
        nc: Client | None = None,
        connect: Callable[[], Awaitable[Client]] | None = None,
        replicas: int = 1,
        max_bucket_bytes: int = -1,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_workers: int = 4,
        retry: RetryPolicy | None = None,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    ) -> None:
        if (nc is None) == (connect is None):
            raise ValueError("give exactly one of nc (a connected client) or connect (a factory)")
        self.bucket = check_bucket_id(bucket)
        self.replicas = max(1, int(replicas))
        self.max_bucket_bytes = int(max_bucket_bytes) if max_bucket_bytes and max_bucket_bytes > 0 else -1
        self.chunk_size = max(4096, int(chunk_size))
        self.timeout = float(timeout)
        self.max_workers = max(1, int(max_workers))
        self.retry = retry or DEFAULT_RETRY
        # Reads refuse (PayloadTooLarge) a ball whose meta records declare more bytes than this.
        self.max_object_bytes = int(max_object_bytes)
        self._nc = nc
        self._connect = connect
        self._owns_connection = nc is None
        self._obs: JsObjectStore | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> NatsObjectStore:
        """A store on the bucket these settings name; ``nc`` (a connection to share) or ``connect`` (a
        factory for its own connection, opened on the first call) must be among ``options``: how to
        log in to NATS is the caller's business (``worker.storage.open_store``'s ``nats_connect``)."""
        if "nc" not in options and "connect" not in options:
            raise TypeError("NatsObjectStore.from_settings needs nc= or connect=")
        options = settings_options(
            settings,
            options,
            replicas=settings.nats_object_replicas,
            max_bucket_bytes=settings.nats_object_max_bytes,
            timeout=min(settings.mictlanx_timeout, DEFAULT_REQUEST_TIMEOUT),
            retry=RetryPolicy(
                max_retries=min(settings.mictlanx_max_retries, DEFAULT_RETRY.max_retries),
                delay=min(settings.mictlanx_delay, DEFAULT_RETRY.delay),
                backoff_factor=settings.mictlanx_backoff_factor,
                max_delay=DEFAULT_RETRY.max_delay,
            ),
        )
        return cls(settings.nats_object_bucket or settings.mictlanx_bucket_id, **options)

    # ------------------------------------------------------------------ plumbing
    @property
    def _stream(self) -> str:
        return OBJ_STREAM_TEMPLATE.format(bucket=self.bucket)

    def _js(self) -> JetStreamContext:
        assert self._nc is not None
        return self._nc.jetstream(timeout=self.timeout)

    async def _store(self) -> JsObjectStore:
        if self._closed:
            raise StorageUnavailable("nats object store is closed")
        if self._obs is not None:
            return self._obs
        async with self._open_lock:
            if self._obs is None:
                self._obs = await self._retrying(f"open bucket {self.bucket}", self._open)
        return self._obs

    async def _open(self) -> JsObjectStore:
        if self._nc is None:
            assert self._connect is not None
            try:
                self._nc = await self._connect()
            except Exception as error:  # NatsUnavailable, SettingsError: name the cause
                raise StorageUnavailable(f"nats object store {self.bucket}: {error}") from error
        js = self._js()
        try:
            return await js.object_store(self.bucket)
        except BucketNotFoundError:
            pass
        config = api.ObjectStoreConfig(
            bucket=self.bucket,
            description="Rory balls (worker/storage/nats_objects.py)",
            storage=api.StorageType.FILE,
            replicas=self.replicas,
            max_bytes=self.max_bucket_bytes,
        )
        try:
            return await js.create_object_store(self.bucket, config=config)
        except APIError as error:
            if error.err_code == 10058:  # created meanwhile by another worker with another config
                return await js.object_store(self.bucket)
            raise

    def _translate(self, error: BaseException, what: str) -> BaseException:
        """A nats-py error as the store's typed error, or ``_Transient`` when worth another attempt."""
        if isinstance(error, (RoryError, _Transient, _Changed)):
            return error
        if isinstance(error, DigestMismatchError):
            return CorruptObject(f"{what}: SHA-256 does not match the object's digest")
        if isinstance(error, BadObjectMetaError):
            return CorruptObject(f"{what}: the object's meta record is unreadable")
        if isinstance(error, NotFoundError):  # ObjectNotFoundError, ObjectDeletedError, BucketNotFound
            return NotFound(f"{what}: not found in bucket {self.bucket}")
        if isinstance(error, APIError):
            if _is_full(error):
                return StorageFull(
                    f"{what}: nats bucket {self.bucket!r} is full ({error.description}; "
                    f"NATS_OBJECT_MAX_BYTES={self.max_bucket_bytes}): delete balls or raise the limit"
                )
            if isinstance(error, ServiceUnavailableError) or (error.code or 0) >= 500:
                return _Transient(f"{what}: {error.description} (code {error.code}/{error.err_code})")
            return StorageUnavailable(f"{what}: JetStream refused: {error.description}")
        if isinstance(error, _TRANSIENT_NATS):
            return _Transient(f"{what}: {type(error).__name__}: {error}")
        if isinstance(error, nats.errors.Error):
            return StorageUnavailable(f"{what}: {type(error).__name__}: {error}")
        return error

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        last: BaseException | None = None
        for number in range(self.retry.attempts):
            if number:
                await asyncio.sleep(self.retry.sleep_for(number))
            try:
                return await attempt()
            except Exception as raw:
                error = self._translate(raw, what)
                if not isinstance(error, _Transient):
                    raise error from (raw if error is not raw else None)
                last = error
                log.debug("nats object store: %s (attempt %d)", error, number + 1)
        raise StorageUnavailable(f"{what}: gave up after {self.retry.attempts} attempts: {last}")

    # ------------------------------------------------------------------ single objects
    async def _record(self, key: str) -> api.ObjectInfo:
        obs = await self._store()
        return await self._retrying(f"meta of {self.bucket}/{key}", lambda: obs.get_info(key))

    def _meta_of(self, record: api.ObjectInfo) -> ChunkMeta:
        return _chunk_meta(record, f"{self.bucket}/{record.name}")

    async def _get_once(self, obs: JsObjectStore, meta: ChunkMeta, nuid: str, dest: memoryview) -> None:
        """Fetch the object's messages one by one with direct gets (no consumer) into ``dest``."""
        what = f"{self.bucket}/{meta.key}"
        js = self._js()
        subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.bucket, obj=nuid)
        digest = hashlib.sha256()
        position, seq = 0, 1
        while position < meta.size:
            try:
                msg = await js.get_msg(self._stream, seq=seq, subject=subject, direct=True, next=True)
            except NotFoundError:
                msg = None
            if msg is None or msg.seq is None or msg.subject != subject:
                # Purged (a writer replaced the object) or a replica that has not caught up yet.
                try:
                    current = await obs.get_info(meta.key)
                except NotFoundError:
                    raise _Changed(f"{what} was deleted while being read") from None
                if current.nuid != nuid:
                    raise _Changed(f"{what} was replaced while being read")
                raise _Transient(f"{what}: message after sequence {seq - 1} not served yet")
            data = msg.data or b""
            end = position + len(data)
            if end > meta.size:
                raise CorruptObject(f"{what}: more than the {meta.size} bytes its meta declares")
            dest[position:end] = data
            digest.update(data)  # one message (chunk_size bytes) at a time: short steps on the loop
            position, seq = end, msg.seq + 1
        if meta.checksum is not None and digest.hexdigest() != meta.checksum:
            raise CorruptObject(f"{what}: SHA-256 does not match the object's digest")

    async def _get_data(self, meta: ChunkMeta, nuid: str, dest: memoryview) -> None:
        obs = await self._store()
        what = f"data of {self.bucket}/{meta.key}"
        await self._retrying(what, lambda: self._get_once(obs, meta, nuid, dest))

    async def _put_chunk(self, chunk: ChunkPayload) -> None:
        obs = await self._store()
        meta = api.ObjectMeta(
            name=chunk.key,
            headers=_headers(chunk.tags),
            options=api.ObjectMetaOptions(max_chunk_size=self.chunk_size),
        )

        async def attempt() -> None:
            # nats-py copies a bytes payload per message on the loop; a big chunk is read in a thread.
            data = bytes(chunk.data) if chunk.size <= _COPY_INLINE_LIMIT else _Source(chunk.data)
            await obs.put(chunk.key, data, meta=meta)  # type: ignore[arg-type]

        await self._retrying(f"put {self.bucket}/{chunk.key}", attempt)

    async def _delete_key(self, key: str) -> int:
        obs = await self._store()
        try:
            await self._retrying(f"delete {self.bucket}/{key}", lambda: obs.delete(key))
        except NotFound:
            return 0
        return 1

    # ------------------------------------------------------------------ balls
    def _chunk_missing(self, ball_id: str, index: int, count: int) -> Exception:
        return _Changed(f"{ball_id}: chunk {index} of {count} is missing")

    def _check_records(self, ball_id: str, metas: Sequence[ChunkMeta]) -> None:
        if len({meta.tags.get("full_checksum") for meta in metas}) > 1:
            raise _Changed(f"{ball_id}: chunks of different writes")

    async def _fill(self, layout: Layout, records: Sequence[api.ObjectInfo], flat: memoryview) -> None:
        """Each chunk from the version (``nuid``) its record names (see :meth:`_get_once`)."""
        await self._bounded(
            [
                lambda m=meta, n=record.nuid, o=offset: self._get_data(m, n, flat[o : o + m.size])  # type: ignore[misc]
                for meta, record, offset in zip(layout.chunks, records, layout.offsets, strict=True)
            ]
        )

    async def _consistent(self, ball_id: str, read: Callable[[Layout, list[Any]], Awaitable[T]]) -> T:
        """Load and read a ball, starting over while a concurrent writer replaces it under us."""
        check_ball_id(ball_id)
        last: _Changed | None = None
        for restart in range(MAX_RESTARTS):
            if restart:
                await asyncio.sleep(min(0.05 * 2**restart, 1.0))
            try:
                layout, records = await self._load(ball_id)
                return await read(layout, records)
            except _Changed as changed:
                last = changed
        if last is not None and "different writes" in str(last):
            raise CorruptObject(f"{last}: the ball is a mix of writes (a put failed half way?)")
        raise StorageUnavailable(f"{ball_id} kept changing while it was being read ({last})")

    async def _count_of(self, ball_id: str) -> int:
        """How many chunks the stored ball has (0 when absent; 1 when chunk 0 is unreadable)."""
        try:
            first = self._meta_of(await self._record(chunk_key(ball_id, 0)))
        except NotFound:
            return 0
        try:
            return num_chunks_of(first.tags, ball_id)
        except CorruptObject:
            return 1

    async def delete(self, ball_id: str) -> int:
        """Chunk 0 first (the ball disappears for readers at once), then the others."""
        check_ball_id(ball_id)
        count = await self._count_of(ball_id)
        if count == 0:
            return 0
        removed = await self._delete_key(chunk_key(ball_id, 0))
        rest = await self._bounded(
            [lambda i=i: self._delete_key(chunk_key(ball_id, i)) for i in range(1, count)]  # type: ignore[misc]
        )
        return removed + sum(rest)

    async def list_balls(self) -> list[str]:
        obs = await self._store()

        async def attempt() -> list[api.ObjectInfo]:
            try:
                return await obs.list(ignore_deletes=True)
            except NotFoundError:  # nats-py's answer for an empty bucket
                return []

        found = set()
        for info in await self._retrying(f"list bucket {self.bucket}", attempt):
            if info.deleted:
                continue
            try:
                tags = _tags(info, info.name)
            except CorruptObject:
                continue
            group = tags.get("group_id")
            if group is not None:
                if info.name == chunk_key(group, 0):
                    found.add(group)
            elif tags.get("index") == "0" and info.name.endswith("_0"):  # another writer's ball
                found.add(info.name[:-2])
        return sorted(found)

    async def ping(self) -> bool:
        """True when the bucket's stream answers (its leader is reachable); never raises."""
        if self._closed:
            return False
        try:
            obs = await asyncio.wait_for(self._store(), self.timeout)
            await asyncio.wait_for(obs.status(), self.timeout)
        except Exception as error:
            log.debug("ping of nats bucket %s failed: %s", self.bucket, error)
            return False
        return True

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_connection and self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.close()
            except Exception as error:  # pragma: no cover - closing is best effort
                log.debug("closing the storage connection failed: %s", error)

    # ------------------------------------------------------------------ writes
    async def _put(self, plan: BallPlan) -> BallInfo:
        await self._store()
        sums, full = await plan_checksums(plan)
        plan.set_full_checksum(full)
        for chunk in plan.chunks:
            chunk.tags["checksum"] = sums[chunk.index]
        old_count = await self._count_of(plan.ball_id)
        await self._store_chunks(plan, self._put_chunk)
        stale = range(len(plan.chunks), old_count)  # chunks of a longer previous version
        if stale:
            try:
                await self._bounded(
                    [lambda i=i: self._delete_key(chunk_key(plan.ball_id, i)) for i in stale]  # type: ignore[misc]
                )
            except RoryError as error:  # invisible to readers (chunk 0 says how many there are)
                log.warning("could not remove stale chunks of %s/%s: %s", self.bucket, plan.ball_id, error)
        return stored_info(plan, full, sums)


__all__ = ["NatsObjectStore", "StorageFull"]
