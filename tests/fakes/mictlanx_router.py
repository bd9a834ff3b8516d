"""A fake MictlanX v4 router: a real aiohttp server on 127.0.0.1 reproducing the documented API
(docs/storage.md §5.1, §5.2), its odd status codes, and switchable faults. Test-only.

Use it in the test's event loop::

    async with FakeRouter() as router:
        store = MictlanXStore(parse_mictlanx_uri(router.uri))
        router.fail_next(2, status=503)          # next 2 requests answer 503
        router.truncate_next(1)                  # next data GET sends half the body with status 200
        router.drop_next(1, path="/metadata")    # next matching request: connection closed, no answer
        router.oversize_next(1, 64 << 20)        # next request: a 64 MiB (error) body, streamed

or from synchronous code / another process with :class:`FakeRouterThread` (its own loop in a
thread), or standalone: ``python -m tests.fakes.mictlanx_router --port 63666``.

Behaviour reproduced: two-phase put with single-use task ids; metadata visible right after step 1
(a key whose data never arrived answers metadata 200 but data 404, "poisoned"); 404 with
``code: 666`` when putting an existing key; 400 on a body/path bucket mismatch; 422 for non-string
tag values; keys sanitised like the router does; metadata of a missing key = **500**
``"404: No available peers"``; data streamed chunked without Content-Length; chunk listings with one
entry per replica in non-index order; bucket listing with ``peers_ids`` and duplicates; delete by key
404 when unknown, by ball id 200 with ``n_deletes: 0``; every route also under ``/mictlanx``;
``Chunk-Size``/``Force-Get``/``Force``/``Update`` headers accepted and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API = "/api/v4"
_DROP = re.compile(r"[^A-Za-z0-9_-]")
_RUNS = re.compile(r"[-_]{2,}")
_VALID = re.compile(r"[A-Za-z0-9]+(?:[A-Za-z0-9]|[-_](?=[A-Za-z0-9]))*")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sanitize(name: str) -> str:
    """The router's name sanitisation (docs/original-rory.md), kept independent of the code under test."""
    text = _RUNS.sub("-", _DROP.sub("", name))
    text = text[1:] if text.startswith("-") else text
    text = text[:-1] if text.endswith("-") else text
    return text if _VALID.fullmatch(text) else ""


@dataclass
class Fault:
    """``remaining`` more requests matching ``method``/``path`` (a regex searched in the path) get it."""

    kind: str  # "error" | "delay" | "drop" | "truncate" | "no_peers" | "oversize"
    remaining: int
    method: str | None = None
    path: str | None = None
    status: int = 500
    detail: Any = "Injected failure"
    seconds: float = 0.0
    size: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method.upper() == method)
            and (self.path is None or re.search(self.path, path) is not None)
        )


@dataclass
class StoredObject:
    metadata: dict[str, Any]
    data: bytes | None = None
    peers: list[str] = field(default_factory=list)


