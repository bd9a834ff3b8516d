"""End-to-end SKMeans through NATS and storage versus the same rounds with the worker in process.

    python benchmarks/bench_e2e.py                 # 100,000 x 8, k=5, 10 rounds (a few minutes)
    python benchmarks/bench_e2e.py --n 20000       # smaller
    python benchmarks/bench_e2e.py --in-process    # worker inside this process (pool still separate)
    python benchmarks/bench_e2e.py --store-cache-mb 0   # the worker's store exactly as the service opens it
    python benchmarks/bench_e2e.py --protocols skmeans  # SKMeans only (no per-protocol table rows)

Both sides run the same driver (``dataowner/drivers/secure_kmeans.py``) for exactly ``--rounds``
rounds (tolerance < 0: no early stop), so the totals compare the same work: Liu encryption + UDM
and their upload, then per round the encrypted phase, the owner's decryption of the k x a shift and
the UDM update (no step 2 after the last round, as in a real job).

End to end = data-owner client (``dataowner.client``) -> embedded nats-server -> a worker process
(``python -m worker run``, local storage in a temp dir) with its compute pool; every round the
worker reads the encrypted data and the UDM from storage and writes the new state back.
In process = the same client over ``dataowner.inprocess_port.InProcessPort``: the worker's
dispatcher and handlers in this process, compute inline (no bus, no pool), local storage with the
same read cache.

Storage read cache: ``--store-cache-mb`` (default 512) sizes the worker's read cache
(``worker.storage.cache.CachedStore``; the service opens it with ``STORAGE_CACHE_BYTES``, which the
flag sets for the worker process) and the in-process side's; 0 runs the worker's store exactly as the
service opens it by default. A secure k-means round reads the encrypted data and the UDM every round:
give the cache room for both (n = 1,000,000, a = 8, k = 5, m = 3: 512 MB of inputs, so
``--store-cache-mb 1024``), or every round reads them from disk again.

Printed: total seconds and their ratio, the owner's preparation, the mean round and the round ratio
beside its goals (:func:`round_goal`), and the per-round overhead split into messaging
(request/reply time not spent in the worker), worker storage (get + put), worker queueing, and the
owner's own storage + decryption between commands; "the core" is the in-process worker's compute
time (the same core functions, inline). Small jobs compute on the worker's event loop
(``worker.handlers.secure_kmeans.INLINE_COMPUTE_BYTES``), so "worker compute" is pool or inline time.
The goals are printed, never asserted: figures on a shared machine are noisy.

Then one row per protocol of ``--protocols`` (default all four of the SKMeans family): the mean
round in process and end to end, their ratio, and whether the two runs' labels agree. The SKMeans
row is the job above; DBSKMeans runs at ``--n`` x ``--rounds`` too, the CKKS variants (one
ciphertext per record: costly, keep it small) at ``--pqc-n`` x ``--pqc-rounds``. Every protocol
gets its own warm-up job on both sides, and all of them run on the same worker. FDH-OPE (the double-
blind variants) and CKKS encrypt with fresh randomness, so their labels may legitimately differ
between two runs near a cluster boundary: the column shows the share that agrees; only SKMeans'
labels decide the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from dataowner.client import DataOwnerClient
    from dataowner.job import JobReport
    from dataowner.keys import OwnerKeys

#: --protocols name -> the DataOwnerClient method that runs it
PROTOCOLS: dict[str, str] = {
    "skmeans": "skmeans",
    "dbskmeans": "dbskmeans",
    "pqc-skmeans": "pqc_skmeans",
    "pqc-dbskmeans": "pqc_dbskmeans",
}
#: the protocols over CKKS row ciphertexts (their worker needs the public CKKS material)
CKKS_PROTOCOLS = frozenset({"pqc-skmeans", "pqc-dbskmeans"})
CKKS_PROFILE = "default-128"


@dataclass(frozen=True)
class Job:
    """One measured job: ``protocol`` (a key of :data:`PROTOCOLS`) over ``x`` for exactly ``rounds``."""

    protocol: str
    x: np.ndarray
    rounds: int


def _runner(client: DataOwnerClient, job: Job) -> Callable[..., Awaitable[JobReport]]:
    run: Callable[..., Awaitable[JobReport]] = getattr(client, PROTOCOLS[job.protocol])
    return run


async def warm_up(client: DataOwnerClient, job: Job, k: int) -> None:
    """A small job of the same protocol first: the worker's pool processes import numpy/the core
    (and TenSEAL) on their first task."""
    await _runner(client, job)(job.x[: max(k, 50)], k, max_iterations=2, tolerance=-1.0)


async def measure(client: DataOwnerClient, job: Job, k: int) -> JobReport:
    """The job itself: exactly ``job.rounds`` rounds (tolerance < 0: no early stop)."""
    return await _runner(client, job)(job.x, k, max_iterations=job.rounds, tolerance=-1.0)


def make_data(n: int, a: int, k: int, seed: int = 0) -> np.ndarray:
    """k Gaussian blobs in a dimensions, shuffled (first-k initial centroids mix the blobs)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(k, a))
    x = centres[rng.integers(0, k, size=n)] + rng.normal(0, 1.5, size=(n, a))
    return x


