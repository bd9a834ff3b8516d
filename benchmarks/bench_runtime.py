"""Runtime benchmark: health latency (idle and with every compute slot busy) and command dispatch
overhead against a bare nats-py request-reply, on one embedded nats-server, in one run.

    python benchmarks/bench_runtime.py                  # defaults: 2000 requests, capacity 2
    python benchmarks/bench_runtime.py --requests 10000 --capacity 4

The worker runs as a real ``rory-worker`` process, the bare responder as another process (a plain
nats-py queue subscription answering a fixed msgpack map), the client in this process, so both
sides pay the same process boundaries. Goals: health p99 under load < 10 ms; no-op dispatch mean
within 1.2x of the bare request-reply. Numbers only, no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PREFIX = "bench"
NODE = "bench-node"


# ----------------------------------------------------------------------------- worker side
def register(registry) -> None:  # type: ignore[no-untyped-def]
    """``--operations benchmarks.bench_runtime:register``: bench.noop and bench.burn.

    The CPU burner is the test operations' (tests/ops.py), as benchmarks/bench_jetstream.py borrows
    them too; the slots preload that module so a burn starts at once.
    """
    from pydantic import BaseModel, ConfigDict

    from tests.ops import burn
    from worker.runtime.registry import Operation

    class NoParams(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class BurnParams(BaseModel):
        seconds: float = 1.0

    async def noop(ctx, params):  # type: ignore[no-untyped-def]
        return {}

    async def cpu(ctx, params):  # type: ignore[no-untyped-def]
        return {"loops": await ctx.compute(burn, params.seconds)}

    registry.preload("tests.ops")
    registry.register(Operation("bench.noop", NoParams, noop, "no-op"))
    registry.register(Operation("bench.burn", BurnParams, cpu, "CPU-bound op in the pool"))


async def serve_bare(url: str, subject: str) -> None:
    """Bare nats-py responders, the baselines the worker's dispatch is compared with.

    ``<subject>``: the minimal request-reply (a tiny map, no headers, one publish).
    ``<subject>-contract``: what the contract obliges any responder to send, without our runtime: a
    Reply-sized msgpack map with its Content-Type header, plus the copy on ``<p>.results.<node>.<job_id>``.
    """
    import msgpack
    import nats

    nc = await nats.connect(url)
    answer = msgpack.packb({"v": 1, "ok": True, "result": {}})
    reply_like = msgpack.packb(
        {
            "v": 1,
            "id": "x" * 24,
            "in_reply_to": "y" * 32,
            "job_id": "y" * 32,
            "op": "bench.noop",
            "node_id": NODE,
            "ok": True,
            "result": {},
            "timings": {
                "queued": 1e-5,
                "storage_get": 0.0,
                "compute": 0.0,
                "storage_put": 0.0,
                "total": 2e-5,
            },
        }
    )
    headers = {"Content-Type": "application/msgpack"}

    async def on_minimal(msg):  # type: ignore[no-untyped-def]
        await msg.respond(answer)

    async def on_contract(msg):  # type: ignore[no-untyped-def]
        await nc.publish(msg.reply, reply_like, headers=headers)
        await nc.publish(f"{PREFIX}.results.{NODE}.{'y' * 32}", reply_like, headers=headers)

    await nc.subscribe(subject, queue="bare", cb=on_minimal)
    await nc.subscribe(f"{subject}-contract", queue="bare", cb=on_contract)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


# ----------------------------------------------------------------------------- client side
def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3

    return {
        "mean": statistics.fmean(ordered) * 1e3,
        "p50": pct(0.5),
        "p99": pct(0.99),
        "max": ordered[-1] * 1e3,
    }


async def _latencies(nc, subject: str, payload_fn, n: int, replies=None) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(n):
        payload = payload_fn()
        started = time.perf_counter()
        msg = await nc.request(subject, payload, timeout=5)
        samples.append(time.perf_counter() - started)
        if replies is not None:
            replies.append(msg.data)
    return samples


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measured series")
    parser.add_argument("--health-requests", type=int, default=500)
    parser.add_argument("--capacity", type=int, default=2, help="WORKER_CAPACITY (pool slots)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/worker rounds")
    parser.add_argument("--serve-bare", nargs=2, metavar=("URL", "SUBJECT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        await serve_bare(*args.serve_bare)
        return 0

    import nats

    from dataowner.demo import spawn_worker
    from schemas import codec, subjects
    from worker.embedded import EmbeddedNats, terminate

    tmp = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    server = await EmbeddedNats(tmp / "nats", jetstream=False).start()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "NATS_URLS": server.url,
        "NODE_ID": NODE,
        "RORY_SUBJECT_PREFIX": PREFIX,
        "WORKER_CAPACITY": str(args.capacity),
        "STORAGE_BACKEND": "local",
        "STORAGE_PATH": str(tmp / "css"),
        "LOG_PATH": str(tmp / "log"),
        "LOG_LEVEL": "WARNING",
        "HEARTBEAT_INTERVAL": "1",
    }
    bare_subject = f"{PREFIX}.bare"
    # Started as the demo starts its workers (its output kept in <tmp>/worker.log).
    worker = await spawn_worker(
        tmp / "worker.log", env, "--operations", "benchmarks.bench_runtime:register", cwd=ROOT
    )
    bare = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve-bare",
        server.url,
        bare_subject,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    nc = await nats.connect(server.url)
    try:
        started = await nc.subscribe(subjects.started(PREFIX, NODE))
        assert bare.stdout is not None
        await asyncio.wait_for(bare.stdout.readline(), 30)
        await started.next_msg(timeout=60)
        health_subject = subjects.health(PREFIX, NODE)
        noop_subject = subjects.node_cmd(PREFIX, NODE, "bench.noop")

        def noop_payload() -> bytes:
            return codec.encode(
                {"v": 1, "id": uuid.uuid4().hex, "op": "bench.noop", "ts": time.time(), "params": {}}
            )

        # warm up both paths (and the worker's pool)
        await _latencies(nc, bare_subject, noop_payload, 300)
        await _latencies(nc, noop_subject, noop_payload, 300)
        await _latencies(nc, health_subject, lambda: b"", 50)

        bare_samples: list[float] = []
        contract_samples: list[float] = []
        worker_samples: list[float] = []
        replies: list[bytes] = []
        per_round = max(1, args.requests // args.rounds)
        for _ in range(args.rounds):  # alternate so machine noise hits every series alike
            bare_samples += await _latencies(nc, bare_subject, noop_payload, per_round)
            contract_samples += await _latencies(nc, f"{bare_subject}-contract", noop_payload, per_round)
            worker_samples += await _latencies(nc, noop_subject, noop_payload, per_round, replies)
        timings = [codec.decode(data)["timings"] for data in replies]
        queued = _summary([t["queued"] for t in timings])
        inside = _summary([t["total"] for t in timings])

        health_idle = await _latencies(nc, health_subject, lambda: b"", args.health_requests)
        burn_subject = subjects.node_cmd(PREFIX, NODE, "bench.burn")
        seconds = max(5.0, args.health_requests * 0.004)
        burns = [
            asyncio.create_task(
                nc.request(
                    burn_subject,
                    codec.encode(
                        {
                            "v": 1,
                            "id": uuid.uuid4().hex,
                            "op": "bench.burn",
                            "ts": time.time(),
                            "params": {"seconds": seconds},
                        }
                    ),
                    timeout=seconds + 30,
                )
            )
            for _ in range(args.capacity)
        ]
        await asyncio.sleep(0.5)  # let every slot start burning
        health_busy = await _latencies(nc, health_subject, lambda: b"", args.health_requests)
        status = codec.decode((await nc.request(health_subject, b"", timeout=5)).data, json_mode=True)[
            "status"
        ]
        for task in burns:
            await task
    finally:
        await nc.close()
        for proc in (worker, bare):
            if proc.returncode is None:
                await terminate(proc, 15)
        await server.stop()

    rows = [
        ("bare nats-py request-reply (minimal)", _summary(bare_samples)),
        ("worker no-op command", _summary(worker_samples)),
        ("bare nats-py, contract-equivalent reply", _summary(contract_samples)),
        ("health, idle", _summary(health_idle)),
        (f"health, {args.capacity} slots burning CPU ({status})", _summary(health_busy)),
    ]
    print(
        f"\nruntime benchmark: {os.cpu_count()} CPUs, capacity {args.capacity}, "
        f"{len(bare_samples)} commands per series, {args.health_requests} health requests per series\n"
    )
    print(f"{'series':48} {'mean ms':>9} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for name, s in rows:
        print(f"{name:48} {s['mean']:9.3f} {s['p50']:9.3f} {s['p99']:9.3f} {s['max']:9.3f}")
    bare_s, worker_s = rows[0][1], rows[1][1]
    ratio_mean = worker_s["mean"] / bare_s["mean"]
    ratio_p50 = worker_s["p50"] / bare_s["p50"]
    print(
        f"\nworker-side (from Reply.timings): queued p50 {queued['p50'] * 1e3:.1f} us, "
        f"receipt-to-reply p50 {inside['p50'] * 1e3:.1f} us, p99 {inside['p99'] * 1e3:.1f} us"
    )
    print(f"dispatch overhead: worker/bare = {ratio_mean:.2f}x (mean), {ratio_p50:.2f}x (p50); goal <= 1.20x")
    contract_s = rows[2][1]
    print(
        f"runtime overhead alone: worker/contract-equivalent = {worker_s['mean'] / contract_s['mean']:.2f}x "
        f"(mean), {worker_s['p50'] / contract_s['p50']:.2f}x (p50)"
    )
    print(f"health p99 under load: {rows[4][1]['p99']:.3f} ms; goal < 10 ms")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
