"""Durable intake benchmark: what the JetStream path costs compared with core request-reply.

    python benchmarks/bench_jetstream.py                     # defaults: 500 commands, capacity 2
    python benchmarks/bench_jetstream.py --commands 5000 --capacity 4

One embedded nats-server (JetStream on disk), one in-process worker in RORY_JOBS_MODE=jetstream
with the test operations. Series:

* latency, one command at a time: core request-reply vs publish-to-stream -> Reply on results
  (the durable path adds a stream write, a record write, an ack round trip);
* throughput, a burst of no-op commands: core requests (kept ``capacity`` in flight, as a client
  would to avoid 503 BUSY) vs all commands published at once to the stream (the worker pulls only
  what it can start);
* answering a redelivery from its record vs computing it (``test.sleep`` of 50 ms).

Numbers only, no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _command(op: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"v": 1, "id": uuid.uuid4().hex, "op": op, "ts": time.time(), "params": params or {}}


def _summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"mean {statistics.fmean(ordered) * 1e3:8.3f} ms  p50 {statistics.median(ordered) * 1e3:8.3f} ms  "
        f"p99 {p99 * 1e3:8.3f} ms"
    )


class Answers:
    """Futures for Replies on ``<p>.results.>``, by command id."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def expect(self, command_id: str) -> asyncio.Future[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        self.waiting[command_id] = future
        return future

    async def on_msg(self, msg: Any) -> None:
        from schemas import codec

        reply = codec.decode(msg.data, json_mode=False)
        future = self.waiting.pop(reply.get("in_reply_to", ""), None)
        if future is not None and not future.done():
            future.set_result(reply)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=500, help="commands per burst")
    parser.add_argument("--latency", type=int, default=200, help="sequential commands per latency series")
    parser.add_argument("--capacity", type=int, default=2)
    args = parser.parse_args()

    import nats

    from schemas import codec, subjects
    from tests.ops import MemoryStore, test_registry
    from worker.embedded import EmbeddedNats
    from worker.runtime import jetstream
    from worker.runtime.service import WorkerService
    from worker.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        server = await EmbeddedNats(Path(tmp) / "nats").start()
        prefix = "bench"
        settings = load_settings(
            nats_urls=[server.url],
            node_id="bench-node",
            rory_subject_prefix=prefix,
            rory_jobs_mode="jetstream",
            worker_capacity=args.capacity,
            jetstream_ack_wait=30,
            storage_backend="local",
            storage_path=str(Path(tmp) / "css"),
            log_path=str(Path(tmp) / "log"),
            env_file_path=str(Path(tmp) / "none.env"),
        )
        worker = WorkerService(settings, test_registry(), store=MemoryStore())
        await worker.start()
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        answers = Answers()
        await nc.subscribe(subjects.results_all(prefix), cb=answers.on_msg)
        await nc.flush()
        core_subject = subjects.pool_cmd(prefix, "test.noop")
        try:
            # warm up both paths
            for _ in range(20):
                await nc.request(core_subject, codec.encode(_command("test.noop")), timeout=5)
                body = _command("test.noop")
                waiter = answers.expect(body["id"])
                await jetstream.publish_job(js, prefix, None, body)
                await asyncio.wait_for(waiter, 10)

            core_lat, js_lat = [], []
            for _ in range(args.latency):
                started = time.perf_counter()
                await nc.request(core_subject, codec.encode(_command("test.noop")), timeout=5)
                core_lat.append(time.perf_counter() - started)
                body = _command("test.noop")
                waiter = answers.expect(body["id"])
                started = time.perf_counter()
                await jetstream.publish_job(js, prefix, None, body)
                await asyncio.wait_for(waiter, 10)
                js_lat.append(time.perf_counter() - started)

            # core burst: capacity requests in flight
            n = args.commands
            queue = list(range(n))
            started = time.perf_counter()

            async def requester() -> None:
                while queue:
                    queue.pop()
                    await nc.request(core_subject, codec.encode(_command("test.noop")), timeout=10)

            await asyncio.gather(*(requester() for _ in range(args.capacity)))
            core_burst = time.perf_counter() - started

            bodies = [_command("test.noop") for _ in range(n)]
            waiters = [answers.expect(body["id"]) for body in bodies]
            started = time.perf_counter()
            await asyncio.gather(*(jetstream.publish_job(js, prefix, None, body) for body in bodies))
            published = time.perf_counter() - started
            await asyncio.wait_for(asyncio.gather(*waiters), 120)
            js_burst = time.perf_counter() - started

            # computed vs answered from the record
            body = _command("test.sleep", {"seconds": 0.05})
            waiter = answers.expect(body["id"])
            started = time.perf_counter()
            await jetstream.publish_job(js, prefix, None, body)
            await asyncio.wait_for(waiter, 10)
            computed = time.perf_counter() - started
            waiter = answers.expect(body["id"])
            again = subjects.jobs_pool(prefix, "test.sleep")
            started = time.perf_counter()
            await js.publish(again, codec.encode(body), headers={"Nats-Msg-Id": body["id"] + "-again"})
            await asyncio.wait_for(waiter, 10)
            from_record = time.perf_counter() - started
        finally:
            await nc.close()
            await worker.stop(grace=2)
            await server.stop()

    print(f"durable intake benchmark: capacity {args.capacity}, {args.commands} commands per burst")
    print(f"latency, one at a time  core request-reply  {_summary(core_lat)}")
    print(f"latency, one at a time  jetstream -> results {_summary(js_lat)}")
    print(
        f"latency ratio (mean): jetstream/core = {statistics.fmean(js_lat) / statistics.fmean(core_lat):.2f}x"
    )
    print(f"burst, core ({args.capacity} in flight): {n / core_burst:8.0f} commands/s")
    print(
        f"burst, jetstream (all published at once, {published:.2f}s to publish): "
        f"{n / js_burst:8.0f} commands/s"
    )
    print(
        f"test.sleep 50 ms computed: {computed * 1e3:.1f} ms; "
        f"redelivery answered from record: {from_record * 1e3:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