async def in_process(
    x: np.ndarray,
    k: int,
    keys: OwnerKeys,
    rounds: int,
    data_dir: Path,
    num_chunks: int | None,
    cache_mb: int,
    port: Callable[[Any], Any] | None = None,
) -> JobReport:
    """The same SKMeans job with the worker in this process (``InProcessPort``), warm-up first.

    ``port``: makes the worker's port from the (cached) store the owner shares; default
    ``InProcessPort`` (bench_growth.py passes one over a store that counts the worker's bytes)."""
    job = Job("skmeans", x, rounds)
    return (await in_process_jobs([job], k, keys, data_dir, num_chunks, cache_mb, port))[0]


async def in_process_jobs(
    jobs: Sequence[Job],
    k: int,
    keys: OwnerKeys,
    data_dir: Path,
    num_chunks: int | None,
    cache_mb: int,
    port: Callable[[Any], Any] | None = None,
    keys_path: Path | None = None,
) -> list[JobReport]:
    """:func:`in_process` for several jobs, one after the other, each after its own warm-up.
    ``keys_path``: the worker's public CKKS material (the CKKS protocols need it)."""
    from dataowner.client import DataOwnerClient
    from dataowner.inprocess_port import InProcessPort
    from worker.storage import LocalStore
    from worker.storage.cache import with_cache

    raw = LocalStore(data_dir / "inproc-storage", "rory")
    store = with_cache(raw, max(0, cache_mb) << 20)  # the owner shares the worker's store object
    make_port = port or partial(InProcessPort, keys_path=keys_path)
    client = DataOwnerClient(None, store, keys, port=make_port(store), num_chunks=num_chunks)
    try:
        reports = []
        for job in jobs:
            await warm_up(client, job, k)
            reports.append(await measure(client, job, k))
        return reports
    finally:
        await client.close()
        await raw.aclose()


async def _probe_health_main(url: str, subject: str, interval: float = 0.005) -> None:
    """``--probe-health URL SUBJECT``: request health every ``interval`` until stdin closes, then
    print the latencies (seconds, one per line). A process of its own, so neither the owner's work
    in the benchmark process nor its event loop delays the probes."""
    import nats

    nc = await nats.connect(url)
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.read)  # returns at EOF
    samples: list[float] = []
    while not stop.done():
        started = time.perf_counter()
        try:
            await nc.request(subject, b"", timeout=5)
            samples.append(time.perf_counter() - started)
        except Exception:
            samples.append(float("inf"))
        await asyncio.sleep(interval)
    await nc.close()
    print("\n".join(repr(v) for v in samples), flush=True)


class _HealthProbe:
    """Runs ``--probe-health`` in a child process for the duration of a ``with`` block."""

    def __init__(self, url: str, subject: str) -> None:
        self.url, self.subject = url, subject
        self.process: Any = None

    async def __aenter__(self) -> _HealthProbe:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--probe-health", self.url, self.subject,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.3)  # connected and probing
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def samples(self) -> list[float]:
        out, _ = await self.process.communicate(b"")
        return [float(line) for line in out.decode().split()]


