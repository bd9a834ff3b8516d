"""Inspection commands for operators (the ``nats`` CLI cannot be installed here).

Each command is a coroutine taking a connected client and writing to ``out``; ``worker/cli.py``
wires them to ``rory-worker ls|info|stats|health|watch|req``. The equivalent ``nats`` CLI lines are
in ``docs/operations.md``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas import codec, subjects

EXIT_OK, EXIT_ERROR_REPLY, EXIT_NO_ANSWER = 0, 1, 3
EXIT_UNHEALTHY = 4  # health answered, but the worker is draining or degraded


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$base64": base64.b64encode(value).decode()}
    return str(value)


def dumps(value: Any, *, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, default=_json_default, ensure_ascii=False)


async def gather(
    nc: Client,
    subject: str,
    payload: bytes = b"",
    *,
    window: float = 1.0,
    headers: dict[str, str] | None = None,
) -> list[tuple[Msg, float]]:
    """Publish once with a reply inbox and collect every answer for ``window`` seconds (with RTT)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    answers: list[tuple[Msg, float]] = []
    try:
        sent = time.perf_counter()
        await nc.publish(subject, payload, reply=inbox, headers=headers)
        await nc.flush()
        until = sent + window
        while (left := until - time.perf_counter()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except (TimeoutError, NatsTimeout):
                break
            answers.append((msg, time.perf_counter() - sent))
    finally:
        await sub.unsubscribe()
    return answers


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _decode_json(msg: Msg) -> dict[str, Any] | None:
    try:
        value = json.loads(msg.data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _srv_subject(verb: str, instance_id: str | None) -> str:
    return subjects.srv(verb, subjects.SERVICE_NAME, instance_id)


async def ls(nc: Client, *, window: float = 1.0, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """``$SRV.PING.rory-worker``: every instance with its node and round-trip time."""
    answers = await gather(nc, _srv_subject("PING", None), window=window)
    rows, bodies = [], []
    for msg, rtt in answers:
        body = _decode_json(msg)
        if body is None:
            continue
        bodies.append({**body, "rtt_ms": round(rtt * 1000, 3)})
        meta = body.get("metadata") or {}
        rows.append(
            [
                body.get("name"),
                body.get("id"),
                meta.get("node_id", ""),
                body.get("version"),
                f"{rtt * 1000:.2f} ms",
            ]
        )
    if as_json:
        print(dumps(bodies), file=out)
    elif rows:
        rows.sort(key=lambda row: (str(row[2]), str(row[1])))
        print(_table(rows, ["NAME", "ID", "NODE", "VERSION", "RTT"]), file=out)
    else:
        print("no rory-worker instance answered", file=out)
    return EXIT_OK if bodies else EXIT_NO_ANSWER


def _render_info(body: dict[str, Any], out: TextIO) -> None:
    meta = body.get("metadata") or {}
    print(
        f"{body.get('name')} {body.get('version')}  id={body.get('id')}  node={meta.get('node_id')}",
        file=out,
    )
    print(f"  {body.get('description', '')}", file=out)
    rows = [[e.get("name"), e.get("subject"), e.get("queue_group", "")] for e in body.get("endpoints", [])]
    print(_table(rows, ["ENDPOINT", "SUBJECT", "QUEUE"]), file=out)
    print(file=out)


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f}"


def _render_stats(body: dict[str, Any], out: TextIO) -> None:
    meta = body.get("metadata") or {}
    title = f"{body.get('name')} id={body.get('id')} node={meta.get('node_id')}"
    print(f"{title} started={body.get('started')}", file=out)
    rows = []
    for e in body.get("endpoints", []):
        latency = (e.get("data") or {}).get("latency_ms") or {}
        rows.append(
            [
                e.get("name"),
                e.get("num_requests"),
                e.get("num_errors"),
                _ms(e.get("average_processing_time", 0)),
                latency.get("p50", "-"),
                latency.get("p99", "-"),
                (e.get("last_error") or "")[:60],
            ]
        )
    print(
        _table(rows, ["ENDPOINT", "REQUESTS", "ERRORS", "AVG ms", "P50 ms", "P99 ms", "LAST ERROR"]),
        file=out,
    )
    print(file=out)


def _srv_command(
    verb: str, render: Callable[[dict[str, Any], TextIO], None], doc: str
) -> Callable[..., Awaitable[int]]:
    """``info`` and ``stats`` differ only in the ``$SRV`` verb and how one reply is rendered.

    The command gathers the ``$SRV`` replies, then dumps or renders each. Undecodable replies are
    skipped, so one misbehaving responder cannot hide the others.
    """

    async def command(
        nc: Client,
        instance_id: str | None = None,
        *,
        window: float = 1.0,
        as_json: bool = False,
        out: TextIO = sys.stdout,
    ) -> int:
        bodies = [
            b
            for m, _ in await gather(nc, _srv_subject(verb, instance_id), window=window)
            if (b := _decode_json(m)) is not None
        ]
        if as_json:
            print(dumps(bodies), file=out)
        else:
            for body in bodies:
                render(body, out)
            if not bodies:
                print("no rory-worker instance answered", file=out)
        return EXIT_OK if bodies else EXIT_NO_ANSWER

    command.__name__ = command.__qualname__ = verb.lower()
    command.__doc__ = doc
    return command


info = _srv_command(
    "INFO", _render_info, "``$SRV.INFO.rory-worker[.ID]``: identity and endpoints of each instance."
)
stats = _srv_command(
    "STATS", _render_stats, "``$SRV.STATS.rory-worker[.ID]``: requests, errors and latency per endpoint."
)


async def _ask(
    nc: Client,
    subject: str,
    payload: bytes,
    timeout: float,
    headers: dict[str, str] | None,
    out: TextIO,
    *,
    nobody: str,
    late: str,
) -> Msg | None:
    """One request, for ``health`` and ``req``: the answer, or ``None`` once ``out`` has been told
    why there is none (``nobody`` listening, or the answer came too ``late``)."""
    try:
        return await nc.request(subject, payload, timeout=timeout, headers=headers)
    except NoRespondersError:
        print(nobody, file=out)
    except NatsTimeout:
        print(late, file=out)
    return None


async def health(
    nc: Client,
    prefix: str,
    node: str,
    *,
    use_msgpack: bool = False,
    timeout: float = 2.0,
    out: TextIO = sys.stdout,
) -> int:
    """``<p>.worker.<node>.health``: the Health body as JSON.

    Exits 0 only for a worker that can take work (``ready`` or ``busy``), so a container
    HEALTHCHECK built on it marks a ``draining`` or ``degraded`` worker unhealthy.
    """
    headers = {codec.ACCEPT: codec.MSGPACK} if use_msgpack else None
    subject = subjects.health(prefix, node)
    msg = await _ask(
        nc, subject, b"", timeout, headers, out,
        nobody=f"no worker {node!r} is listening on {subject}",
        late=f"worker {node!r} did not answer within {timeout:g}s",
    )
    if msg is None:
        return EXIT_NO_ANSWER
    body = codec.decode(msg.data, json_mode=codec.is_json(msg.headers) or not use_msgpack)
    print(dumps(body), file=out)
    return EXIT_OK if body.get("status") in {"ready", "busy"} else EXIT_UNHEALTHY


async def watch(
    nc: Client,
    prefix: str,
    *,
    node: str = "*",
    results: bool = False,
    count: int | None = None,
    duration: float | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print heartbeats and announcements (and Replies with ``results``) as JSON lines.

    Replies are those on ``<p>.results.<node>.<job_id>``: every node's (``<p>.results.>``), or with
    ``node`` only that node's (``<p>.results.<node>.*``).
    """
    wanted = [
        f"{prefix}.worker.{node}.heartbeat",
        f"{prefix}.worker.{node}.started",
        f"{prefix}.worker.{node}.stopped",
    ]
    if results:
        wanted.append(subjects.results_all(prefix) if node == "*" else subjects.results_of_node(prefix, node))
    done = asyncio.Event()
    seen = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal seen
        try:
            body: Any = codec.decode(msg.data, json_mode=codec.is_json(msg.headers))
        except Exception as error:
            body = {"undecodable": str(error)}
        print(dumps({"subject": msg.subject, **body}, indent=None), file=out, flush=True)
        seen += 1
        if count is not None and seen >= count:
            done.set()

    subs = [await nc.subscribe(subject, cb=on_msg) for subject in wanted]
    await nc.flush()
    try:
        await asyncio.wait_for(done.wait(), duration)
    except TimeoutError:
        pass
    finally:
        for sub in subs:
            await sub.unsubscribe()
    return EXIT_OK


async def dlq_mover(
    nc: Client,
    prefix: str,
    *,
    stream: str = subjects.JOBS_STREAM,
    dlq_stream: str = "RORY_DLQ",
    duration: float | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run the dead-letter mover under this connection's identity (a Manager/operator, never a node).

    It moves the commands the server stopped redelivering (MAX_DELIVERIES advisories of ``stream``)
    to ``dlq_stream`` and answers them with ``500 MAX_DELIVERIES`` on
    ``<p>.results.dlq-mover.<job_id>``; it needs stream-wide message access, which the per-node
    credentials deliberately lack (docs/reliability.md, "Dead letters"). Runs for ``duration``
    seconds, or until cancelled.
    """
    from worker.runtime.jetstream import DeadLetterMover

    mover = DeadLetterMover(nc, prefix=prefix, stream=stream, dlq_stream=dlq_stream)
    await mover.start()
    await nc.flush()
    print(f"moving abandoned commands of {stream} to {dlq_stream}", file=out, flush=True)
    try:
        if duration is None:
            await asyncio.Event().wait()  # until cancelled (SIGINT/SIGTERM)
        else:
            await asyncio.sleep(duration)
    finally:
        await mover.close()
        print(f"moved {mover.moved} command(s)", file=out, flush=True)
    return EXIT_OK


def load_params(value: str | None) -> dict[str, Any]:
    """``--params``: inline JSON, ``@file.json``, a path to a .json file, or ``-`` for stdin."""
    if not value:
        return {}
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        text = Path(value[1:]).read_text()
    elif value.endswith(".json") and Path(value).is_file():
        text = Path(value).read_text()
    else:
        text = value
    params = json.loads(text)
    if not isinstance(params, dict):
        raise ValueError("--params must be a JSON object")
    return params


def command_body(op: str, params: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A valid Command map with a fresh id; ``fields`` override or add envelope fields.

    ``req`` sends it, and the tests build theirs with it (tests/ops.py), so both speak the same envelope.
    """
    body: dict[str, Any] = {
        "v": 1,
        "id": uuid.uuid4().hex,
        "op": op,
        "ts": time.time(),
        "params": params or {},
    }
    body.update(fields)
    return body


async def req(
    nc: Client,
    prefix: str,
    op: str,
    *,
    node: str | None = None,
    params: dict[str, Any] | None = None,
    job_id: str | None = None,
    deadline_s: float | None = None,
    json_mode: bool = False,
    timeout: float = 60.0,
    out: TextIO = sys.stdout,
) -> int:
    """Send one Command (to a node, or to the pool when ``node`` is None) and print the Reply."""
    subject = subjects.node_cmd(prefix, node, op) if node else subjects.pool_cmd(prefix, op)
    body = command_body(op, params)
    if job_id:
        body["job_id"] = job_id
    if deadline_s:
        body["deadline_s"] = deadline_s
    headers = {codec.CONTENT_TYPE: codec.content_type(json_mode)}
    msg = await _ask(
        nc, subject, codec.encode(body, json_mode=json_mode), timeout, headers, out,
        nobody=f"no worker is listening on {subject}",
        late=f"no reply on {subject} within {timeout:g}s",
    )
    if msg is None:
        return EXIT_NO_ANSWER
    reply = codec.decode(msg.data, json_mode=codec.is_json(msg.headers), max_bytes=64 * 1024 * 1024)
    print(dumps(reply), file=out)
    return EXIT_OK if reply.get("ok") else EXIT_ERROR_REPLY


__all__ = [
    "command_body",
    "dlq_mover",
    "gather",
    "health",
    "info",
    "load_params",
    "ls",
    "req",
    "stats",
    "watch",
]
