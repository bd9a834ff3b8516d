"""The wire envelopes of the contract (section 3): Command, Reply, Health, Heartbeat, Announcement.

These pydantic models are the specification: ``docs/protocol.md`` is generated from them and a
Manager in another language implements them from that page. The worker's hot path does not run
pydantic on every message; :func:`parse_command` is a hand-written validator that accepts exactly
what :class:`Command` accepts (a property test keeps the two in step) and returns a Command built
with ``model_construct``.

Models are strict (no coercion: ``"1"`` is not ``1``) and ignore unknown fields, so a newer minor
revision of a sender can add fields without breaking v1 receivers.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from schemas.errors import BadRequest, UnsupportedVersion

PROTOCOL_VERSION = 1
ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
# Reply ids echoed from a command may be empty when the command could not be decoded that far.
ECHO_ID_PATTERN = r"^[A-Za-z0-9_-]{0,128}$"
OP_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
MAX_OP_LENGTH = 128
NODE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

# fullmatch, not match: Python's "$" also matches before a trailing newline.
_ID_RE = re.compile(ID_PATTERN[1:-1])
_OP_RE = re.compile(OP_PATTERN[1:-1])


class WorkerStatus(StrEnum):
    """``status`` of Health and Heartbeat."""

    READY = "ready"  # accepting commands
    BUSY = "busy"  # every slot taken: commands get 503 BUSY now
    DRAINING = "draining"  # stopping: no new commands, in-flight ones finishing
    DEGRADED = "degraded"  # serving, but storage is unreachable, the compute pool is unhealthy,
    # or the server's permissions refuse some of the worker's subscriptions


class Event(StrEnum):
    """``event`` of an Announcement."""

    STARTED = "started"
    STOPPED = "stopped"


StatusLiteral = Literal["ready", "busy", "draining", "degraded"]


class _Wire(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


def _strict_int_version(value: Any) -> Any:
    # Literal[1] alone would accept True and 1.0 (they compare equal to 1).
    if type(value) is not int:
        raise ValueError("v must be the integer protocol version")
    return value


#: ``v`` of a Command and of a Reply: the integer protocol major version, checked strictly.
Version = Annotated[
    Literal[1], BeforeValidator(_strict_int_version), Field(description="protocol major version, 1")
]


class Command(_Wire):
    """A request to run one operation. Sent to ``<p>.worker.<node>.cmd.<op>`` or ``<p>.pool.cmd.<op>``."""

    v: Version
    id: str = Field(
        pattern=ID_PATTERN, description="unique message id; a retry of the same command reuses it"
    )
    job_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="groups the rounds of one job; defaults to `id`; becomes a subject token",
    )
    op: str = Field(
        pattern=OP_PATTERN,
        max_length=MAX_OP_LENGTH,
        description="operation name; must equal the subject's `<op>`",
    )
    ts: float = Field(allow_inf_nan=False, description="sender's Unix time (seconds)")
    params: dict[str, Any] = Field(
        default_factory=dict, description="operation parameters (snake_case), section 4"
    )
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="give up with error 504 if not finished this many seconds after the worker received it",
    )

    @model_validator(mode="after")
    def _default_job_id(self) -> Command:
        if self.job_id is None:
            self.job_id = self.id
        return self

    @property
    def job(self) -> str:
        """``job_id`` (always set after validation)."""
        return self.job_id or self.id


class Timings(_Wire):
    """Seconds spent in each stage; overlapping calls of one stage count once (wall time)."""

    queued: float = Field(0.0, ge=0, description="from receipt until the handler started")
    storage_get: float = Field(0.0, ge=0, description="reading from storage (get/info/exists)")
    compute: float = Field(0.0, ge=0, description="running in the compute process pool")
    storage_put: float = Field(0.0, ge=0, description="writing to storage (put/delete)")
    total: float = Field(0.0, ge=0, description="from receipt until the reply was built")


class ErrorInfo(_Wire):
    """Why a command failed."""

    code: int = Field(
        description=(
            "HTTP-like: 400 bad input, 404 missing storage key, 409 conflict, 422 failed validation, "
            "500 internal, 503 busy or storage unavailable, 504 deadline"
        )
    )
    type: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$", description="short upper-case name, e.g. BAD_REQUEST")
    message: str = Field(description="human-readable explanation")
    retryable: bool = Field(description="true when sending the same command again may succeed")


class Reply(_Wire):
    """The answer to a Command: sent to the request's reply inbox and to ``<p>.results.<node>.<job_id>``."""

    v: Version
    id: str = Field(pattern=ID_PATTERN, description="new unique id of this reply")
    in_reply_to: str = Field(
        pattern=ECHO_ID_PATTERN, description="the command's `id`; empty when the command was unreadable"
    )
    job_id: str = Field(
        pattern=ECHO_ID_PATTERN, description="the command's `job_id`; empty when the command was unreadable"
    )
    op: str = Field(max_length=MAX_OP_LENGTH, description="the operation (from the command or its subject)")
    node_id: str = Field(pattern=NODE_ID_PATTERN, description="the node that ran it")
    ok: bool = Field(description="success flag")
    result: dict[str, Any] | None = Field(None, description="on success: the operation's result")
    error: ErrorInfo | None = Field(None, description="on failure: what went wrong")
    timings: Timings = Field(description="seconds per stage")

    @model_validator(mode="after")
    def _ok_matches(self) -> Reply:
        if self.ok and (self.result is None or self.error is not None):
            raise ValueError("a successful reply carries `result` and no `error`")
        if not self.ok and self.error is None:
            raise ValueError("a failed reply carries `error`")
        return self


