"""Subject names of the contract (section 1), built in one place so nobody hand-writes them.

``<p>`` is the prefix (RORY_SUBJECT_PREFIX), ``<node>`` the NODE_ID, ``<op>`` an operation name.
Builders check every token they are given, because a ``*``, ``>`` or space in a token would turn a
publish into a different subject (or a wildcard subscription into a broader one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

SERVICE_NAME = "rory-worker"  # the ADR-32 service name shared by every worker
SRV_PREFIX = "$SRV"
SRV_VERBS = ("PING", "INFO", "STATS")

JOBS_STREAM = "RORY_JOBS"
JOBS_POOL_TOKEN = "pool"
JOBS_POOL_CONSUMER = "pool"

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_DOTTED = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_NODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_JOB = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _prefix(prefix: str) -> str:
    if not _DOTTED.fullmatch(prefix):
        raise ValueError(f"invalid subject prefix {prefix!r}: dot-separated tokens of A-Z a-z 0-9 _ -")
    return prefix


def _node(node: str) -> str:
    if not _NODE.fullmatch(node):
        raise ValueError(f"invalid node id {node!r}: 1-64 characters of A-Z a-z 0-9 _ -")
    return node


def _op(op: str) -> str:
    if len(op) > 128 or not _DOTTED.fullmatch(op):
        raise ValueError(f"invalid operation name {op!r}: dot-separated tokens of A-Z a-z 0-9 _ -")
    return op


def is_valid_op(op: str) -> bool:
    return len(op) <= 128 and _DOTTED.fullmatch(op) is not None


def is_valid_job_id(job_id: str) -> bool:
    return _JOB.fullmatch(job_id) is not None


# ------------------------------------------------------------------------------- request-reply
def _worker(prefix: str, node: str, *tail: str) -> str:
    """``<p>.worker.<node>[.<tail>...]``; ``node`` may be ``*`` only through the ``*_all`` builders."""
    return ".".join((_prefix(prefix), "worker", node, *tail))


def node_cmd(prefix: str, node: str, op: str) -> str:
    """``<p>.worker.<node>.cmd.<op>``: a command for one node."""
    return _worker(prefix, _node(node), "cmd", _op(op))


def node_cmd_all(prefix: str, node: str) -> str:
    """The node's command subscription: ``<p>.worker.<node>.cmd.>``."""
    return _worker(prefix, _node(node), "cmd", ">")


def node_queue(prefix: str, node: str) -> str:
    """Queue group of a node's instances: two instances of one node never both run a command."""
    return _worker(prefix, _node(node))


def pool_cmd(prefix: str, op: str) -> str:
    """``<p>.pool.cmd.<op>``: a command any free worker may take."""
    return f"{_prefix(prefix)}.pool.cmd.{_op(op)}"


def pool_cmd_all(prefix: str) -> str:
    return f"{_prefix(prefix)}.pool.cmd.>"


def pool_queue(prefix: str) -> str:
    """Queue group of all workers on the pool subjects: ``<p>-workers``."""
    return f"{_prefix(prefix)}-workers"


def health(prefix: str, node: str) -> str:
    return _worker(prefix, _node(node), "health")


# ------------------------------------------------------------------------------- publications
def heartbeat(prefix: str, node: str) -> str:
    return _worker(prefix, _node(node), "heartbeat")


def started(prefix: str, node: str) -> str:
    return _worker(prefix, _node(node), "started")


def stopped(prefix: str, node: str) -> str:
    return _worker(prefix, _node(node), "stopped")


def heartbeat_all(prefix: str) -> str:
    """Every node's heartbeats: ``<p>.worker.*.heartbeat``."""
    return _worker(prefix, "*", "heartbeat")


def started_all(prefix: str) -> str:
    return _worker(prefix, "*", "started")


def stopped_all(prefix: str) -> str:
    return _worker(prefix, "*", "stopped")


def _job(job_id: str) -> str:
    if not _JOB.fullmatch(job_id):
        raise ValueError(f"invalid job id {job_id!r}: 1-128 characters of A-Z a-z 0-9 _ -")
    return job_id


def results(prefix: str, node: str, job_id: str) -> str:
    """``<p>.results.<node>.<job_id>``: every Reply of a job is also published here by the node
    that ran it. The node token is what the per-node permissions restrict, so no node can publish a
    result in another node's name (contract, section 1)."""
    return f"{_prefix(prefix)}.results.{_node(node)}.{_job(job_id)}"