def _install_store_cache(cache_mb: int) -> None:
    """Make the worker service wrap its store in the read cache (idempotent; 0 = leave it alone)."""
    if cache_mb <= 0:
        return
    from worker.runtime import service
    from worker.storage.cache import with_cache

    original = service.open_default_store

    async def open_cached(settings: Any) -> Any:
        return with_cache(await original(settings), cache_mb << 20)

    service.open_default_store = open_cached  # type: ignore[assignment]


def serve_worker(cache_mb: int) -> int:
    """``--serve-worker MB``: ``rory-worker run`` with the store cache installed (a child process)."""
    _install_store_cache(cache_mb)
    from worker.cli import main as worker_main

    return worker_main(["run"])


async def _start_worker_process(env: dict[str, str], log_file: Path, cache_mb: int, nc: Any) -> Any:
    """Like ``dataowner.demo.WorkerProcess.start`` but through ``--serve-worker`` (see above)."""
    from dataowner.demo import PREFIX, WorkerProcess
    from schemas import codec, subjects

    worker = WorkerProcess("bench-0", env, log_file)
    started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def on_started(msg: Any) -> None:
        if not started.done():
            started.set_result(codec.decode(msg.data))

    sub = await nc.subscribe(subjects.started(PREFIX, "bench-0"), cb=on_started)
    await nc.flush()
    with open(log_file, "ab") as log:
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--serve-worker", str(cache_mb),
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await asyncio.wait_for(started, 90)
    except TimeoutError:
        await worker.stop()
        raise RuntimeError(f"worker did not start:\n{worker.log_tail()}") from None
    finally:
        await sub.unsubscribe()
    return worker


@dataclass
class EndToEnd:
    """:func:`end_to_end`'s results: a report per job, the owner's keys, the first job's health
    probes, and where the worker's public CKKS material was written (None without CKKS jobs)."""

    reports: list[JobReport]
    keys: OwnerKeys
    health: list[float]
    keys_path: Path | None


async def end_to_end(
    jobs: Sequence[Job],
    k: int,
    data_dir: Path,
    in_process_worker: bool,
    num_chunks: int | None,
    cache_mb: int,
) -> EndToEnd:
    """The jobs through one worker over NATS, each after its own warm-up job; health is probed
    while the first one runs."""
    import nats

    from dataowner.client import DataOwnerClient
    from dataowner.demo import PREFIX, worker_env
    from dataowner.keys import OwnerKeys
    from schemas import subjects
    from worker.embedded import EmbeddedNats
    from worker.storage import LocalStore

    ckks = any(job.protocol in CKKS_PROTOCOLS for job in jobs)
    keys = OwnerKeys.generate(data_dir / "owner-keys", profiles=(CKKS_PROFILE,) if ckks else ())
    worker_keys = data_dir / "worker-keys"
    keys_path = worker_keys if ckks else None
    if keys_path is not None:  # before the worker starts: its KEYS_PATH
        keys.export_public(keys_path, CKKS_PROFILE)
    server = await EmbeddedNats(data_dir / "nats", log_file=data_dir / "nats.log").start()
    worker: Any = None
    nc = await nats.connect(server.url)
    store = LocalStore(data_dir / "storage", "rory")
    try:
        env = worker_env(data_dir, "bench-0", server.url, worker_keys)
        if cache_mb > 0:
            # The service wraps its store in a cache of STORAGE_CACHE_BYTES itself (worker/runtime/
            # service.py) and with_cache keeps the first wrapper: size that one, or the flag does
            # nothing (at n = 1,000,000 the dataset and the UDM alone fill the 512 MB default).
            env["STORAGE_CACHE_BYTES"] = str(cache_mb << 20)
        if in_process_worker:
            from dataowner.demo import start_in_process

            _install_store_cache(cache_mb)
            worker = await start_in_process(data_dir, "bench-0", server.url, worker_keys, "local")
        else:
            worker = await _start_worker_process(env, data_dir / "worker.log", cache_mb, nc)
        client = DataOwnerClient(
            nc, store, keys, prefix=PREFIX, node="bench-0", timeout=600, num_chunks=num_chunks
        )
        await warm_up(client, jobs[0], k)
        async with _HealthProbe(server.url, subjects.health(PREFIX, "bench-0")) as probe:
            reports = [await measure(client, jobs[0], k)]
            health = await probe.samples()
        for job in jobs[1:]:
            await warm_up(client, job, k)
            reports.append(await measure(client, job, k))
        return EndToEnd(reports, keys, health, keys_path)
    finally:
        if worker is not None:
            await worker.stop()
        await store.aclose()
        await nc.close()
        await server.stop()


