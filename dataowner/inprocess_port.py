"""A worker port that runs the worker's own dispatcher and handlers in this process.

No NATS: a command is encoded exactly as on the wire, admitted and run by
:class:`worker.runtime.dispatch.Dispatcher` (same validation, storage claims, deadline, timings)
against the given store, and its Reply decoded again. Compute functions run inline on the event
loop's thread instead of a process pool, so a job is deterministic and cheap to start: this is the
reference the NATS port is compared with (tests/dataowner/test_drivers.py) and what a benchmark
uses to measure the protocol without the bus.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dataowner.port import Outgoing, WorkerPort, new_id
from schemas import codec
from schemas.envelopes import Reply

__all__ = ["InProcessPort", "InlinePool"]

T = TypeVar("T")


class InlinePool:
    """Stands in for :class:`worker.runtime.pool.ComputePool`: runs each compute function inline."""

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)


class InProcessPort(WorkerPort):
    """:class:`dataowner.port.WorkerPort` over the worker's dispatcher in this process.

    ``store``: the worker's store (the owner usually shares the same object). ``keys_path``: the
    worker's KEYS_PATH (public CKKS material, :meth:`dataowner.keys.OwnerKeys.export_public`);
    needed by the CKKS operations only. ``settings_overrides`` go to :func:`worker.settings.load_settings`.
    """

    def __init__(
        self,
        store: Any,
        *,
        keys_path: str | os.PathLike[str] | None = None,
        node_id: str = "inprocess",
        **settings_overrides: Any,
    ) -> None:
        from worker.handlers import default_registry
        from worker.runtime.context import Resources, WorkerServices
        from worker.runtime.discovery import Discovery
        from worker.runtime.dispatch import Dispatcher
        from worker.settings import load_settings

        values: dict[str, Any] = {"node_id": node_id, "worker_capacity": 64}
        if keys_path is not None:
            values["keys_path"] = str(Path(keys_path))
        values.update(settings_overrides)
        self.settings = load_settings(**values)
        registry = default_registry()
        discovery = Discovery(
            instance_id=new_id("inproc"),
            version="inprocess",
            prefix=self.settings.rory_subject_prefix,
            node_id=node_id,
            operations=[(op.name, op.description, dict(op.metadata)) for op in registry],
        )
        pool = InlinePool()  # duck-typed: only .run is used
        self.dispatcher = Dispatcher(
            services=WorkerServices(self.settings, store, pool, Resources()),  # type: ignore[arg-type]
            registry=registry,
            discovery=discovery,
            instance_id=discovery.instance_id,
        )
        self.calls = 0

    async def close(self) -> None:
        return None

    async def exchange(self, command: Outgoing) -> Reply:
        from worker.runtime.dispatch import Rejected

        data = command.attempt(command.envelope(command.deadline_s))
        headers = {codec.CONTENT_TYPE: codec.MSGPACK}
        try:
            job = self.dispatcher.prepare(data, headers, command.op, time.perf_counter())
        except Rejected as rejected:
            answer = rejected.reply
        else:
            answer = await self.dispatcher.run(job)
        self.calls += 1
        encoded, _ = self.dispatcher.encode(answer, False, self.settings.max_message_bytes)
        command.record.bytes_down = len(encoded)
        return Reply.model_validate(codec.decode(encoded, max_bytes=len(encoded) + 1))
