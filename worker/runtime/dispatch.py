"""From raw message to Reply: decode, validate, admit, run the handler, time it, count it.

Split in two so both intakes (core request-reply and the JetStream pull intake) share it:

* :meth:`Dispatcher.prepare` runs inside the subscription callback and is cheap and synchronous:
  bounded decode, envelope fast path, op checks, params validation, capacity check. Bad input and
  "busy" are answered from here without ever taking a slot; at capacity the answer is 503 BUSY at
  once (nothing queues behind a full worker). Capacity is counted by the dispatcher's
  :class:`~worker.runtime.slots.Slots` (worker/runtime/slots.py), which the JetStream intake
  (worker/runtime/jetstream.py) is given too: it reserves slots before it pulls, a message it pulled is
  admitted on its reservation, and a core command may take back a reservation that is still idle.
* :meth:`Dispatcher.run` runs the admitted job in its own task, under the command's deadline, and
  always returns a Reply map: handlers cannot crash the worker.

Replies are built as plain dicts with exactly the fields of ``schemas.envelopes.Reply`` (a test
validates them against the model) to keep pydantic off the per-message path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from schemas import codec
from schemas.envelopes import PROTOCOL_VERSION, Command, parse_command
from schemas.subjects import is_valid_job_id
from worker.errors import (
    BadRequest,
    Busy,
    DeadlineExceeded,
    Internal,
    RoryError,
    UnknownOperation,
    classify,
)
from worker.runtime.context import JobContext, WorkerServices
from worker.runtime.discovery import Discovery, EndpointStats
from worker.runtime.registry import Operation, Registry
from worker.runtime.replays import RecentReplies
from worker.runtime.slots import Slots
from worker.storage.breaker import storage_deadline

log = logging.getLogger("rory.worker.dispatch")

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
MAX_ERROR_HEADER = 512
MAX_OP_ECHO = 128


@dataclass(slots=True)
class Job:
    """An admitted command: it holds one unit of capacity until :meth:`Dispatcher.run` returns."""

    command: Command
    operation: Operation
    params: BaseModel
    json_mode: bool
    received: float  # perf_counter at receipt
    deadline: float | None  # event-loop time, None = no deadline
    endpoint: EndpointStats


class Rejected(Exception):
    """``prepare`` refused a message; ``reply`` is the error Reply to send."""

    def __init__(self, reply: dict[str, Any], json_mode: bool, error: RoryError) -> None:
        super().__init__(error.message)
        self.reply = reply
        self.json_mode = json_mode
        self.error = error


def error_headers(reply: Mapping[str, Any]) -> dict[str, str]:
    """ADR-32 error headers for an error Reply (single line, bounded)."""
    error = reply["error"]
    text = " ".join(str(error["message"]).split())[:MAX_ERROR_HEADER] or error["type"]
    return {ERROR_HEADER: text, ERROR_CODE_HEADER: str(error["code"])}


def error_info(error: RoryError) -> dict[str, Any]:
    return {"code": error.code, "type": error.type, "message": error.message, "retryable": error.retryable}


class Dispatcher:
    """Turns command messages into Replies for one worker instance."""

    def __init__(
        self,
        *,
        services: WorkerServices,
        registry: Registry,
        discovery: Discovery,
        instance_id: str,
    ) -> None:
        settings = services.settings
        self.services = services
        self.registry = registry
        self.discovery = discovery
        self.node_id = settings.node_id
        self.capacity = settings.worker_capacity
        self.max_bytes = settings.max_message_bytes
        self.slots = Slots(self.capacity)  # handed to the JetStream intake as well
        self.accepting = True
        self.replies = RecentReplies()
        self._ids = itertools.count(1)
        self._id_prefix = f"{instance_id}-"

    # ------------------------------------------------------------------ replies
    def new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def _reply(
        self,
        *,
        in_reply_to: str,
        job_id: str,
        op: str,
        result: dict[str, Any] | None,
        error: RoryError | None,
        timings: dict[str, float],
    ) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "id": self.new_id(),
            "in_reply_to": in_reply_to,
            "job_id": job_id,
            "op": op[:MAX_OP_ECHO],
            "node_id": self.node_id,
            "ok": error is None,
        }
        if error is None:
            reply["result"] = result if result is not None else {}
        else:
            reply["error"] = error_info(error)
        reply["timings"] = timings
        return reply

    def reject(
        self,
        error: RoryError,
        *,
        op: str,
        received: float,
        data: Any = None,
        endpoint: EndpointStats | None = None,
    ) -> dict[str, Any]:
        """An error Reply for a message that was never run; counts it on its endpoint."""
        in_reply_to = job_id = ""
        if type(data) is dict:  # echo whatever identifiers were readable and valid
            ident, job = data.get("id"), data.get("job_id")
            in_reply_to = ident if type(ident) is str and _valid_id(ident) else ""
            if job is None:
                job = in_reply_to
            job_id = job if type(job) is str and _valid_id(job) else ""
        total = time.perf_counter() - received
        reply = self._reply(
            in_reply_to=in_reply_to,
            job_id=job_id,
            op=op,
            result=None,
            error=error,
            timings={"queued": 0.0, "storage_get": 0.0, "compute": 0.0, "storage_put": 0.0, "total": total},
        )
        (endpoint or self.discovery.endpoint(op)).record(total, _describe(error))
        return reply

    # ------------------------------------------------------------------ admission
    @property
    def inflight(self) -> int:
        """Admitted jobs (each holds a slot until it is run or released)."""
        return self.slots.inflight

    @property
    def reserved(self) -> int:
        """Slots reserved by the JetStream intake for its pull requests."""
        return self.slots.reserved

    @property
    def free_slots(self) -> int:
        """Slots neither running a job nor reserved for a pull request."""
        return self.slots.free

    def release(self, job: Job) -> None:
        """Give back the slot of an admitted job that will not be run (e.g. answered from a record)."""
        job.endpoint.inflight -= 1
        self.slots.finish()

    def prepare(
        self,
        data: bytes,
        headers: Mapping[str, str] | None,
        subject_op: str,
        received: float,
        *,
        reserved: bool = False,
    ) -> Job:
        """Validate and admit a command, or raise :class:`Rejected` carrying its error Reply.

        ``reserved``: the caller holds a reserved slot for this message (a JetStream delivery), which
        becomes the job's; there is no capacity check. If the message is refused the caller still
        holds it and gives it back (``Slots.unreserve``).
        """
        json_mode = codec.is_json(headers)
        endpoint = self.discovery.endpoint(subject_op)
        decoded: Any = None
        try:
            decoded = codec.decode(data, json_mode=json_mode, max_bytes=self.max_bytes)
            command = parse_command(decoded)
            if command.op != subject_op:
                raise BadRequest(f"op {command.op!r} does not match the subject's operation {subject_op!r}")
            operation = self.registry.get(subject_op)
            if operation is None:
                served = ", ".join(self.registry.names())
                raise UnknownOperation(f"unknown operation {subject_op!r}; this worker serves: {served}")
            params = operation.parse_params(command.params)
            if not self.accepting:
                raise Busy("the worker is stopping; send the command again (another worker may take it)")
            if not self.slots.admit(reserved=reserved):
                raise Busy(f"all {self.capacity} slots are busy; retry later")
        except RoryError as error:
            reply = self.reject(error, op=subject_op, received=received, data=decoded, endpoint=endpoint)
            raise Rejected(reply, json_mode, error) from None
        except Exception as error:  # a bug in validation must still produce an answer
            log.exception("unexpected error while admitting a command")
            wrapped = Internal(f"{type(error).__name__}: {error}")
            reply = self.reject(wrapped, op=subject_op, received=received, data=decoded, endpoint=endpoint)
            raise Rejected(reply, json_mode, wrapped) from None
        endpoint.inflight += 1
        deadline = None
        if command.deadline_s is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + command.deadline_s - (time.perf_counter() - received)
        return Job(command, operation, params, json_mode, received, deadline, endpoint)

    # ------------------------------------------------------------------ execution
    async def run(self, job: Job) -> dict[str, Any]:
        """Run an admitted job and return its Reply map (never raises).

        A command id that is already running or finished lately is not run again: the duplicate
        gives its slot back and gets the first run's Reply (worker/runtime/replays.py says why).
        """
        command = job.command
        first = self.replies.claim(command.id, command.op, command.job_id or command.id)
        if first is not None:
            self.release(job)
            replayed: dict[str, Any] = await asyncio.shield(first)
            # The duplicate is answered too, with the first run's Reply: count it like any answer, so
            # an error Reply sent twice shows twice in $SRV.STATS.
            job.endpoint.record(time.perf_counter() - job.received, describe_reply(replayed))
            return replayed
        reply: dict[str, Any] | None = None
        try:
            reply = await self._run_once(job)
            return reply
        finally:
            self.replies.finish(command.id, reply)  # None (cancelled): forgotten, a retry runs it

    async def _run_once(self, job: Job) -> dict[str, Any]:
        started = time.perf_counter()
        command = job.command
        ctx = JobContext(self.services, command, deadline=job.deadline, log=log)
        result: dict[str, Any] | None = None
        error: RoryError | None = None
        try:
            if job.deadline is None:
                result = await self._invoke(job, ctx)
            else:
                # The storage deadline lets a retry loop answer 503 at once rather than sleep into a
                # deadline it cannot meet (worker/storage/breaker.py); the timeout stops everything else.
                with storage_deadline(job.deadline):
                    async with asyncio.timeout_at(job.deadline):
                        result = await self._invoke(job, ctx)
        except TimeoutError as exc:
            loop = asyncio.get_running_loop()
            if job.deadline is not None and loop.time() >= job.deadline:
                error = DeadlineExceeded(
                    f"deadline of {command.deadline_s:g}s passed; the computation was stopped and its "
                    "result discarded"
                )
            else:
                error = classify(exc)
        except asyncio.CancelledError:
            error = Busy("the worker stopped before this command finished; send it again")
        except Exception as exc:
            error = classify(exc)
            if error.code >= 500 and not isinstance(exc, RoryError):
                log.error(
                    "handler failed",
                    exc_info=exc,
                    extra={"op": command.op, "job_id": command.job_id, "id": command.id},
                )
        finally:
            job.endpoint.inflight -= 1
            self.slots.finish()
        storage_get, compute, storage_put = ctx.stage_timings()
        total = time.perf_counter() - job.received
        reply = self._reply(
            in_reply_to=command.id,
            job_id=command.job_id or command.id,
            op=command.op,
            result=result,
            error=error,
            timings={
                "queued": started - job.received,
                "storage_get": storage_get,
                "compute": compute,
                "storage_put": storage_put,
                "total": total,
            },
        )
        job.endpoint.record(total, None if error is None else _describe(error))
        if error is not None:
            log.info(
                "command failed",
                extra={
                    "op": command.op,
                    "job_id": command.job_id,
                    "code": error.code,
                    "error": error.message,
                },
            )
        return reply

    async def _invoke(self, job: Job, ctx: JobContext) -> dict[str, Any]:
        started = time.perf_counter()
        value = await job.operation.handler(ctx, job.params)
        if isinstance(value, BaseModel):
            result = value.model_dump(mode="json")
            # Filled here once for every handler: the worker's wall time for the command, from the
            # handler's start (its storage-claims check included) to its result.
            if "service_time" in type(value).model_fields:
                result["service_time"] = time.perf_counter() - started
            return result
        if isinstance(value, Mapping):
            return dict(value)
        raise Internal(f"handler of {job.operation.name} returned {type(value).__name__}, not a map")

    # ------------------------------------------------------------------ encoding
    def encode(
        self, reply: dict[str, Any], json_mode: bool, max_payload: int
    ) -> tuple[bytes, dict[str, str]]:
        """Encode a Reply with its headers; an unencodable or oversized result becomes a 500."""
        _, data, headers = self.finalize(reply, json_mode, max_payload)
        return data, headers

    def finalize(
        self, reply: dict[str, Any], json_mode: bool, max_payload: int
    ) -> tuple[dict[str, Any], bytes, dict[str, str]]:
        """Like :meth:`encode`, also returning the Reply actually encoded.

        When the result cannot be encoded (e.g. JSON cannot hold it) the Reply becomes a 500; the
        caller must publish copies (``<p>.results.<job_id>``) of *that* Reply, not the original, so
        the requester and the results subject never disagree about the outcome.
        """
        try:
            data = codec.encode(reply, json_mode=json_mode)
            if len(data) > max_payload:
                raise Internal(
                    f"reply of {len(data)} bytes exceeds the server's max_payload of {max_payload} bytes; "
                    "large results must be stored and their key returned"
                )
        except Exception as exc:
            error = exc if isinstance(exc, Internal) else Internal(f"result cannot be encoded: {exc}")
            if reply.get("ok"):  # counted as a success when it ran; the requester gets this 500
                self.discovery.endpoint(str(reply.get("op", ""))).count_error(_describe(error))
            reply = {**reply, "ok": False, "error": error_info(error)}
            reply.pop("result", None)
            data = codec.encode(reply, json_mode=json_mode)
        headers = {codec.CONTENT_TYPE: codec.content_type(json_mode)}
        if not reply["ok"]:
            headers.update(error_headers(reply))
        return reply, data, headers


def _describe(error: RoryError) -> str:
    return f"{error.code} {error.type}: {error.message}"


def describe_reply(reply: Mapping[str, Any]) -> str | None:
    """``"<code> <TYPE>: <message>"`` of an error Reply (as ``$SRV.STATS`` shows it), None for a success."""
    if reply.get("ok"):
        return None
    error = reply.get("error")
    if not isinstance(error, Mapping):
        return "500 INTERNAL: error Reply without an error"
    return f"{error.get('code')} {error.get('type')}: {error.get('message')}"


_valid_id = is_valid_job_id


__all__ = [
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "Dispatcher",
    "Job",
    "Rejected",
    "describe_reply",
    "error_headers",
]