def round_goal(n: int) -> tuple[str, float]:
    """Issue 14's goal for a round at ``n`` records: ("ms", 3.0) for small jobs (a round should cost
    about the bus), else ("x", ratio) of the end-to-end round to the in-process round."""
    if n <= 10_000:
        return "ms", 3.0
    if n < 1_000_000:
        return "x", 1.5
    return "x", 1.3


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


def _protocols(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = sorted(set(names) - set(PROTOCOLS))
    if unknown:
        choices = ", ".join(PROTOCOLS)
        raise argparse.ArgumentTypeError(f"unknown protocol(s) {', '.join(unknown)}; choose from {choices}")
    return list(dict.fromkeys(names))  # once each


def print_protocols(
    names: Sequence[str], jobs: Sequence[Job], local: Sequence[JobReport], e2e: Sequence[JobReport]
) -> None:
    """The per-protocol table: mean round in process and end to end, their ratio, labels agreeing."""
    print()
    print("per protocol: mean round in process vs end to end, ratio end-to-end / in-process")
    print(
        f"  {'protocol':16}{'n':>8}{'rounds':>8}{'in-process ms':>15}{'end-to-end ms':>15}{'ratio':>8}"
        "  labels agree"
    )
    index = {job.protocol: i for i, job in enumerate(jobs)}
    for name in names:
        i = index[name]
        here, there = statistics.mean(local[i].per_round_seconds), statistics.mean(e2e[i].per_round_seconds)
        agree = float(np.mean(local[i].labels == e2e[i].labels))
        print(
            f"  {name:16}{len(jobs[i].x):8d}{e2e[i].iterations:8d}{here * 1000:15.1f}{there * 1000:15.1f}"
            f"{there / here:7.2f}x  {'identical' if agree == 1.0 else f'{agree:.1%}'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--a", type=int, default=8, help="attributes (default 8)")
    parser.add_argument("--k", type=int, default=5, help="clusters (default 5)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds on both sides (default 10)")
    parser.add_argument("--num-chunks", type=int, default=None, help="chunks for uploads and results")
    parser.add_argument("--in-process", action="store_true", help="run the worker service in this process")
    parser.add_argument(
        "--store-cache-mb",
        type=int,
        default=512,
        help="worker storage read cache (MB; 0 = the store exactly as the service opens it)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="BLAS threads of the in-process side (default: as one compute slot, cores // 2; 0 = leave)",
    )
    parser.add_argument(
        "--protocols",
        type=_protocols,
        default=list(PROTOCOLS),
        help=f"rows of the per-protocol table, comma-separated (default {','.join(PROTOCOLS)})",
    )
    parser.add_argument("--pqc-n", type=int, default=500, help="records of the CKKS variants (default 500)")
    parser.add_argument("--pqc-rounds", type=int, default=3, help="rounds of the CKKS variants (default 3)")
    parser.add_argument("--serve-worker", type=int, metavar="MB", help=argparse.SUPPRESS)
    parser.add_argument("--probe-health", nargs=2, metavar=("URL", "SUBJECT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_worker is not None:
        return serve_worker(args.serve_worker)
    if args.probe_health:
        asyncio.run(_probe_health_main(*args.probe_health))
        return 0

    from worker.runtime.pool import _usable_cpus, limit_blas_threads

    # The same computation with the same BLAS threads as a worker slot (capacity 2): with its default
    # (one spinning thread per core) the in-process side measured 60-400 ms a round on 2 busy cores.
    blas = max(1, _usable_cpus() // 2) if args.blas_threads is None else args.blas_threads
    if blas > 0:
        limit_blas_threads(blas)
    x = make_data(args.n, args.a, args.k)
    ckks = bool(CKKS_PROTOCOLS & set(args.protocols))
    x_pqc = make_data(args.pqc_n, args.a, args.k) if ckks else x
    jobs = [Job("skmeans", x, args.rounds)] + [
        Job(name, x_pqc, args.pqc_rounds) if name in CKKS_PROTOCOLS else Job(name, x, args.rounds)
        for name in args.protocols
        if name != "skmeans"
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 1.0:
        print(
            f"note: load average {load:.1f}: other processes compete for the CPU; the worker's pool runs at "
            "nice 5, so end-to-end figures are pessimistic",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="rory-bench-") as tmp:
        data_dir = Path(tmp)
        e2e = asyncio.run(
            end_to_end(jobs, args.k, data_dir, args.in_process, args.num_chunks, args.store_cache_mb)
        )
        locals_ = asyncio.run(
            in_process_jobs(
                jobs, args.k, e2e.keys, data_dir, args.num_chunks, args.store_cache_mb,
                keys_path=e2e.keys_path,
            )
        )
    report, local, health = e2e.reports[0], locals_[0], sorted(e2e.health)

    same = bool(np.array_equal(local.labels, report.labels))
    rounds = report.rounds
    e2e_round = statistics.mean(report.per_round_seconds)
    local_round = statistics.mean(local.per_round_seconds)
    core_round = statistics.mean(r["compute"] for r in local.rounds)
    messaging = statistics.mean(r["request"] - r["worker"] for r in rounds)
    storage = statistics.mean(r["storage"] for r in rounds)
    queued = statistics.mean(r["queued"] for r in rounds)
    compute = statistics.mean(r["compute"] for r in rounds)
    owner_side = statistics.mean(r["seconds"] - r["request"] for r in rounds)
    ratio = report.total_seconds / local.total_seconds

    print(
        f"SKMeans {args.n} x {args.a}, k={args.k}, {args.rounds} rounds "
        f"({'worker in process' if args.in_process else 'worker process'}, local storage, "
        f"store cache {args.store_cache_mb} MB, in-process BLAS threads {blas or 'default'}, "
        f"labels {'identical' if same else 'DIFFERENT'})"
    )
    print()
    print(f"{'':34}{'in-process':>12}{'end-to-end':>12}")
    print(f"{'total (s)':34}{local.total_seconds:12.3f}{report.total_seconds:12.3f}")
    print(
        f"{'prepare: encrypt + UDM [+ upload] (s)':34}"
        f"{local.prepare_seconds:12.3f}{report.prepare_seconds:12.3f}"
    )
    unit, goal = round_goal(args.n)
    round_note = f"   (goal <= {goal:g} ms)" if unit == "ms" else ""
    print(f"{'mean round (ms)':34}{local_round * 1000:12.1f}{e2e_round * 1000:12.1f}{round_note}")
    round_ratio = e2e_round / local_round
    ratio_note = f"   (goal <= {goal:g}x)" if unit == "x" else ""
    print(f"{'round ratio end-to-end / in-process':34}{round_ratio:24.2f}x{ratio_note}")
    print(f"{'total ratio (with preparation)':34}{ratio:24.2f}x")
    print()
    print("per-round overhead of the end-to-end path (ms, mean over rounds)")
    print(f"  {'round, owner view':40}{_ms(e2e_round)}")
    print(f"  {'  worker compute (pool or inline)':40}{_ms(compute)}")
    print(f"  {'    of which the core (in process)':40}{_ms(core_round)}")
    print(f"  {'    pool transfer + scheduling':40}{_ms(compute - core_round)}")
    print(f"  {'  worker storage get + put':40}{_ms(storage)}")
    print(f"  {'  worker queueing':40}{_ms(queued)}")
    print(f"  {'  messaging (request - worker total)':40}{_ms(messaging)}")
    print(f"  {'  owner: fetch + decrypt + upload shift':40}{_ms(owner_side)}")
    print(f"  {'overhead vs in-process round':40}{_ms(e2e_round - local_round)}")
    if health:
        p50, p99 = health[len(health) // 2], health[min(len(health) - 1, round(0.99 * (len(health) - 1)))]
        print(
            f"health while the job ran ({len(health)} probes every 5 ms, own process): "
            f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {health[-1] * 1e3:.2f} ms "
            "(goal p99 < 10 ms)"
        )
    if args.protocols:
        print_protocols(args.protocols, jobs, locals_, e2e.reports)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
