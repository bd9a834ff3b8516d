"""Pool scaling benchmark: W worker processes of S slots each, many commands on the pool.

    python benchmarks/bench_pool.py                                   # this machine: 1x2 vs 2x1
    python benchmarks/bench_pool.py --workers 1,4,8,12 --slots 1 --commands 256 --n 50000
    python benchmarks/bench_pool.py --modes core --gate on,off        # with and without the gate

One embedded nats-server per series; W worker processes (``python -m worker run`` through this
script's ``--serve-worker``, which can switch the pool gate off to measure the old behaviour), each
with WORKER_CAPACITY=S; one dataset (n x a Gaussian blobs) stored once in the shared local storage;
``--commands`` jobs of ``bench.step1`` on the pool. Each job reads the dataset (the worker's read
cache keeps it) and runs ``--iterations`` rounds of nearest-centroid assignment and centroid update
in the compute pool: a CPU-bound stand-in for SKMeans step 1 with the same shape of work (an array
read from storage, shipped to a compute process, a few hundred milliseconds of numpy).

Modes:

* ``core``: request-reply on ``<p>.pool.cmd.bench.step1``. The client keeps ``--inflight`` requests
  out (default: every slot of the series, as a client that knows the pool's capacity would) and
  re-sends a command with the same id after a short jittered back-off when it gets 503 BUSY (a
  *bounce*: a worker was offered a command it could not start) or no responders (every worker full:
  with the gate, the queue group is empty; nothing ran).
* ``jetstream``: every command published at once to the jobs stream; workers pull what they can start.
  BUSY does not reach the client there (the worker naks it); the column counts error Replies.

Gate variants (``--gate``, core mode): ``on`` = worker/runtime/pool_gate.py as shipped; ``off`` = the
old behaviour (pool subscription always on, BUSY at once); ``nopark`` = the gate without parking (a
command caught in the race is answered BUSY at once); ``park=S`` = the gate with PARK_S = S seconds.

Printed: commands/s (the median run of ``--rounds``, and the best), bounces, no-responder refusals,
slot occupancy (worker-side seconds of the runs over slots x wall seconds: how well the commands
were spread, less sensitive than commands/s to other load on a shared machine), and the ratio
against the first series of the
same mode and gate (run it with W=1 first), beside the goals: on 16 cores 8 workers >= 6.5x one and
12 >= 9x; on 2 cores 2 workers x 1 slot >= 0.9x 1 worker x 2 slots; no bounce at all with the gate.
Numbers only, no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PREFIX = "benchpool"
DATASET = "benchpooldata"


# ----------------------------------------------------------------------------- worker side
def step1(data: np.ndarray, k: int, seed: int, iterations: int) -> list[int]:
    """Nearest-centroid assignment and centroid update, ``iterations`` times (runs in the pool)."""
    rng = np.random.default_rng(seed)
    centroids = data[rng.choice(data.shape[0], size=k, replace=False)]
    labels = np.zeros(data.shape[0], dtype=np.int64)
    for _ in range(max(1, iterations)):
        distances = ((data[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        labels = distances.argmin(axis=1)
        for j in range(k):
            members = data[labels == j]
            if len(members):
                centroids[j] = members.mean(axis=0)
    return np.bincount(labels, minlength=k).tolist()


def hold(data: np.ndarray, seconds: float) -> int:
    """``--work sleep``: occupy the compute process without using a CPU (runs in the pool)."""
    time.sleep(seconds)
    return int(data.shape[0])


def register(registry: Any) -> None:
    """``--operations benchmarks.bench_pool:register``: ``bench.step1``."""
    from pydantic import BaseModel, ConfigDict, Field

    from worker.runtime.registry import Operation

    class Step1Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dataset: str
        k: int = Field(5, ge=1)
        seed: int = 0
        iterations: int = Field(10, ge=1)
        sleep: float = Field(0.0, ge=0.0)

    async def handler(ctx: Any, params: Step1Params) -> dict[str, Any]:
        data = await ctx.store.get_ndarray(params.dataset)
        if params.sleep > 0:
            return {"rows": await ctx.compute(hold, data, params.sleep)}
        counts = await ctx.compute(step1, data, params.k, params.seed, params.iterations)
        return {"counts": counts}

    registry.preload("benchmarks.bench_pool")
    registry.register(Operation("bench.step1", Step1Params, handler, "SKMeans step 1 stand-in"))


def serve_worker(gate: str) -> int:
    """``--serve-worker GATE``: ``rory-worker run`` with the pool gate on, off or without parking."""
    from worker.runtime import pool_gate

    if gate in ("off", "nopark"):
        pool_gate.PARK_S = 0.0  # a command reaching a full worker is answered BUSY at once
    elif gate.startswith("park="):
        pool_gate.PARK_S = float(gate.removeprefix("park="))
    if gate == "off":
        # the subscription never follows the slots: the behaviour before the pool gate
        pool_gate.PoolGate._on_slots = lambda self: None  # type: ignore[method-assign]
    from worker.cli import main as worker_main

    return worker_main(["run", "--operations", "benchmarks.bench_pool:register"])


# ----------------------------------------------------------------------------- client side
@dataclass
class Row:
    mode: str
    gate: str
    workers: int
    slots: int
    commands: int
    seconds: float
    bounces: int
    refused: int
    errors: int
    busy: float  # slot occupancy: worker-side seconds of the runs / (slots x wall seconds)
    best: float = 0.0  # best throughput over the rounds (the median run is the row's own)

    @property
    def rate(self) -> float:
        return self.commands / self.seconds


def _command(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    params: dict[str, Any] = {"dataset": DATASET, "k": args.k, "seed": seed, "iterations": args.iterations}
    if args.work == "sleep":
        params["sleep"] = args.sleep
    return {"v": 1, "id": uuid.uuid4().hex, "op": "bench.step1", "ts": time.time(), "params": params}


async def _start_workers(
    url: str, tmp: Path, args: argparse.Namespace, mode: str, gate: str, workers: int, slots: int, nc: Any
) -> list[Any]:
    from schemas import subjects

    started: asyncio.Queue[Any] = asyncio.Queue()
    sub = await nc.subscribe(subjects.started_all(PREFIX), cb=started.put)
    await nc.flush()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "NATS_URLS": url,
        "RORY_SUBJECT_PREFIX": PREFIX,
        "RORY_JOBS_MODE": mode,
        "WORKER_CAPACITY": str(slots),
        "STORAGE_BACKEND": "local",
        "STORAGE_PATH": str(tmp / "css"),
        "LOG_PATH": str(tmp / "log"),
        "LOG_LEVEL": "WARNING",
        "HEARTBEAT_INTERVAL": "5",
        "JETSTREAM_ACK_WAIT": "60",
    }
    procs = []
    log = open(tmp / "workers.err", "ab")  # noqa: SIM115 - the children write it until they stop
    for i in range(workers):
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).resolve()), "--serve-worker", gate,
                env={**env, "NODE_ID": f"pool-{i}"}, cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )
        )
    log.close()
    names: set[str] = set()
    loop = asyncio.get_running_loop()
    until = loop.time() + 120
    while len(names) < workers:
        try:
            msg = await asyncio.wait_for(started.get(), max(0.1, until - loop.time()))
        except TimeoutError:
            await _stop_workers(procs)
            tail = (tmp / "workers.err").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{workers - len(names)} worker(s) did not start:\n{tail}") from None
        names.add(msg.subject)
    await sub.unsubscribe()
    return procs


async def _stop_workers(procs: list[Any]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _core_run(
    nc: Any, args: argparse.Namespace, total_slots: int
) -> tuple[float, int, int, int, float]:
    """Every command through the pool with ``inflight`` outstanding; BUSY and no responders re-sent."""
    from nats.errors import NoRespondersError

    from schemas import codec, subjects

    subject = subjects.pool_cmd(PREFIX, "bench.step1")
    inflight = args.inflight or total_slots
    bodies = [_command(args, seed) for seed in range(args.commands)]
    queue = list(reversed(bodies))
    bounces = refused = errors = 0
    served = 0.0  # worker-side seconds of the successful runs (Reply.timings.total)

    async def client() -> None:
        nonlocal bounces, refused, errors, served
        while queue:
            body = queue.pop()
            delay = args.backoff
            while True:
                try:
                    msg = await nc.request(subject, codec.encode(body), timeout=args.timeout)
                except NoRespondersError:
                    refused += 1
                else:
                    reply = codec.decode(msg.data)
                    if reply["ok"]:
                        served += reply["timings"]["total"]
                        break
                    if reply["error"]["type"] != "BUSY":
                        errors += 1
                        break
                    bounces += 1
                await asyncio.sleep(delay * (0.5 + 0.5 * random.random()))
                delay = min(args.max_backoff, delay * 2)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(inflight)))
    return time.perf_counter() - started, bounces, refused, errors, served


async def _jetstream_run(nc: Any, args: argparse.Namespace) -> tuple[float, int, int, int, float]:
    """Every command published at once to the jobs stream; done when every Reply is on results."""
    from schemas import codec, subjects
    from worker.runtime import jetstream

    bodies = [_command(args, seed) for seed in range(args.commands)]
    waiting = {body["id"] for body in bodies}
    done = asyncio.Event()
    errors = 0
    served = 0.0

    async def on_result(msg: Any) -> None:
        nonlocal errors, served
        reply = codec.decode(msg.data)
        if reply.get("in_reply_to") in waiting:
            waiting.discard(reply["in_reply_to"])
            errors += not reply["ok"]
            served += reply["timings"]["total"]
            if not waiting:
                done.set()

    sub = await nc.subscribe(subjects.results_all(PREFIX), cb=on_result)
    await nc.flush()
    js = nc.jetstream()
    started = time.perf_counter()
    await asyncio.gather(*(jetstream.publish_job(js, PREFIX, None, body, timeout=30) for body in bodies))
    await asyncio.wait_for(done.wait(), args.timeout * args.commands)
    seconds = time.perf_counter() - started
    await sub.unsubscribe()
    return seconds, 0, 0, errors, served


async def _series(args: argparse.Namespace, mode: str, gate: str, workers: int, slots: int) -> Row:
    import nats

    from schemas import codec, subjects
    from worker.embedded import EmbeddedNats
    from worker.storage import LocalStore

    with tempfile.TemporaryDirectory(prefix="bench-pool-") as name:
        tmp = Path(name)
        server = await EmbeddedNats(tmp / "nats", jetstream=mode == "jetstream").start()
        rng = np.random.default_rng(0)
        centres = rng.uniform(-10, 10, size=(args.k, args.a))
        data = centres[rng.integers(0, args.k, size=args.n)] + rng.normal(0, 1.5, size=(args.n, args.a))
        store = LocalStore(tmp / "css", "rory")
        await store.put_ndarray(DATASET, data)
        await store.aclose()
        nc = await nats.connect(server.url)
        procs: list[Any] = []
        try:
            procs = await _start_workers(server.url, tmp, args, mode, gate, workers, slots, nc)
            # warm up every worker (its compute processes, its read cache) through its node subject
            warm = [
                nc.request(
                    subjects.node_cmd(PREFIX, f"pool-{i}", "bench.step1"),
                    codec.encode(_command(args, 0)),
                    timeout=120,
                )
                for i in range(workers)
                for _ in range(slots)
            ]
            await asyncio.gather(*warm, return_exceptions=True)
            await asyncio.sleep(0.2)
            if mode == "core":
                seconds, bounces, refused, errors, served = await _core_run(nc, args, workers * slots)
            else:
                seconds, bounces, refused, errors, served = await _jetstream_run(nc, args)
        finally:
            await nc.close()
            await _stop_workers(procs)
            await server.stop()
    busy = served / (workers * slots * seconds)
    return Row(mode, gate, workers, slots, args.commands, seconds, bounces, refused, errors, busy)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _goals(rows: list[Row]) -> list[str]:
    """The issue's goals, printed beside the figures that bear on them."""
    lines = []
    by_key: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        by_key.setdefault((row.mode, row.gate), []).append(row)
    for (mode, gate), group in by_key.items():
        base = group[0]
        for row in group[1:]:
            ratio = row.rate / base.rate
            label = f"{mode}/{gate}: {row.workers}x{row.slots} vs {base.workers}x{base.slots} = {ratio:.2f}x"
            if base.workers == 1 and base.slots == 2 and row.workers == 2 and row.slots == 1:
                lines.append(f"{label}; goal >= 0.90x (2 cores)")
            elif base.workers == 1 and base.slots == row.slots and row.workers in (8, 12):
                goal = {8: 6.5, 12: 9.0}[row.workers]
                lines.append(f"{label}; goal >= {goal:.1f}x (16 cores)")
            else:
                lines.append(label)
        if mode == "core":
            bounced = sum(row.bounces for row in group)
            goal = "; goal 0 while a slot is free" if gate == "on" else ""
            lines.append(f"{mode}/{gate}: {bounced} BUSY bounces in all{goal}")
    return lines


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts (first = baseline)")
    parser.add_argument("--slots", default="2,1", help="slots per worker: one value, or one per --workers")
    parser.add_argument("--commands", type=int, default=32, help="jobs per series")
    parser.add_argument("--modes", default="core,jetstream", help="core, jetstream or both")
    parser.add_argument("--gate", default="on,off", help="core-mode gate variants: on, off, nopark, park=S")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each series (median reported)")
    parser.add_argument("--n", type=int, default=20000, help="dataset rows")
    parser.add_argument("--a", type=int, default=8, help="dataset columns")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=30, help="assignment rounds per job (its cost)")
    parser.add_argument(
        "--work", choices=("cpu", "sleep"), default="cpu",
        help="cpu: the numpy step (real CPU contention); sleep: each job holds its compute process "
        "--sleep seconds without a CPU, which measures the spreading alone, immune to other load",
    )
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds per job with --work sleep")
    parser.add_argument("--inflight", type=int, default=0, help="core: requests out at once (0: all slots)")
    parser.add_argument("--backoff", type=float, default=0.01, help="core: first re-send delay, seconds")
    parser.add_argument("--max-backoff", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    args = parser.parse_args()

    workers = _ints(args.workers)
    slots = _ints(args.slots)
    if len(slots) == 1:
        slots = slots * len(workers)
    if len(slots) != len(workers):
        parser.error("--slots takes one value or one per --workers entry")
    modes = [m for m in args.modes.split(",") if m]
    gates = [g for g in args.gate.split(",") if g]
    runs: dict[tuple[str, str, int, int], list[Row]] = {}
    for mode in modes:
        for gate in gates if mode == "core" else ["on"]:
            for _ in range(args.rounds):  # configurations alternate, so machine noise hits them alike
                for w, s in zip(workers, slots, strict=True):
                    row = await _series(args, mode, gate, w, s)
                    runs.setdefault((mode, gate, w, s), []).append(row)
                    print(
                        f"  {mode:9} gate {gate:9} {w:3} x {s} slots: {row.rate:8.2f} commands/s "
                        f"({row.seconds:.2f} s), {row.bounces} BUSY, {row.refused} no-responders, "
                        f"slots {row.busy:.0%} occupied",
                        flush=True,
                    )
    rows = [_median(group) for group in runs.values()]
    work = (
        f"sleep {args.sleep:g} s each in the compute process, n={args.n}"
        if args.work == "sleep"
        else f"n={args.n}, a={args.a}, k={args.k}, {args.iterations} iterations"
    )

    print(
        f"\npool benchmark: {os.cpu_count()} CPUs, {args.commands} commands of bench.step1 "
        f"({work}), median of {args.rounds} "
        "rounds; BUSY, no-resp and errors summed over the rounds\n"
    )
    print(
        f"{'mode':10} {'gate':10} {'workers':>7} {'slots':>5} {'cmd/s':>9} {'best':>9} {'seconds':>8} "
        f"{'BUSY':>6} {'no-resp':>7} {'errors':>6} {'occup.':>6} {'ratio':>6}"
    )
    bases: dict[tuple[str, str], Row] = {}
    for row in rows:
        base = bases.setdefault((row.mode, row.gate), row)
        print(
            f"{row.mode:10} {row.gate:10} {row.workers:7} {row.slots:5} {row.rate:9.2f} {row.best:9.2f} "
            f"{row.seconds:8.2f} {row.bounces:6} {row.refused:7} {row.errors:6} "
            f"{row.busy:6.0%} {row.rate / base.rate:6.2f}"
        )
    print()
    for line in _goals(rows):
        print(line)
    return 0


def _median(group: list[Row]) -> Row:
    """The run of median throughput, with the counts of every run added up."""
    ordered = sorted(group, key=lambda row: row.rate)
    middle = ordered[len(ordered) // 2]
    return Row(
        middle.mode, middle.gate, middle.workers, middle.slots, middle.commands, middle.seconds,
        sum(row.bounces for row in group), sum(row.refused for row in group),
        sum(row.errors for row in group), middle.busy, best=ordered[-1].rate,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-worker"]:  # a worker process: its own event loop, not main()'s
        sys.exit(serve_worker(sys.argv[2]))
    sys.exit(asyncio.run(main()))
