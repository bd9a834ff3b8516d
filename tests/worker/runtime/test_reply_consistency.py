"""The requester and ``<p>.results.<node>.<job_id>`` always see the same outcome of a command."""

from __future__ import annotations

from typing import Any

from schemas import codec, subjects
from schemas.envelopes import Reply
from tests.ops import Collector, NoParams, command, request, test_registry
from worker.runtime.dispatch import ERROR_CODE_HEADER
from worker.runtime.registry import Operation


async def _binary_result(ctx: Any, params: NoParams) -> dict[str, Any]:
    return {"blob": b"\x00\x01"}  # msgpack can carry it, JSON cannot


async def test_json_reply_that_cannot_be_encoded_is_an_error_on_the_results_subject_too(
    start_worker, nc
) -> None:
    registry = test_registry()
    registry.register(Operation("test.binary", NoParams, _binary_result, "returns bytes"))
    worker = await start_worker(registry=registry)
    body = command("test.binary", job_id="job-bin")
    results = await Collector.on(nc, subjects.results(worker.prefix, worker.node_id, "job-bin"))
    reply, msg = await request(nc, subjects.pool_cmd(worker.prefix, "test.binary"), body, json_mode=True)
    Reply.model_validate(reply)
    assert reply["ok"] is False and reply["error"]["code"] == 500
    assert msg.headers[ERROR_CODE_HEADER] == "500"
    (copy,) = await results.wait(1)
    # Before the fix the copy was re-encoded from the original reply: ok=True with the result.
    assert copy["ok"] is False and copy["error"] == reply["error"]
    assert copy == reply
    assert results.messages[0].headers[codec.CONTENT_TYPE] == codec.MSGPACK
    assert results.messages[0].headers[ERROR_CODE_HEADER] == "500"
