"""The worker service: NATS wiring, lifecycle, health, heartbeats, ADR-32 discovery.

Start: open the store, start the compute pool (its processes warm up in the background), connect,
subscribe (commands with queue groups; health and ``$SRV`` plain), flush, announce ``started``,
start heartbeats. Stop (graceful, SIGTERM/SIGINT): drain the command subscriptions (nothing new
arrives; what already arrived is handled), let in-flight commands finish within
SHUTDOWN_GRACE_PERIOD and answer them (the rest are cancelled and answered 503), announce
``stopped``, drain the connection, stop the pool.

With ``RORY_JOBS_MODE=jetstream`` the durable intake (``worker/runtime/jetstream.py``) also pulls
commands from the RORY_JOBS work queue; core request-reply, health, heartbeats and ``$SRV`` stay on,
sharing the same slots (the dispatcher's, handed to the intake). On stop it pulls nothing more,
gives its jobs the same grace period (the rest are nak'd for another worker) and unsubscribes its
pull inboxes before the connection drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import signal
import time
from importlib import metadata
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from schemas import codec, subjects
from schemas.envelopes import WorkerStatus
from worker.runtime import connection
from worker.runtime.context import Resources, WorkerServices
from worker.runtime.discovery import Discovery
from worker.runtime.dispatch import Dispatcher, Job, Rejected
from worker.runtime.health import RefusedSubscriptions, StorageProbe, nats_status
from worker.runtime.heartbeat import Heartbeater, LoadSampler
from worker.runtime.jetstream import JetStreamIntake
from worker.runtime.pool import ComputePool
from worker.runtime.pool_gate import PoolGate
from worker.runtime.registry import Registry, default_registry
from worker.settings import JobsMode, Settings
from worker.storage.base import ObjectStore
from worker.storage.unavailable import UnavailableStore

log = logging.getLogger("rory.worker")


def package_version() -> str:
    try:
        return metadata.version("rory-worker")
    except metadata.PackageNotFoundError:
        return "0.1.0"


VERSION = package_version()


async def open_default_store(settings: Settings) -> ObjectStore:
    """The configured store behind the read cache; an UnavailableStore if it cannot be opened.

    A local store first sweeps what crashed writers left behind (unreferenced versions older
    than an hour), so a worker that died mid-write does not leak disk space.
    """
    from worker.storage import open_guarded_store
    from worker.storage.cache import with_cache

    try:
        name = f"rory-worker-{settings.node_id}-storage"  # the nats backend's own connection
        store = open_guarded_store(settings, nats_connect=lambda: connection.connect(settings, name=name))
        sweep = getattr(store, "sweep", None)
        if sweep is not None:
            removed = await sweep()
            if removed:
                log.info("storage swept", extra={"removed": removed})
        return with_cache(store, settings.storage_cache_bytes)
    except Exception as error:
        log.error("storage could not be opened", extra={"error": repr(error)})
        return UnavailableStore(f"{type(error).__name__}: {error}")


class WorkerService:
    """One worker instance on NATS.

    ``store``: an object store; None opens the configured one (``worker.storage.open_store``).
    ``connect_options``: extra ``nats.connect`` keyword arguments (tests use a short
    ``reconnect_time_wait``).
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry | None = None,
        *,
        store: ObjectStore | None = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else default_registry()
        self.node_id = settings.node_id
        self.prefix = settings.rory_subject_prefix
        self.instance_id = NUID().next().decode()
        self.version = VERSION
        self._store = store
        self._owns_store = store is None
        self._connect_options = dict(connect_options or {})
        self.pool = ComputePool(settings.worker_capacity, preload=self.registry.preload_modules)
        self.resources = Resources()
        self.nc: Client | None = None
        self.dispatcher: Dispatcher | None = None
        self.discovery: Discovery | None = None
        self._probe: StorageProbe | None = None
        self._heartbeat: Heartbeater | None = None
        self._load = LoadSampler()
        # subjects the server's permissions refused (worker/runtime/health.py): health says degraded
        self.refused = RefusedSubscriptions(interval=settings.heartbeat_interval)
        self._refused_watch: asyncio.Task[None] | None = None
        self._cmd_subs: list[Subscription] = []
        self.pool_gate: PoolGate | None = None  # the pool queue subscription, while a slot is free
        self._intake: JetStreamIntake | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ops = subjects.OpExtractor(self.prefix, self.node_id)
        # <p>.results.<node>.: job ids are validated on intake
        self._results_prefix = subjects.results(self.prefix, self.node_id, "x")[:-1]
        self._started_at = 0.0
        self._stopping = False
        self._stopped = asyncio.Event()
        self._stop_requested: asyncio.Event | None = None
        self._stop_lock = asyncio.Lock()
        self._started = False

    # ================================================================== lifecycle
    async def start(self) -> None:
        """Connect, subscribe, flush and announce ``started``; raises NatsUnavailable / SettingsError."""
        if self._started:
            return
        settings = self.settings
        self._started_at = time.monotonic()
        connection.connect_options(settings)  # credentials/TLS problems fail before anything starts
        if self._store is None:
            self._store = await open_default_store(settings)
        self.pool.start()  # processes warm up while we connect; `started` does not wait for them
        try:
            options = {"on_reconnected": self._on_reconnected, "on_error": self.refused.note}
            options.update(self._connect_options)
            self.nc = await connection.connect(settings, **options)
        except BaseException:
            await self.pool.shutdown()
            await self._close_store()
            raise
        try:
            await self._start_serving()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.nc.close()
            await self.pool.shutdown()
            await self._close_store()
            raise

    async def _start_serving(self) -> None:
        settings = self.settings
        assert self.nc is not None
        self._probe = StorageProbe(self._store)
        operations = [(op.name, op.description, dict(op.metadata)) for op in self.registry]
        self.discovery = Discovery(
            instance_id=self.instance_id,
            version=self.version,
            prefix=self.prefix,
            node_id=self.node_id,
            operations=operations,
            health_data=self._health_data,
        )
        self.dispatcher = Dispatcher(
            services=WorkerServices(settings, self._store, self.pool, self.resources),
            registry=self.registry,
            discovery=self.discovery,
            instance_id=self.instance_id,
        )
        nc = self.nc
        self._cmd_subs = [
            await nc.subscribe(
                subjects.node_cmd_all(self.prefix, self.node_id),
                queue=subjects.node_queue(self.prefix, self.node_id),
                cb=self._on_command,
            ),
        ]
        # The pool subscription follows the slots: withdrawn while full, so the queue group offers
        # pool commands only to workers that can start them (worker/runtime/pool_gate.py).
        self.pool_gate = PoolGate(
            nc,
            subjects.pool_cmd_all(self.prefix),
            subjects.pool_queue(self.prefix),
            self._on_command,
            self.dispatcher.slots,
            accepting=lambda: self.dispatcher is not None and self.dispatcher.accepting,
        )
        await self.pool_gate.open()
        await nc.subscribe(subjects.health(self.prefix, self.node_id), cb=self._on_health)
        srv_handlers = {"PING": self._on_ping, "INFO": self._on_info, "STATS": self._on_stats}
        for verb, handler in srv_handlers.items():
            for extra in ((), (subjects.SERVICE_NAME,), (subjects.SERVICE_NAME, self.instance_id)):
                await nc.subscribe(subjects.srv(verb, *extra), cb=handler)
        if settings.rory_jobs_mode is JobsMode.JETSTREAM:
            self._intake = JetStreamIntake(
                nc=nc, settings=settings, dispatcher=self.dispatcher, slots=self.dispatcher.slots
            )
            await self._intake.start()
        await nc.flush()
        await self._announce("started")
        self._heartbeat = Heartbeater(
            settings.heartbeat_interval,
            self._heartbeat_payload,
            lambda data: nc.publish(subjects.heartbeat(self.prefix, self.node_id), data, headers=_MSGPACK),
            lambda: nc.is_connected,
        )
        self._heartbeat.start()
        self._refused_watch = asyncio.get_running_loop().create_task(self.refused.watch(nc))
        self._started = True
        log.info(
            "worker started",
            extra={
                "node_id": self.node_id,
                "instance_id": self.instance_id,
                "capacity": settings.worker_capacity,
                "operations": self.registry.names(),
                "subjects": [sub.subject for sub in self._cmd_subs] + [subjects.pool_cmd_all(self.prefix)],
                "jobs": self._intake.subjects if self._intake is not None else [],
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop (idempotent): finish in-flight commands within ``grace`` seconds, then leave."""
        async with self._stop_lock:
            if self._stopped.is_set() or not self._started:
                if not self._started:
                    await self.pool.shutdown()
                return
            grace = self.settings.shutdown_grace_period if grace is None else grace
            self._stopping = True
            log.info("worker stopping", extra={"inflight": len(self._tasks), "grace_s": grace})
            nc = self.nc
            assert nc is not None and self.dispatcher is not None
            # 1. no new commands: UNSUB, then handle what had already arrived
            for sub in self._cmd_subs:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sub.drain(), timeout=5)
            if self.pool_gate is not None:
                await self.pool_gate.close()
            intake = self._intake
            if intake is not None:
                intake.stop_pulling()
            self.dispatcher.accepting = False
            # 2. let in-flight commands finish, cancel (and answer) the rest; durable jobs that
            # cannot finish are handed back to the stream (nak) for another worker
            await asyncio.gather(
                self._finish_core(grace), intake.finish(grace) if intake is not None else asyncio.sleep(0)
            )
            # 3. leave
            if self._heartbeat is not None:
                await self._heartbeat.stop()
            self._load.close()
            if self._refused_watch is not None:
                self._refused_watch.cancel()
            with contextlib.suppress(Exception):
                await self._announce("stopped")
            if intake is not None:
                await intake.close()  # pull inboxes go before the drain (docs/original-rory.md: drain hang)
            await self._close_connection(nc)
            await self.pool.shutdown()
            if self._probe is not None:
                await self._probe.aclose()
            await self._close_store()
            self._stopped.set()
            log.info("worker stopped", extra={"node_id": self.node_id, "instance_id": self.instance_id})

    async def _finish_core(self, grace: float) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("grace period over; cancelling commands", extra={"cancelled": len(pending)})
                await asyncio.wait(pending, timeout=5)

    async def _on_reconnected(self) -> None:
        if self._intake is not None:
            await self._intake.on_reconnected()

    async def _close_store(self) -> None:
        if not self._owns_store:
            return
        with contextlib.suppress(Exception):
            closing = getattr(self._store, "aclose", None)
            if closing is not None:
                result = closing()
                if inspect.isawaitable(result):
                    await result

    async def _close_connection(self, nc: Client) -> None:
        # Only plain subscriptions remain (the intake unsubscribed its pull inboxes), so drain cannot
        # hit the pull-subscription hang; it is still bounded, and close() is the fallback.
        try:
            if nc.is_connected:
                await asyncio.wait_for(nc.drain(), connection.DRAIN_TIMEOUT + 1)
        except Exception as error:
            log.warning("drain failed; closing", extra={"error": repr(error)})
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    def request_stop(self) -> None:
        """Ask :meth:`run_until_stopped` to stop gracefully (signal-handler safe)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def run_until_stopped(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or :meth:`request_stop`), then stop gracefully.

        A second signal during the grace period stops at once (in-flight commands are answered 503).
        """
        self._stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        force = asyncio.Event()

        def on_signal(signum: int) -> None:
            if self._stop_requested is not None and self._stop_requested.is_set():
                log.warning("second signal: stopping now", extra={"signal": signum})
                force.set()
                for task in list(self._tasks):
                    task.cancel()
                if self._intake is not None:
                    self._intake.cancel_jobs()
            else:
                log.info("signal received; stopping gracefully", extra={"signal": signum})
                self.request_stop()

        installed = []
        for sig in signals:
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            await self.start()
            gc.freeze()  # start-up objects leave the collector's generations: cheaper collections per message
            await self._stop_requested.wait()
            await self.stop()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> WorkerService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ================================================================== state
    @property
    def inflight(self) -> int:
        return self.dispatcher.inflight if self.dispatcher else 0

    @property
    def store(self) -> Any:
        return self._store

    def status(self) -> WorkerStatus:
        if self._stopping:
            return WorkerStatus.DRAINING
        if (self._probe is not None and self._probe.reachable is False) or not self.pool.healthy():
            return WorkerStatus.DEGRADED
        if self.refused.subjects:  # some subscription receives nothing: not fully serving
            return WorkerStatus.DEGRADED
        if self.inflight >= self.settings.worker_capacity:
            return WorkerStatus.BUSY
        return WorkerStatus.READY

    def _health_data(self) -> dict[str, Any]:
        return {
            "status": str(self.status()),
            "capacity": self.settings.worker_capacity,
            "pool_busy": self.pool.busy,
            "pool_restarts": self.pool.restarts,
            "pool_kills": self.pool.kills,
            "jobs_mode": str(self.settings.rory_jobs_mode),
            **({"jetstream": self._intake.stats()} if self._intake is not None else {}),
        }

    def _refused_report(self) -> dict[str, list[str]]:
        """``refused_subscriptions`` for health and heartbeats, only while any is refused."""
        refused = self.refused.subjects
        return {"refused_subscriptions": refused} if refused else {}

    def _common(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "instance_id": self.instance_id}

    # ================================================================== commands
    async def _on_command(self, msg: Msg) -> None:
        received = time.perf_counter()
        dispatcher = self.dispatcher
        assert dispatcher is not None
        op = self._ops.op(msg.subject)
        try:
            job = dispatcher.prepare(msg.data, msg.headers, op, received)
        except Rejected as rejected:
            await self._send(msg.reply, rejected.reply, rejected.json_mode)
            return
        task = asyncio.get_running_loop().create_task(self._serve(job, msg.reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, job: Job, reply_to: str) -> None:
        assert self.dispatcher is not None
        reply = await self.dispatcher.run(job)
        await self._send(reply_to, reply, job.json_mode)

    async def _send(self, reply_to: str, reply: dict[str, Any], json_mode: bool) -> None:
        """Publish a Reply to the requester (its encoding) and to ``<p>.results.<node>.<job_id>``
        (msgpack)."""
        nc = self.nc
        assert nc is not None and self.dispatcher is not None
        max_payload = nc.max_payload or self.settings.max_message_bytes
        try:
            # ``final`` is what the requester gets (a 500 if its encoding could not hold the result):
            # the results copy must say the same, even though msgpack could have held the original.
            final, data, headers = self.dispatcher.finalize(reply, json_mode, max_payload)
            job_id = final.get("job_id")
            if reply_to:
                await nc.publish(reply_to, data, headers=headers)
            if job_id:  # same flush as the reply: one write, one syscall
                if json_mode:
                    data, headers = self.dispatcher.encode(final, False, max_payload)
                await nc.publish(self._results_prefix + job_id, data, headers=headers)
        except Exception as error:  # a publish failure must never kill the subscription
            log.error("reply not sent", extra={"error": repr(error), "job_id": reply.get("job_id")})

    # ================================================================== health
    async def health_body(self) -> dict[str, Any]:
        assert self._probe is not None and self.nc is not None
        reachable = await self._probe.check()
        return {
            "component_type": "worker",
            **self._common(),
            "status": str(self.status()),
            "version": self.version,
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "inflight": self.inflight,
            "capacity": self.settings.worker_capacity,
            "operations": self.registry.names(),
            "storage": {**self._probe.report(), "reachable": reachable},
            "nats": await nats_status(self.nc),
            **self._refused_report(),
        }

    async def _on_health(self, msg: Msg) -> None:
        started = time.perf_counter()
        assert self.discovery is not None
        error = None
        msgpack_mode = codec.wants_msgpack(msg.headers)
        try:
            body = await self.health_body()
        except Exception as exc:
            # Still answer: a requester that times out cannot tell a broken probe from a dead worker.
            error = f"500 INTERNAL: {exc!r}"
            log.exception("health request failed")
            body = {"component_type": "worker", **self._common(), "status": "degraded", "error": error}
        try:
            data = codec.encode(body, json_mode=not msgpack_mode)
            headers = {codec.CONTENT_TYPE: codec.content_type(not msgpack_mode)}
            if msg.reply and self.nc is not None:
                await self.nc.publish(msg.reply, data, headers=headers)
        except Exception as exc:
            error = f"500 INTERNAL: {exc!r}"
            log.exception("health reply failed")
        self.discovery.health.record(time.perf_counter() - started, error)

    # ================================================================== heartbeats, announcements
    async def _heartbeat_payload(self, seq: int) -> bytes:
        # psutil reads /proc for every process: off the event loop, so health keeps its milliseconds.
        load = await self._load.sample_off_loop(self.pool.pids())
        return codec.encode_msgpack(
            {
                **self._common(),
                "seq": seq,
                "ts": time.time(),
                "status": str(self.status()),
                "inflight": self.inflight,
                "capacity": self.settings.worker_capacity,
                "version": self.version,
                "operations": self.registry.names(),
                "load": load,
                **({"storage": self._probe.report()} if self._probe is not None else {}),
                **self._refused_report(),
            }
        )

    async def _announce(self, event: str) -> None:
        assert self.nc is not None
        subject = (subjects.started if event == "started" else subjects.stopped)(self.prefix, self.node_id)
        body = {
            **self._common(),
            "event": event,
            "ts": time.time(),
            "version": self.version,
            "operations": self.registry.names(),
            "capacity": self.settings.worker_capacity,
        }
        await self.nc.publish(subject, codec.encode_msgpack(body), headers=_MSGPACK)
        await self.nc.flush(timeout=2)

    # ================================================================== $SRV
    async def _on_ping(self, msg: Msg) -> None:
        assert self.discovery is not None
        await self._srv_respond(msg, self.discovery.ping())

    async def _on_info(self, msg: Msg) -> None:
        assert self.discovery is not None
        await self._srv_respond(msg, self.discovery.info())

    async def _on_stats(self, msg: Msg) -> None:
        assert self.discovery is not None
        await self._srv_respond(msg, self.discovery.stats())

    async def _srv_respond(self, msg: Msg, data: bytes) -> None:
        if msg.reply and self.nc is not None:
            try:
                await self.nc.publish(msg.reply, data, headers=_JSON)
            except Exception as error:
                log.warning("$SRV reply not sent", extra={"error": repr(error)})


_MSGPACK = {codec.CONTENT_TYPE: codec.MSGPACK}
_JSON = {codec.CONTENT_TYPE: codec.JSON}

__all__ = ["VERSION", "UnavailableStore", "WorkerService", "open_default_store"]
