"""The durable intake of one worker instance: deliveries in, Replies and acks out.

Flow of one message (worker/runtime/jetstream.py has the whole
story; docs/reliability.md the guarantees):

1. **Pulled** by a lane (worker/runtime/jetstream_pull.py) on a slot reserved for it; :meth:`accept`
   admits it through :meth:`Dispatcher.prepare` (same validation as core commands).
2. **Answered already?** The results record is looked up first: a redelivery (an ack lost in a crash,
   a Manager re-publishing after the duplicate window) is answered from it without recomputing, if
   the record is this command's (``op``, ``in_reply_to``, ``job_id`` and, for a node's command, its
   ``node_id`` match). A second delivery of a command this worker is running joins the running one.
3. **Run** through :meth:`Dispatcher.run`, with ``in_progress`` every third of the ack wait so a
   long job is not redelivered.
4. **Settle:** :func:`~worker.runtime.jetstream_settle.settle` decides per delivery (ack, nak with
   back-off, term, dead-letter, hand back); :meth:`JetStreamIntake._carry_out` does the I/O. On
   success, and on a terminal failure of the run (4xx), the record is created first (the first run
   to finish wins; a later duplicate answers with the recorded Reply, error or not).

Every answer counts on its endpoint in ``$SRV.STATS`` (worker/runtime/discovery.py): a run through
:meth:`Dispatcher.run`, a refusal through :meth:`Dispatcher.reject`, an answer from a record here,
and an outcome that turned into an error after its run was counted (the record not written).

Stop: no new pulls; messages still arriving for the outstanding request are handed back; in-flight
jobs get the grace period, the rest are cancelled and handed back. A hand-back while our own pull is
still open waits until it expires (:meth:`JetStreamIntake.handback_delay`), else the server would
bounce the message straight back into it and burn a delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from schemas import codec, subjects
from worker.errors import Busy, Conflict, RoryError
from worker.runtime.dispatch import (
    ERROR_CODE_HEADER,
    Dispatcher,
    Rejected,
    error_headers,
    error_info,
)
from worker.runtime.jetstream_deadletter import DeadLetterMover, MaxDeliveries, copy_to_dlq
from worker.runtime.jetstream_deliveries import (
    ACK_TIMEOUT,
    Answer,
    Delivery,
    Running,
    Signals,
    delivery_of,
    describe_error,
    failed_reply,
    reply_error,
)
from worker.runtime.jetstream_pull import PULL_EXPIRES, PULL_MARGIN, Lanes
from worker.runtime.jetstream_records import ResultRecords
from worker.runtime.jetstream_settle import (
    NAK_MAX_DELAY,
    Ack,
    DeadLetter,
    Decision,
    HandBack,
    Nak,
    Term,
    settle,
    spent,
    terminal,
)
from worker.runtime.jetstream_topology import (
    ConsumerLimits,
    ConsumerSpec,
    Topology,
    ensure_consumer,
    ensure_topology,
)
from worker.runtime.slots import Slots
from worker.settings import Settings

log = logging.getLogger("rory.worker.jetstream")


class JetStreamIntake:
    """The durable intake of one worker instance; see the module docstring.

    ``slots``: the dispatcher's capacity (worker/runtime/slots.py), shared with the core intake.
    """

    def __init__(
        self,
        *,
        nc: Client,
        settings: Settings,
        dispatcher: Dispatcher,
        slots: Slots,
        nak_cap: float = NAK_MAX_DELAY,
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.dispatcher = dispatcher
        self.slots = slots
        self.topology = Topology.from_settings(settings)
        self.prefix = settings.rory_subject_prefix
        self.node_id = settings.node_id
        self.nak_cap = nak_cap
        self.js: JetStreamContext = nc.jetstream(timeout=5.0)
        self.kv: KeyValue | None = None
        self._records: ResultRecords | None = None
        self.limits: dict[str, ConsumerLimits] = {}
        self.lanes = Lanes(nc=nc, slots=slots, stream=self.topology.stream, owner=self)
        self.stopping = False
        self._stop = asyncio.Event()
        self._mover: DeadLetterMover | None = None
        self._running: dict[str, Running] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._aux: set[asyncio.Task[None]] = set()
        self._results_prefix = subjects.results(self.prefix, self.node_id, "x")[:-1]
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "received",
                "acked",
                "naked",
                "termed",
                "dead_lettered",
                "answered_from_record",
                "joined_running",
                "id_collisions",
                "lost_record_race",
                "rejected",
                "in_progress",
            ),
            0,
        )
        self.signals = Signals(self.counters)  # ack / nak / term / in_progress, counted here

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Ensure or verify the topology, subscribe the advisories, start pulling."""
        self.limits, self.kv = await ensure_topology(self.js, self.topology, self.settings)
        self._records = ResultRecords(self.kv, prefix=self.prefix, node_id=self.node_id)
        stream = self.topology.stream
        if self.settings.jetstream_ensure:
            # Moving an abandoned command needs stream-wide message access, which only an identity
            # that administers JetStream has (JETSTREAM_ENSURE=true); with a node's own credentials
            # (JETSTREAM_ENSURE=false) an operator/Manager runs the DeadLetterMover instead.
            self._mover = DeadLetterMover(
                self.nc,
                prefix=self.prefix,
                stream=stream,
                dlq_stream=self.topology.dlq_stream,
                node_id=self.node_id,
                consumers=[spec.name for spec in self.topology.consumers],
                max_message_bytes=self.settings.max_message_bytes,
                reply=self._mover_reply,
            )
            await self._mover.start()
        await self.lanes.start(self.topology.consumers)
        log.info(
            "durable intake started",
            extra={
                "stream": stream,
                "consumers": {name: vars(limits) for name, limits in self.limits.items()},
                "bucket": self.topology.bucket,
                "dlq": self.topology.dlq_stream,
            },
        )

    @property
    def subjects(self) -> list[str]:
        return [spec.filter_subject for spec in self.topology.consumers]

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        return set(self._jobs)

    def stop_pulling(self) -> None:
        """No new pull requests; messages of the outstanding ones are nak'd for other workers."""
        self.stopping = True
        self._stop.set()
        self.slots.close()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake up when the intake stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def cancel_jobs(self) -> None:
        for task in list(self._jobs):
            task.cancel()

    async def finish(self, grace: float) -> None:
        """Let in-flight jobs finish within ``grace`` s; cancel (and nak) the rest; stop the pullers."""
        self.stop_pulling()
        if self._jobs:
            _, pending = await asyncio.wait(set(self._jobs), timeout=grace)
            if pending:
                log.warning("grace period over; handing jobs back", extra={"jobs": len(pending)})
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5)
        tasks = self.lanes.tasks
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=PULL_EXPIRES + PULL_MARGIN + 0.5)
            for task in pending:
                task.cancel()
        if self._aux:
            await asyncio.wait(set(self._aux), timeout=ACK_TIMEOUT + 1)

    async def close(self) -> None:
        """Unsubscribe the pull inboxes and advisories (call before draining the connection)."""
        await self.lanes.unsubscribe()
        if self._mover is not None:
            await self._mover.close()

    async def on_reconnected(self) -> None:
        """After a reconnect the server may have forgotten our pull requests: issue new ones now."""
        self.lanes.abandon()

    def stats(self) -> dict[str, Any]:
        return {
            "stream": self.topology.stream,
            "consumers": [spec.name for spec in self.topology.consumers],
            "reserved": self.slots.reserved,
            **self.counters,
        }

    @property
    def records(self) -> ResultRecords:
        assert self._records is not None, "start() first"
        return self._records

    # ------------------------------------------------------------------ consumer health
    async def check_consumer(self, spec: ConsumerSpec) -> None:
        """Recreate a consumer someone deleted (ensure), or say loudly that it is gone."""
        if not self.nc.is_connected:
            return
        try:
            await self.js.consumer_info(self.topology.stream, spec.name)
        except nats.js.errors.NotFoundError:
            if self.settings.jetstream_ensure:
                log.warning("consumer is gone; recreating it", extra={"consumer": spec.name})
                with contextlib.suppress(Exception):
                    self.limits[spec.name] = await ensure_consumer(
                        self.js, self.topology.stream, spec, self.settings
                    )
            else:
                log.error("consumer is gone and JETSTREAM_ENSURE=false", extra={"consumer": spec.name})
        except Exception as error:
            log.warning("consumer check failed", extra={"consumer": spec.name, "error": repr(error)})

    # ------------------------------------------------------------------ intake
    def _spawn(self, coro: Any, *, job: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks = self._jobs if job else self._aux
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def handback_delay(self) -> float:
        """Delay for handing a message back: 0, or while stopping, until our open pulls have ended.

        A message nak'd without delay is redelivered to any waiting pull request, including one this
        stopping worker still has open, which would only hand it back again and burn a delivery.
        """
        if not self.stopping:
            return 0.0
        now = asyncio.get_running_loop().time()
        until = self.lanes.open_until()
        return until - now + 0.1 if until > now else 0.0

    def nak_now(self, msg: Msg) -> None:
        """Hand a message back for another worker (no slot for it, or stopping)."""
        self._spawn(self.signals.nak(msg, self.handback_delay()))

    def accept(self, msg: Msg, spec: ConsumerSpec) -> None:
        """Take a delivered message on the slot reserved for it (synchronous: called per message).

        The reserved slot becomes the job's (``prepare(reserved=True)``), or is given back.
        """
        received = time.perf_counter()
        self.counters["received"] += 1
        try:
            delivery = delivery_of(msg)
        except Exception:  # not a JetStream delivery: nothing to ack, nothing to answer
            log.warning("ignoring a non-JetStream message on a pull inbox", extra={"subject": msg.subject})
            self.slots.unreserve()
            return
        if self.stopping:
            self.slots.unreserve()
            self.nak_now(msg)
            return
        subject = msg.subject
        op = subject[len(spec.op_prefix) :] if subject.startswith(spec.op_prefix) else ""
        try:
            job = self.dispatcher.prepare(msg.data, msg.headers, op, received, reserved=True)
        except Rejected as rejected:
            self.slots.unreserve()
            self.counters["rejected"] += 1
            self._spawn(self._on_rejected(delivery, spec, rejected))
            return
        command_id = job.command.id
        running = self._running.get(command_id)
        if running is not None and not running.closing and not running.same_command(job, spec):
            # A different command reusing a running id: never join it to the other's run (it would be
            # answered with the other's result). It is answered 409 at once and not recorded, so the
            # running command's record is left to that command.
            self.dispatcher.release(job)
            self.counters["id_collisions"] += 1
            conflict = Conflict(f"command id {command_id!r} is in use by another running command")
            self._spawn(self._fail(Running(job, spec, {delivery.stream_seq: delivery}), conflict))
            return
        if running is not None and not running.closing:
            self.dispatcher.release(job)  # the running one answers for both deliveries
            running.attach(delivery)
            self.counters["joined_running"] += 1
            self._spawn(self.signals.progress(msg))
            return
        state = Running(job, spec, {delivery.stream_seq: delivery})
        self._running[command_id] = state
        self._spawn(self._serve(state), job=True)

    # ------------------------------------------------------------------ serving
    async def _serve(self, state: Running) -> None:
        job = state.job
        command = job.command
        key = self.records.key(state.spec.source, command.id)
        keep_alive = asyncio.get_running_loop().create_task(self._keep_alive(state))
        holding = True  # the admitted job's slot, until run() or release() gives it back
        try:
            try:
                stored = await self.records.lookup(key)
            except Exception as error:
                log.warning("result record lookup failed; retrying later", extra={"error": repr(error)})
                self.dispatcher.release(job)
                holding = False
                await self._fail(state, Busy(f"result records unavailable: {error}"))
                return
            if stored is not None:
                self.dispatcher.release(job)
                holding = False
                await self._answer_from_record(state, stored)
                return
            limits = self.limits[state.spec.name]
            if spent(max(d.deliveries for d in state.deliveries.values()), limits):
                self.dispatcher.release(job)  # every run so far died with its worker: do not run it again
                holding = False
                await self._fail(
                    state,
                    MaxDeliveries(
                        f"run {limits.runs} times without an answer (workers stopped or crashed while "
                        "running it)"
                    ),
                )
                return
            holding = False  # run() frees the slot when it returns, whatever happens
            reply = await self.dispatcher.run(job)
            await self._settle(state, reply)
        except asyncio.CancelledError:
            if holding:
                self.dispatcher.release(job)
            state.closing = True
            await asyncio.shield(self.signals.nak_all(state.deliveries.values(), self.handback_delay()))
            raise
        finally:
            keep_alive.cancel()
            if self._running.get(command.id) is state:
                del self._running[command.id]

    async def _keep_alive(self, state: Running) -> None:
        """``in_progress`` every third of the ack wait while the command is being served."""
        interval = max(0.05, self.limits[state.spec.name].ack_wait / 3.0)
        while True:
            await asyncio.sleep(interval)
            for delivery in list(state.deliveries.values()):
                await self.signals.progress(delivery.msg)

    async def _answer_from_record(self, state: Running, data: bytes) -> None:
        command = state.job.command
        mismatch = self.records.mismatch(command, state.spec.source, data)
        if mismatch is not None:
            log.warning(
                "the result record does not match the command; not answering from it",
                extra={"id": command.id, "job_id": command.job_id, "field": mismatch},
            )
            conflict = Conflict(
                f"command id {command.id!r} was already used for another command; use a new id"
            )
            await self._fail(state, conflict)
            return
        self.counters["answered_from_record"] += 1
        log.info("answered from the result record", extra={"id": command.id, "job_id": command.job_id})
        error, headers = self._recorded_outcome(data)
        job = state.job
        job.endpoint.record(time.perf_counter() - job.received, describe_error(error))
        await self._carry_out(state, error, (command.job_id or command.id, data, headers))

    def _recorded_outcome(self, data: bytes) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """The error info (None: success) and the headers of a recorded Reply, as its first answer had
        them (ADR-32 error headers on an error), so a recorded failure is answered and settled (term)
        like the failure it records."""
        headers = {codec.CONTENT_TYPE: codec.MSGPACK}
        stored = self.records.decode(data)
        if stored is None or stored.get("ok") or not isinstance(stored.get("error"), dict):
            return None, headers
        headers.update(error_headers(stored))
        return stored["error"], headers

    async def _settle(self, state: Running, reply: dict[str, Any]) -> None:
        """Settle a run's Reply. A final outcome (success, or a terminal 4xx failure) is recorded
        first (the first run to finish wins), so a later delivery of the same command is answered
        from the record instead of running again; a retryable failure (5xx) is not recorded."""
        job = state.job
        command = job.command
        job_id = command.job_id or command.id
        data, headers = self._encode(reply)
        error = reply_error(reply, headers) if ERROR_CODE_HEADER in headers else None
        if error is not None and not terminal(error):
            await self._carry_out(state, error, (job_id, data, headers), self.stopping)
            return
        try:
            earlier = await self.records.create(self.records.key(state.spec.source, command.id), data)
        except Exception as exc:
            if error is not None:  # final anyway: a copy published again would run and fail again
                log.warning("error record not stored; answering without it", extra={"error": repr(exc)})
                await self._carry_out(state, error, (job_id, data, headers))
                return
            log.warning("result record not stored; the command will run again", extra={"error": repr(exc)})
            busy = Busy(f"the result could not be recorded: {exc}")
            job.endpoint.count_error(f"{busy.code} {busy.type}: {busy.message}")  # the run counted a success
            failure = error_info(busy)
            failed, failed_headers = self._encode(failed_reply(reply, failure))
            await self._carry_out(state, failure, (job_id, failed, failed_headers))
            return
        if earlier is not None:  # another run recorded first: answer with its result
            self.counters["lost_record_race"] += 1
            if self.records.mismatch(command, state.spec.source, earlier) is None:
                recorded_error, headers = self._recorded_outcome(earlier)
                if recorded_error is not None and error is None:  # the run counted a success
                    job.endpoint.count_error(describe_error(recorded_error) or "")
                data, error = earlier, recorded_error
            else:  # not this command's record: never answer with it; our own result stands
                log.warning(
                    "the existing result record is not this command's; answering with our own result",
                    extra={"id": command.id, "job_id": job_id},
                )
        await self._carry_out(state, error, (job_id, data, headers))

    async def _fail(self, state: Running, error: RoryError) -> None:
        """Settle a command that was not run (or whose record failed) with ``error`` and its Reply."""
        command = state.job.command
        reply = self.dispatcher.reject(
            error,
            op=command.op,
            received=state.job.received,
            data={"id": command.id, "job_id": command.job_id},
        )
        data, headers = self._encode(reply)
        await self._carry_out(state, error_info(error), (command.job_id or command.id, data, headers))

    async def _carry_out(
        self, state: Running, error: Mapping[str, Any] | None, answer: Answer, stopping: bool = False
    ) -> None:
        """Settle every delivery of ``state`` (:func:`settle`), then do the I/O it decided."""
        state.closing = True  # from here on a new delivery starts afresh instead of joining
        limits = self.limits[state.spec.name]
        plan = [
            (delivery, settle(error, delivery.deliveries, limits, stopping=stopping, cap=self.nak_cap))
            for delivery in list(state.deliveries.values())
        ]
        await self._perform(plan, state.spec, error, answer)

    async def _on_rejected(self, delivery: Delivery, spec: ConsumerSpec, rejected: Rejected) -> None:
        error = rejected.error
        data, headers = self._encode(rejected.reply)
        job_id = rejected.reply.get("job_id") or ""
        info = error_info(error)
        decision = settle(
            info,
            delivery.deliveries,
            self.limits[spec.name],
            # prepare(reserved=True) does no capacity check: its BUSY means the worker is stopping
            stopping=self.stopping or isinstance(error, Busy),
            answerable=bool(job_id),
            cap=self.nak_cap,
        )
        await self._perform([(delivery, decision)], spec, info, (job_id, data, headers))

    async def _perform(
        self,
        plan: list[tuple[Delivery, Decision]],
        spec: ConsumerSpec,
        error: Mapping[str, Any] | None,
        answer: Answer,
    ) -> None:
        """Do what :func:`settle` decided, in this order: naks and hand-backs, DLQ copies, the Reply
        (once), acks and terms. The Reply goes before the ack so that a lost ack is answered again
        from the record, never left unanswered (docs/reliability.md)."""
        handback = self.handback_delay() if any(isinstance(d, HandBack) for _, d in plan) else 0.0
        for delivery, decision in plan:
            if isinstance(decision, Nak):
                await self.signals.nak(delivery.msg, decision.delay)
            elif isinstance(decision, HandBack):
                await self.signals.nak(delivery.msg, handback)
        moved: list[Delivery] = []
        answered = False
        for delivery, decision in plan:
            if isinstance(decision, DeadLetter):
                assert error is not None
                if await self._dead_letter(delivery, spec, error):
                    moved.append(delivery)
                    answered = answered or decision.answer
                else:
                    await self.signals.nak(delivery.msg, decision.fallback)
            elif isinstance(decision, Ack | Term):
                answered = True
        if answered:
            await self._publish_result(*answer)
        for delivery, decision in plan:
            if isinstance(decision, Ack):
                await self.signals.ack(delivery)
            elif isinstance(decision, Term) or any(delivery is done for done in moved):
                await self.signals.term(delivery.msg)

    # ------------------------------------------------------------------ dead letters
    async def _dead_letter(self, delivery: Delivery, spec: ConsumerSpec, error: Mapping[str, Any]) -> bool:
        """Copy the command this worker holds to the DLQ; True once the DLQ has it."""
        stored = await copy_to_dlq(
            self.js,
            delivery.msg,
            prefix=self.prefix,
            stream=self.topology.stream,
            dlq_stream=self.topology.dlq_stream,
            stream_seq=delivery.stream_seq,
            deliveries=delivery.deliveries,
            spec=spec,
            node=self.node_id,
            error=error,
        )
        if stored:
            self.counters["dead_lettered"] += 1
        return stored

    def _mover_reply(self, error: RoryError, op: str, decoded: Any) -> dict[str, Any]:
        """The error Reply of a command the mover dead-lettered (counted here and on its endpoint)."""
        self.counters["dead_lettered"] += 1
        return self.dispatcher.reject(error, op=op, received=time.perf_counter(), data=decoded)

    # ------------------------------------------------------------------ outputs
    def _encode(self, reply: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        max_payload = self.nc.max_payload or self.settings.max_message_bytes
        return self.dispatcher.encode(reply, False, max_payload)

    async def _publish_result(self, job_id: str, data: bytes, headers: dict[str, str]) -> None:
        if not job_id:
            return
        try:
            await self.nc.publish(self._results_prefix + job_id, data, headers=headers)
        except Exception as error:
            log.error("result not published", extra={"job_id": job_id, "error": repr(error)})


__all__ = ["JetStreamIntake"]