def results_of_job(prefix: str, job_id: str) -> str:
    """``<p>.results.*.<job_id>``: a Manager's subscription for one job, whichever node runs it."""
    return f"{_prefix(prefix)}.results.*.{_job(job_id)}"


def results_of_node(prefix: str, node: str) -> str:
    """``<p>.results.<node>.*``: every result of one node (its publish permission; ``watch --node``)."""
    return f"{_prefix(prefix)}.results.{_node(node)}.*"


def results_all(prefix: str) -> str:
    """``<p>.results.>``: every result of every node."""
    return f"{_prefix(prefix)}.results.>"


# ------------------------------------------------------------------------------- ADR-32
def srv(verb: str, name: str | None = None, instance_id: str | None = None) -> str:
    """``$SRV.<VERB>[.<name>[.<id>]]``."""
    if verb not in SRV_VERBS:
        raise ValueError(f"unknown $SRV verb {verb!r}")
    parts = [SRV_PREFIX, verb]
    if name is not None:
        parts.append(_token(name))
        if instance_id is not None:
            parts.append(_token(instance_id))
    return ".".join(parts)


def srv_subjects(name: str, instance_id: str) -> list[str]:
    """The nine discovery subjects one instance listens on (plain subscriptions: all answer)."""
    return [srv(verb, *extra) for verb in SRV_VERBS for extra in ((), (name,), (name, instance_id))]


def _token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"invalid subject token {token!r}")
    return token


# ------------------------------------------------------------------------------- JetStream (durable)
def jobs_node(prefix: str, node: str, op: str) -> str:
    """``<p>.jobs.<node>.<op>`` in stream RORY_JOBS."""
    if node == JOBS_POOL_TOKEN:
        raise ValueError("node id 'pool' collides with the pool jobs subject")
    return f"{_prefix(prefix)}.jobs.{_node(node)}.{_op(op)}"


def jobs_pool(prefix: str, op: str) -> str:
    """``<p>.jobs.pool.<op>`` in stream RORY_JOBS."""
    return f"{_prefix(prefix)}.jobs.{JOBS_POOL_TOKEN}.{_op(op)}"


def jobs_stream_subjects(prefix: str) -> list[str]:
    return [f"{_prefix(prefix)}.jobs.>"]


def jobs_node_filter(prefix: str, node: str) -> str:
    return f"{_prefix(prefix)}.jobs.{_node(node)}.>"


def jobs_pool_filter(prefix: str) -> str:
    return f"{_prefix(prefix)}.jobs.{JOBS_POOL_TOKEN}.>"


def jobs_node_consumer(node: str) -> str:
    """Durable consumer name of a node: ``worker-<node>``."""
    return f"worker-{_node(node)}"


def results_bucket(stream: str) -> str:
    """KV bucket of result records for a jobs stream: ``RORY_JOBS`` -> ``RORY_RESULTS``."""
    return _token(stream).removesuffix("_JOBS") + "_RESULTS"


def record_key(prefix: str, source: str, command_id: str) -> str:
    """``<p>.<node|pool>.<command id>``: key of a command's result record in the results bucket.

    ``source`` is the node a command was addressed to (``<p>.jobs.<node>.<op>``), or ``pool``. Keying
    by it lets the per-node permissions give each node its own records and the pool's only.
    """
    return f"{_prefix(prefix)}.{_node(source)}.{_job(command_id)}"


def record_keys(prefix: str, source: str) -> str:
    """``<p>.<node|pool>.*``: every record key of one node (or of the pool)."""
    return f"{_prefix(prefix)}.{_node(source)}.*"


def kv_subject(bucket: str, key: str) -> str:
    """``$KV.<bucket>.<key>``: where a KV record (or a key pattern's records) is written."""
    return f"$KV.{_token(bucket)}.{key}"


def kv_direct_get(bucket: str, key: str) -> str:
    """``$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>``: a direct get of one key's last value.

    This form names the key in the subject (a lookup by sequence, ``...KV_<bucket>`` with a body,
    does not), so permissions on it restrict which records a user can read.
    """
    return f"$JS.API.DIRECT.GET.KV_{_token(bucket)}.{kv_subject(bucket, key)}"