class StorageHealth(_Wire):
    """Storage as the worker sees it."""

    backend: str = Field(description="storage backend name (local, mictlanx, ...)")
    reachable: bool = Field(
        description="false while the storage circuit breaker is open or three pings in a row failed"
    )
    last_error: str | None = Field(None, description="why storage is unreachable (the last failure)")


class NatsHealth(_Wire):
    """The worker's NATS connection."""

    connected_url: str | None = Field(description="server the worker is connected to (no credentials)")
    rtt_ms: float | None = Field(description="round trip to that server in milliseconds")


class Health(_Wire):
    """Answer on ``<p>.worker.<node>.health`` (JSON unless msgpack is asked for)."""

    component_type: Literal["worker"] = Field("worker", description="always `worker` (Rory's health body)")
    node_id: str = Field(pattern=NODE_ID_PATTERN)
    instance_id: str = Field(min_length=1, description="this process's id (the ADR-32 service id)")
    status: StatusLiteral
    version: str
    uptime_s: float = Field(ge=0)
    inflight: int = Field(ge=0, description="commands being run now")
    capacity: int = Field(ge=1, description="commands that can run at once")
    operations: list[str] = Field(description="operation names this worker serves")
    storage: StorageHealth
    nats: NatsHealth
    refused_subscriptions: list[str] | None = Field(
        None, description="subjects the server's permissions refuse this worker (absent when none)"
    )


class Load(_Wire):
    """Resource use of the worker process and its compute processes."""

    cpu: float = Field(ge=0, description="CPU percent of the worker and its pool processes")
    rss_mb: float = Field(ge=0, description="resident memory of the worker and its pool processes, MiB")


class Heartbeat(_Wire):
    """Published on ``<p>.worker.<node>.heartbeat`` every HEARTBEAT_INTERVAL seconds (msgpack)."""

    node_id: str = Field(pattern=NODE_ID_PATTERN)
    instance_id: str = Field(min_length=1)
    seq: int = Field(ge=1, description="1 for the first beat of an instance, then +1 per beat")
    ts: float = Field(description="Unix time of the beat")
    status: StatusLiteral
    inflight: int = Field(ge=0)
    capacity: int = Field(ge=1)
    version: str
    operations: list[str]
    load: Load
    storage: StorageHealth | None = Field(None, description="storage as in Health (absent before start)")
    refused_subscriptions: list[str] | None = Field(
        None, description="subjects the server's permissions refuse this worker (absent when none)"
    )


