"""Every kind of bad input gets an error Reply with the right code, is counted in STATS, and the
worker keeps serving."""

from __future__ import annotations

import asyncio
import json
import random

import msgpack

from schemas import codec, subjects
from schemas.envelopes import Reply
from tests.ops import command, request

JSON = {"Content-Type": "application/json"}


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


CASES = [
    # (name, subject op, payload bytes, headers, code, type, text in message)
    ("random bytes", "test.echo", random.Random(7).randbytes(64), None, 400, "BAD_REQUEST", "msgpack"),
    (
        "truncated msgpack",
        "test.echo",
        codec.encode(command("test.echo", {"message": "x" * 40}))[:-7],
        None,
        400,
        "BAD_REQUEST",
        "msgpack",
    ),
    ("empty payload", "test.echo", b"", None, 400, "BAD_REQUEST", "empty"),
    ("msgpack array", "test.echo", msgpack.packb([1, 2, 3]), None, 400, "BAD_REQUEST", "map"),
    ("JSON not an object", "test.echo", b"[1, 2, 3]", JSON, 400, "BAD_REQUEST", "JSON object"),
    ("invalid JSON", "test.echo", b'{"v": 1,', JSON, 400, "BAD_REQUEST", "JSON"),
    (
        "msgpack sent as JSON",
        "test.echo",
        codec.encode(command("test.echo")),
        JSON,
        400,
        "BAD_REQUEST",
        "JSON",
    ),
    (
        "wrong type for id",
        "test.echo",
        codec.encode({**command("test.echo"), "id": 123}),
        None,
        400,
        "BAD_REQUEST",
        "id",
    ),
    (
        "wrong type for params",
        "test.echo",
        codec.encode({**command("test.echo"), "params": "k=3"}),
        None,
        400,
        "BAD_REQUEST",
        "params",
    ),
    (
        "unknown op",
        "test.nope",
        codec.encode(command("test.nope")),
        None,
        400,
        "UNKNOWN_OPERATION",
        "test.nope",
    ),
    (
        "op differs from subject",
        "test.echo",
        codec.encode(command("test.noop")),
        None,
        400,
        "BAD_REQUEST",
        "does not match",
    ),
    (
        "unknown version",
        "test.echo",
        codec.encode({**command("test.echo"), "v": 2}),
        None,
        400,
        "UNSUPPORTED_VERSION",
        "version",
    ),
    (
        "oversized payload",
        "test.echo",
        codec.encode(command("test.echo", {"message": "x" * 5000})),
        None,
        400,
        "PAYLOAD_TOO_LARGE",
        "exceeds",
    ),
    (
        "bad params value",
        "test.echo",
        codec.encode(command("test.echo", {"n": -1})),
        None,
        400,
        "BAD_REQUEST",
        "params.n",
    ),
    (
        "unknown params field",
        "test.echo",
        codec.encode(command("test.echo", {"bogus": 1})),
        None,
        400,
        "BAD_REQUEST",
        "params.bogus",
    ),
    (
        "deep nesting",
        "test.echo",
        codec.encode(command("test.echo", {"p": _nested(40)})),
        None,
        400,
        "BAD_REQUEST",
        "nests deeper",
    ),
    (
        "bad deadline",
        "test.echo",
        codec.encode(command("test.echo", deadline_s=-1)),
        None,
        400,
        "BAD_REQUEST",
        "deadline_s",
    ),
]


async def test_bad_inputs_get_error_replies_and_are_counted(start_worker, nc) -> None:
    worker = await start_worker(max_message_bytes=4096)
    for name, op, payload, headers, code, kind, text in CASES:
        subject = subjects.node_cmd(worker.prefix, worker.node_id, op)
        msg = await nc.request(subject, payload, timeout=2, headers=headers)
        reply = codec.decode(msg.data, json_mode=codec.is_json(msg.headers))
        Reply.model_validate(reply)
        assert (reply["error"]["code"], reply["error"]["type"]) == (code, kind), (name, reply)
        assert text in reply["error"]["message"], (name, reply["error"]["message"])
        assert msg.headers["Nats-Service-Error-Code"] == str(code), name
        assert "\n" not in msg.headers["Nats-Service-Error"]
        assert (headers is JSON) == codec.is_json(msg.headers), name
        assert reply["node_id"] == worker.node_id and reply["op"] == op
    # messages without a reply subject, and to the pool subject, are survived too
    await nc.publish(subjects.node_cmd(worker.prefix, worker.node_id, "test.echo"), b"\xc1garbage")
    await nc.publish(subjects.pool_cmd(worker.prefix, "test.echo"), b"\xc1garbage")
    await nc.flush()
    await asyncio.sleep(0.05)

    stats = json.loads(
        (await nc.request(f"$SRV.STATS.rory-worker.{worker.instance_id}", b"", timeout=2)).data
    )
    endpoints = {e["name"]: e for e in stats["endpoints"]}
    total_errors = sum(e["num_errors"] for e in stats["endpoints"])
    assert total_errors == len(CASES) + 2
    assert endpoints["unrouted"]["num_errors"] == 1
    assert endpoints["unrouted"]["last_error"].startswith("400 UNKNOWN_OPERATION")
    assert endpoints["test_echo"]["num_errors"] == len(CASES) + 2 - 1
    assert endpoints["test_echo"]["num_requests"] == endpoints["test_echo"]["num_errors"]

    reply, _ = await request(
        nc,
        subjects.node_cmd(worker.prefix, worker.node_id, "test.echo"),
        command("test.echo", {"message": "still here"}),
    )
    assert reply["ok"] and reply["result"]["message"] == "still here"


async def test_error_reply_echoes_readable_ids(start_worker, nc) -> None:
    worker = await start_worker()
    subject = subjects.node_cmd(worker.prefix, worker.node_id, "test.echo")
    body = {**command("test.echo", job_id="job-7"), "v": 9}
    reply, _ = await request(nc, subject, body)
    assert reply["in_reply_to"] == body["id"] and reply["job_id"] == "job-7"
    reply, _ = await request(nc, subject, None, raw=b"\xc1")
    assert reply["in_reply_to"] == "" and reply["job_id"] == ""
    bad_job = {**command("test.echo"), "job_id": "no.dots"}
    reply, _ = await request(nc, subject, bad_job)
    assert reply["in_reply_to"] == bad_job["id"] and reply["job_id"] == ""
