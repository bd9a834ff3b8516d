"""ADR-32 service discovery (``$SRV.PING/INFO/STATS``), written on plain subscriptions.

Not ``nats.micro``: it cancels in-flight handlers on stop, runs one handler at a time per endpoint
and does not count error replies. The protocol is small: every instance answers JSON on nine plain
(non-queue) subscriptions, so ``nats micro ls/info/stats/ping`` sees each instance.

Endpoints: one per operation (name = the op with dots as ``_``, since endpoint names cannot hold
dots; the real op is in its metadata), subject ``<p>.worker.<node>.cmd.<op>`` with queue group
``<p>.worker.<node>``; the pool subject and queue are in the endpoint metadata and count on the same
endpoint. Two more endpoints: ``health``, and ``unrouted`` for command subjects naming no registered
operation, so every bad input is counted somewhere.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas import subjects

PING_TYPE = "io.nats.micro.v1.ping_response"
INFO_TYPE = "io.nats.micro.v1.info_response"
STATS_TYPE = "io.nats.micro.v1.stats_response"
DESCRIPTION = "Rory privacy-preserving data-mining worker (Liu, CKKS, FDH-OPE)"
LATENCY_WINDOW = 1024
UNROUTED = "unrouted"
HEALTH = "health"


def endpoint_name(op: str) -> str:
    return op.replace(".", "_")


def _percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class EndpointStats:
    """ADR-32 counters of one endpoint plus a window of recent latencies for percentiles."""

    name: str
    subject: str
    queue_group: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_ns: int = 0
    inflight: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def record(self, seconds: float, error: str | None = None) -> None:
        """Count one answered request; ``error`` (``"<code> <TYPE>: <message>"``) when it was an error."""
        self.num_requests += 1
        self.processing_ns += int(seconds * 1e9)
        self.latencies.append(seconds)
        if error is not None:
            self.num_errors += 1
            self.last_error = error

    def count_error(self, error: str) -> None:
        """An answer already counted by :meth:`record` as a success went out as an error after all.

        Why: the outcome can change after the run was counted, e.g. a result too large to encode
        becomes a 500 (``Dispatcher.finalize`` in worker/runtime/dispatch.py), or its result record
        could not be written (worker/runtime/jetstream_intake.py). The requester sees an error Reply,
        so ``num_errors`` must count it, without counting the request twice.
        """
        self.num_errors += 1
        self.last_error = error

    def reset(self) -> None:
        self.num_requests = self.num_errors = self.processing_ns = 0
        self.last_error = ""
        self.latencies.clear()

    def info(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "subject": self.subject}
        if self.queue_group is not None:
            body["queue_group"] = self.queue_group
        body["metadata"] = dict(self.metadata) or None
        return body

    def latency_ms(self) -> dict[str, float | int]:
        ordered = sorted(self.latencies)
        if not ordered:
            return {"count": 0}
        return {
            "count": len(ordered),
            "p50": round(_percentile(ordered, 0.50) * 1000, 3),
            "p90": round(_percentile(ordered, 0.90) * 1000, 3),
            "p99": round(_percentile(ordered, 0.99) * 1000, 3),
            "max": round(ordered[-1] * 1000, 3),
        }

    def stats(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "subject": self.subject}
        if self.queue_group is not None:
            body["queue_group"] = self.queue_group
        body.update(
            num_requests=self.num_requests,
            num_errors=self.num_errors,
            last_error=self.last_error,
            processing_time=self.processing_ns,
            average_processing_time=self.processing_ns // self.num_requests if self.num_requests else 0,
            data={"inflight": self.inflight, "latency_ms": self.latency_ms(), **(extra or {})},
        )
        return body


class Discovery:
    """The service identity and endpoint table; builds the three ADR-32 JSON replies."""

    def __init__(
        self,
        *,
        instance_id: str,
        version: str,
        prefix: str,
        node_id: str,
        operations: Iterable[tuple[str, str, dict[str, str]]],
        health_data: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``operations``: (op name, description, metadata) of each registered operation."""
        self.name = subjects.SERVICE_NAME
        self.instance_id = instance_id
        self.version = version
        self.metadata = {"node_id": node_id, "prefix": prefix}
        self.started = datetime.now(UTC)
        self._health_data = health_data
        node_queue = subjects.node_queue(prefix, node_id)
        pool_queue = subjects.pool_queue(prefix)
        self.by_op: dict[str, EndpointStats] = {}
        endpoints = []
        for op, description, metadata in operations:
            meta = {
                "op": op,
                "pool_subject": subjects.pool_cmd(prefix, op),
                "pool_queue_group": pool_queue,
                **({"description": description} if description else {}),
                **metadata,
            }
            stats = EndpointStats(endpoint_name(op), subjects.node_cmd(prefix, node_id, op), node_queue, meta)
            self.by_op[op] = stats
            endpoints.append(stats)
        self.health = EndpointStats(HEALTH, subjects.health(prefix, node_id), None)
        self.unrouted = EndpointStats(
            UNROUTED,
            subjects.node_cmd_all(prefix, node_id),
            node_queue,
            {
                "purpose": "commands whose subject names no registered operation",
                "pool_subject": subjects.pool_cmd_all(prefix),
                "pool_queue_group": pool_queue,
            },
        )
        self.endpoints = [*endpoints, self.health, self.unrouted]
        self._ping = self._encode({**self._identity(PING_TYPE)})
        self._info = self._encode(
            {
                **self._identity(INFO_TYPE),
                "description": DESCRIPTION,
                "endpoints": [endpoint.info() for endpoint in self.endpoints],
            }
        )

    def endpoint(self, op: str) -> EndpointStats:
        return self.by_op.get(op) or self.unrouted

    def _identity(self, kind: str) -> dict[str, Any]:
        return {
            "type": kind,
            "name": self.name,
            "id": self.instance_id,
            "version": self.version,
            "metadata": dict(self.metadata),
        }

    @staticmethod
    def _encode(body: dict[str, Any]) -> bytes:
        return json.dumps(body, separators=(",", ":")).encode()

    def ping(self) -> bytes:
        return self._ping

    def info(self) -> bytes:
        return self._info

    def stats(self) -> bytes:
        started = self.started.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        endpoints = []
        for endpoint in self.endpoints:
            extra = self._health_data() if endpoint is self.health and self._health_data else None
            endpoints.append(endpoint.stats(extra))
        return self._encode({**self._identity(STATS_TYPE), "started": started, "endpoints": endpoints})

    def reset(self) -> None:
        for endpoint in self.endpoints:
            endpoint.reset()

    def totals(self) -> tuple[int, int]:
        """(requests, errors) over every endpoint."""
        return (
            sum(e.num_requests for e in self.endpoints),
            sum(e.num_errors for e in self.endpoints),
        )


__all__ = ["DESCRIPTION", "Discovery", "EndpointStats", "endpoint_name"]