class Announcement(_Wire):
    """Published once on ``<p>.worker.<node>.started`` and once on ``.stopped`` (msgpack)."""

    node_id: str = Field(pattern=NODE_ID_PATTERN)
    instance_id: str = Field(min_length=1)
    event: Literal["started", "stopped"]
    ts: float
    version: str
    operations: list[str]
    capacity: int = Field(ge=1)


# ----------------------------------------------------------------------------------- fast path
def _is_number(value: Any) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is not int:
        return False
    # A JSON integer has no size limit: math.isfinite (and float()) raise OverflowError on one that
    # no float can hold, such as 10**400. Command.model_validate refuses it too.
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def parse_command(data: Any) -> Command:
    """Validate a decoded command map without pydantic's per-message cost.

    Accepts exactly what ``Command.model_validate`` accepts (extra keys ignored) and raises
    :class:`BadRequest` (or :class:`UnsupportedVersion`) naming the field otherwise.
    """
    if type(data) is not dict:
        raise BadRequest("command must be a map")
    get = data.get
    version = get("v")
    if type(version) is not int:
        raise BadRequest("v: required, the integer protocol version (1)")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"v: protocol version {version} is not supported; this worker speaks v1")
    ident = get("id")
    if type(ident) is not str or not _ID_RE.fullmatch(ident):
        raise BadRequest("id: required, 1-128 characters of A-Z a-z 0-9 _ -")
    job_id = get("job_id")
    if job_id is None:
        job_id = ident
    elif type(job_id) is not str or not _ID_RE.fullmatch(job_id):
        raise BadRequest("job_id: 1-128 characters of A-Z a-z 0-9 _ -")
    op = get("op")
    if type(op) is not str or len(op) > MAX_OP_LENGTH or not _OP_RE.fullmatch(op):
        raise BadRequest("op: required, dot-separated tokens of A-Z a-z 0-9 _ -")
    ts = get("ts")
    if not _is_number(ts):
        raise BadRequest("ts: required, the sender's Unix time as a finite number")
    params = get("params", _MISSING)
    if params is _MISSING:
        params = {}
    elif type(params) is not dict:
        raise BadRequest("params: must be a map")
    else:
        for key in params:
            if type(key) is not str:
                raise BadRequest("params: keys must be strings")
    deadline = get("deadline_s")
    if deadline is not None and (not _is_number(deadline) or deadline <= 0):
        raise BadRequest("deadline_s: must be a positive finite number of seconds")
    return _construct(
        {
            "v": PROTOCOL_VERSION,
            "id": ident,
            "job_id": job_id,
            "op": op,
            "ts": float(ts),
            "params": params,
            "deadline_s": None if deadline is None else float(deadline),
        }
    )


_MISSING = object()
_COMMAND_FIELDS = frozenset(Command.model_fields)
_set = object.__setattr__


def _construct(fields: dict[str, Any]) -> Command:
    # What ``Command.model_construct`` does for an already-validated, complete field dict, minus
    # its generic bookkeeping (about 5x cheaper). The property test compares the result with
    # ``Command.model_validate`` field by field.
    command = Command.__new__(Command)
    _set(command, "__dict__", fields)
    _set(command, "__pydantic_fields_set__", set(_COMMAND_FIELDS))
    _set(command, "__pydantic_extra__", None)
    _set(command, "__pydantic_private__", None)
    return command


__all__ = [
    "ECHO_ID_PATTERN",
    "ID_PATTERN",
    "OP_PATTERN",
    "PROTOCOL_VERSION",
    "Announcement",
    "Command",
    "ErrorInfo",
    "Event",
    "Health",
    "Heartbeat",
    "Load",
    "NatsHealth",
    "Reply",
    "StorageHealth",
    "Timings",
    "WorkerStatus",
    "parse_command",
]