def dlq_subject(prefix: str, source: str, op: str) -> str:
    """``<p>.dlq.<node|pool>.<op>``: where a dead command is kept (stream RORY_DLQ)."""
    if not is_valid_op(op):
        op = "unknown"
    return f"{_prefix(prefix)}.dlq.{_node(source)}.{op}"


def dlq_source_all(prefix: str, source: str) -> str:
    """``<p>.dlq.<node|pool>.>``: the dead letters of one node (or of the pool)."""
    return f"{_prefix(prefix)}.dlq.{_node(source)}.>"


def dlq_stream_subjects(prefix: str) -> list[str]:
    return [f"{_prefix(prefix)}.dlq.>"]


def dlq_movers_queue(prefix: str) -> str:
    """Queue group of the dead-letter movers: one of them handles each advisory."""
    return f"{_prefix(prefix)}.dlq-movers"


def max_deliveries_advisory(stream: str, consumer: str = "*") -> str:
    """``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`` (``*``: every consumer)."""
    if consumer != "*":
        consumer = _token(consumer)
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{_token(stream)}.{consumer}"


# ------------------------------------------------------------------------------- reverse parsing
Via = Literal["node", "pool", "jobs-node", "jobs-pool"]


@dataclass(frozen=True, slots=True)
class CommandSubject:
    """What a command subject says: how it was addressed, to which node, for which operation."""

    via: Via
    node: str | None
    op: str


def parse_command_subject(prefix: str, subject: str) -> CommandSubject | None:
    """Inverse of :func:`node_cmd`, :func:`pool_cmd`, :func:`jobs_node`, :func:`jobs_pool`.

    Returns None for anything that is not a well-formed command subject under ``prefix``.
    """
    head = prefix + "."
    if not subject.startswith(head):
        return None
    rest = subject[len(head) :]
    if rest.startswith("pool.cmd."):
        op = rest[len("pool.cmd.") :]
        return CommandSubject("pool", None, op) if is_valid_op(op) else None
    if rest.startswith("worker."):
        node, _, tail = rest[len("worker.") :].partition(".")
        if not _NODE.fullmatch(node) or not tail.startswith("cmd."):
            return None
        op = tail[len("cmd.") :]
        return CommandSubject("node", node, op) if is_valid_op(op) else None
    if rest.startswith("jobs."):
        node, _, op = rest[len("jobs.") :].partition(".")
        if not _NODE.fullmatch(node) or not is_valid_op(op):
            return None
        if node == JOBS_POOL_TOKEN:
            return CommandSubject("jobs-pool", None, op)
        return CommandSubject("jobs-node", node, op)
    return None


class OpExtractor:
    """Fast ``subject -> op`` for the two subscriptions of one worker (a slice, no regex).

    The server only delivers subjects matching our subscriptions, so the prefix is known; the op is
    still validated once by the caller when it looks it up in the registry (unknown names miss).
    """

    __slots__ = ("_node", "_node_len", "_pool", "_pool_len")

    def __init__(self, prefix: str, node: str) -> None:
        self._node = f"{_prefix(prefix)}.worker.{_node(node)}.cmd."
        self._pool = f"{prefix}.pool.cmd."
        self._node_len = len(self._node)
        self._pool_len = len(self._pool)

    def op(self, subject: str) -> str:
        if subject.startswith(self._node):
            return subject[self._node_len :]
        if subject.startswith(self._pool):
            return subject[self._pool_len :]
        return ""


__all__ = [
    "JOBS_POOL_CONSUMER",
    "JOBS_STREAM",
    "SERVICE_NAME",
    "CommandSubject",
    "OpExtractor",
    "dlq_movers_queue",
    "dlq_source_all",
    "dlq_stream_subjects",
    "dlq_subject",
    "health",
    "heartbeat",
    "heartbeat_all",
    "is_valid_job_id",
    "is_valid_op",
    "jobs_node",
    "jobs_node_consumer",
    "jobs_node_filter",
    "jobs_pool",
    "jobs_pool_filter",
    "jobs_stream_subjects",
    "kv_direct_get",
    "kv_subject",
    "max_deliveries_advisory",
    "node_cmd",
    "node_cmd_all",
    "node_queue",
    "parse_command_subject",
    "pool_cmd",
    "pool_cmd_all",
    "pool_queue",
    "record_key",
    "record_keys",
    "results",
    "results_all",
    "results_bucket",
    "results_of_job",
    "results_of_node",
    "srv",
    "srv_subjects",
    "started",
    "started_all",
    "stopped",
    "stopped_all",
]