class FakeRouter:
    """In-memory MictlanX router with fault injection. ``async with FakeRouter() as r: r.uri``."""

    def __init__(
        self, *, replicas: int = 1, router_id: str = "fake-router-0", host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.router_id = router_id
        self.host = host
        self.port = port
        self.peers = [f"fake-peer-{i}" for i in range(max(1, replicas))]
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.tasks: dict[str, tuple[str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self.put_order: list[str] = []  # chunk keys in the order their metadata was registered
        self.inflight = 0
        self.max_inflight = 0
        self.latency = 0.0
        self.oversized_sent = 0  # bytes of oversized bodies written so far
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def uri(self) -> str:
        return f"mictlanx://{self.router_id}@{self.host}:{self.port}?api_version=4&protocol=http"

    @property
    def routers_entry(self) -> str:
        """The ``MICTLANX_ROUTERS`` spelling: ``id:host:port``."""
        return f"{self.router_id}:{self.host}:{self.port}"

    async def start(self) -> FakeRouter:
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024**3)
        for prefix in ("", "/mictlanx"):
            self._routes(app, prefix)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeRouter:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ fault switches
    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        detail: Any = "Injected failure",
        method: str | None = None,
        path: str | None = None,
    ) -> Fault:
        """The next ``count`` matching requests answer ``status`` with ``{"detail": detail}``."""
        return self._add(Fault("error", count, method, path, status=status, detail=detail))

    def delay_next(
        self, count: int, seconds: float, *, method: str | None = None, path: str | None = None
    ) -> Fault:
        """The next ``count`` matching requests are answered after ``seconds``."""
        return self._add(Fault("delay", count, method, path, seconds=seconds))

    def drop_next(self, count: int = 1, *, method: str | None = None, path: str | None = None) -> Fault:
        """The next ``count`` matching requests get their connection closed without an answer."""
        return self._add(Fault("drop", count, method, path))

    def truncate_next(self, count: int = 1, *, path: str | None = None) -> Fault:
        """The next ``count`` data GETs send only half of the bytes, with status 200."""
        return self._add(Fault("truncate", count, "GET", path))

    def no_peers_next(self, count: int = 1) -> Fault:
        """The next ``count`` data uploads answer 200 with ``peer_ids: []`` and store nothing."""
        return self._add(Fault("no_peers", count, "POST", r"/chunked$"))

    def oversize_next(
        self,
        count: int = 1,
        size: int = 64 * 1024 * 1024,
        *,
        status: int = 500,
        method: str | None = None,
        path: str | None = None,
    ) -> Fault:
        """The next ``count`` matching requests answer ``status`` with a ``size``-byte JSON body
        (``{"detail": "xxx..."}``), streamed chunked without Content-Length, with backpressure (so a
        client that stops reading costs the router nothing either). ``oversized_sent`` counts bytes."""
        return self._add(Fault("oversize", count, method, path, status=status, size=size))

    def reset_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self.latency = 0.0

    def _take(self, kind: str, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.matches(method, path):
                    fault.remaining -= 1
                    return fault
        return None

    # ------------------------------------------------------------------ test helpers
    def keys(self, bucket: str = "rory") -> list[str]:
        return sorted(key for b, key in self.objects if b == bucket)

    def corrupt(self, key: str, bucket: str = "rory", offset: int = 0) -> None:
        """Flip one byte of a stored chunk (its metadata keeps the old checksum)."""
        stored = self.objects[(bucket, key)]
        assert stored.data, f"{bucket}/{key} has no data"
        data = bytearray(stored.data)
        data[offset % len(data)] ^= 0xFF
        stored.data = bytes(data)

    def count(self, method: str, pattern: str) -> int:
        """How many requests with ``method`` had a path matching ``pattern``."""
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))

    # ------------------------------------------------------------------ HTTP plumbing
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        method, path = request.method, request.path
        self.requests.append((method, path))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return await self._faulty(request, handler, method, path)
        finally:
            self.inflight -= 1

    async def _faulty(
        self, request: web.Request, handler: Handler, method: str, path: str
    ) -> web.StreamResponse:
        if self.latency:
            await asyncio.sleep(self.latency)
        delay = self._take("delay", method, path)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        if self._take("drop", method, path) is not None:
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError  # aiohttp treats it as a vanished client: nothing is sent
        error = self._take("error", method, path)
        if error is not None:
            return web.json_response({"detail": error.detail}, status=error.status)
        oversize = self._take("oversize", method, path)
        if oversize is not None:
            return await self._oversized(request, oversize)
        return await handler(request)

    async def _oversized(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        response = web.StreamResponse(status=fault.status, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        head, tail = b'{"detail": "', b'"}'
        piece = b"x" * (256 * 1024)
        left = max(0, fault.size - len(head) - len(tail))
        try:
            await response.write(head)
            while left > 0:
                part = piece[: min(left, len(piece))]
                await response.write(part)  # waits while the client does not read
                self.oversized_sent += len(part)
                left -= len(part)
            await response.write(tail)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up without reading it all, as it should
        return response

    def _routes(self, app: web.Application, prefix: str) -> None:
        base = f"{prefix}{API}/buckets"
        app.router.add_post(f"{base}/{{bucket}}/metadata", self._put_metadata)
        app.router.add_post(f"{base}/data/{{task_id}}/chunked", self._put_data)
        app.router.add_get(f"{base}/{{bucket}}/metadata", self._list_bucket)
        app.router.add_get(f"{base}/{{bucket}}/metadata/{{ball_id}}/chunks", self._list_chunks)
        app.router.add_get(f"{base}/{{bucket}}/metadata/{{key}}", self._get_metadata)
        app.router.add_get(f"{base}/{{bucket}}/{{key}}", self._get_data)
        app.router.add_delete(f"{base}/{{bucket}}/bid/{{ball_id}}", self._delete_ball)
        app.router.add_delete(f"{base}/{{bucket}}/{{key}}", self._delete_key)
        app.router.add_get(f"{prefix}{API}/peers/stats", self._peer_stats)
        app.router.add_get(f"{prefix}/openapi.json", self._openapi)

    @staticmethod
    def _error(status: int, detail: Any) -> web.Response:
        return web.json_response({"detail": detail}, status=status)

    # ------------------------------------------------------------------ handlers
    async def _put_metadata(self, request: web.Request) -> web.Response:
        bucket = sanitize(request.match_info["bucket"])
        try:
            body = await request.json()
        except ValueError:
            return self._error(422, [{"msg": "body is not JSON"}])
        problems = self._validate_metadata(body)
        if problems:
            return self._error(422, problems)
        if body["bucket_id"] != bucket:
            return self._error(400, f"Bucket ID mismatch: {body['bucket_id']} != {bucket}")
        key = sanitize(body["key"])  # the router books the sanitised key
        if (bucket, key) in self.objects:
            return self._error(
                404,
                {
                    "msg": "No available peers.",
                    "suggestion": "Add more peers or delete replicas.",
                    "bucket_id": bucket,
                    "key": key,
                    "replicas": self.objects[(bucket, key)].peers,
                    "code": 666,
                },
            )
        record = {
            "key": key,
            "size": body["size"],
            "checksum": body["checksum"],
            "tags": body.get("tags", {}),
            "content_type": body.get("content_type", "application/octet-stream"),
            "producer_id": body["producer_id"],
            "ball_id": body["ball_id"],
            "bucket_id": bucket,
            "is_disabled": bool(body.get("is_disabled", False)),
        }
        rf = min(int(body.get("replication_factor", 1) or 1), len(self.peers))
        self.objects[(bucket, key)] = StoredObject(record, None, self.peers[:rf])
        self.put_order.append(key)
        task_id = secrets.token_urlsafe(15)[:21]
        self.tasks[task_id] = (bucket, key)
        return web.json_response(
            {
                "key": key,
                "service_time": 0.001,
                "tasks_ids": [task_id],
                "bucket_id": bucket,
                "replicas": self.peers[:rf],
                "extra": {},
            }
        )

    @staticmethod
    def _validate_metadata(body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict):
            return [{"loc": ["body"], "msg": "expected an object"}]
        problems = []
        for name, kind in (
            ("bucket_id", str),
            ("key", str),
            ("ball_id", str),
            ("checksum", str),
            ("size", int),
            ("producer_id", str),
        ):
            if not isinstance(body.get(name), kind) or isinstance(body.get(name), bool):
                problems.append({"loc": ["body", name], "msg": f"field required ({kind.__name__})"})
        tags = body.get("tags", {})
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            problems.append({"loc": ["body", "tags"], "msg": "tags must be Dict[str, str]"})
        return problems

    async def _put_data(self, request: web.Request) -> web.Response:
        task = self.tasks.pop(request.match_info["task_id"], None)
        data = await request.read()
        if task is None or task not in self.objects:
            return self._error(500, "400: Expected tasks > 0, but was received 0")
        stored = self.objects[task]
        if self._take("no_peers", request.method, request.path) is not None:
            peers: list[str] = []  # every peer upload "failed": logged by the router, still 200
        else:
            stored.data = data
            peers = list(stored.peers)
        bucket, key = task
        return web.json_response(
            {
                "peer_ids": peers,
                "combined_key": f"{bucket}@{key}",
                "bucket_id": bucket,
                "key": key,
                "size": stored.metadata["size"],
            }
        )

    async def _get_metadata(self, request: web.Request) -> web.Response:
        bucket, key = sanitize(request.match_info["bucket"]), sanitize(request.match_info["key"])
        stored = self.objects.get((bucket, key))
        if stored is None:  # the real router wraps its own 404 into a 500
            return self._error(500, "404: No available peers")
        peer = stored.peers[0]
        return web.json_response(
            {"service_time": 1, "peer_id": peer, "local_peer_id": peer, "metadata": stored.metadata}
        )

    async def _get_data(self, request: web.Request) -> web.StreamResponse:
        bucket, key = sanitize(request.match_info["bucket"]), sanitize(request.match_info["key"])
        stored = self.objects.get((bucket, key))
        if stored is None:
            return self._error(404, "No found available replica peer or data, try again later.")
        if stored.data is None:
            return self._error(404, f"{bucket}@{key} not found")
        data = stored.data
        if self._take("truncate", request.method, request.path) is not None:
            data = data[: len(data) // 2]
        response = web.StreamResponse(status=200, headers={"Content-Type": stored.metadata["content_type"]})
        response.enable_chunked_encoding()
        await response.prepare(request)
        view = memoryview(data)
        for start in range(0, len(view), 1 << 20):
            await response.write(view[start : start + (1 << 20)])
        await response.write_eof()
        return response

    async def _list_chunks(self, request: web.Request) -> web.Response:
        bucket, ball_id = sanitize(request.match_info["bucket"]), sanitize(request.match_info["ball_id"])
        records = [
            s.metadata
            for (b, _), s in self.objects.items()
            if b == bucket and s.metadata["ball_id"] == ball_id
        ]
        if not records:
            return self._error(404, f"{bucket}@{ball_id} not found")
        listed = [record for record in reversed(records) for _ in self.peers]  # duplicates, not index order
        return web.json_response(
            {
                "bucket_id": bucket,
                "ball_id": ball_id,
                "size": f"{sum(r['size'] for r in records)} bytes",
                "size_bytes": sum(r["size"] for r in records),
                "checksum": listed[0]["tags"].get("full_checksum", ""),
                "chunks": listed,
            }
        )

    async def _list_bucket(self, request: web.Request) -> web.Response:
        bucket = sanitize(request.match_info["bucket"])
        records = [s.metadata for (b, _), s in self.objects.items() if b == bucket and s.metadata["size"] > 0]
        return web.json_response(
            {"bucket_id": bucket, "peers_ids": self.peers, "balls": [r for _ in self.peers for r in records]}
        )

    async def _delete_key(self, request: web.Request) -> web.Response:
        bucket, key = sanitize(request.match_info["bucket"]), sanitize(request.match_info["key"])
        stored = self.objects.pop((bucket, key), None)
        if stored is None:
            return self._error(404, f"{bucket}@{key} not found")
        return web.json_response({"n_deletes": len(stored.peers), "key": key})

    async def _delete_ball(self, request: web.Request) -> web.Response:
        bucket, ball_id = sanitize(request.match_info["bucket"]), sanitize(request.match_info["ball_id"])
        doomed = [k for k, s in self.objects.items() if k[0] == bucket and s.metadata["ball_id"] == ball_id]
        removed = sum(len(self.objects.pop(k).peers) for k in doomed)
        return web.json_response({"n_deletes": removed, "ball_id": ball_id})

    async def _peer_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                peer: {
                    "peer_id": peer,
                    "used_disk": 0,
                    "total_disk": 1 << 40,
                    "available_disk": 1 << 40,
                    "disk_uf": 0.0,
                    "balls": [],
                    "peers": [],
                }
                for peer in self.peers
            }
        )

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"openapi": "3.1.0", "info": {"title": "MictlanX Router (fake)", "version": "0.1.0a5"}}
        )


class FakeRouterThread:
    """A :class:`FakeRouter` on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(self, **options: Any) -> None:
        self.router = FakeRouter(**options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-mictlanx", daemon=True)

    def __enter__(self) -> FakeRouter:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.router.start(), self._loop).result(timeout=10)
        return self.router

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.router.stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextlib.contextmanager
def running_fake_router(**options: Any) -> Iterator[FakeRouter]:
    """``with running_fake_router() as router: router.uri`` (thread-backed)."""
    with FakeRouterThread(**options) as router:
        yield router


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake MictlanX router until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()

    async def serve() -> None:
        async with FakeRouter(host=args.host, port=args.port, replicas=args.replicas) as router:
            print(router.uri, flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
