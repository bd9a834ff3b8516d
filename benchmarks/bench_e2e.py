"""End-to-end SKMeans through NATS and storage versus the same rounds run in process by the core.

    python benchmarks/bench_e2e.py                 # 100,000 x 8, k=5, 10 rounds (a few minutes)
    python benchmarks/bench_e2e.py --n 20000       # smaller
    python benchmarks/bench_e2e.py --in-process    # worker inside this process (pool still separate)

Both sides run exactly ``--rounds`` rounds (tolerance < 0: no early stop), so the totals compare the
same work: Liu encryption + UDM, then per round the encrypted phase, the owner's decryption of the
k x a shift and the UDM update (no step 2 after the last round, as in a real job).

End to end = data-owner client (``dataowner.client``) -> embedded nats-server -> a worker process
(``python -m worker run``, local storage in a temp dir) with its compute pool; every round the
worker reads the encrypted data and the UDM from storage and writes the new state back.

Printed: total seconds and the ratio (goal <= 1.5x), the owner's preparation, the mean round, and
the per-round overhead split into messaging (request/reply time not spent in the worker), worker
storage (get + put), worker queueing, and the owner's own storage + decryption between commands.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.algorithms import skmeans
from core.algorithms.udm import build_udm
from core.crypto import liu


def make_data(n: int, a: int, k: int, seed: int = 0) -> np.ndarray:
    """k Gaussian blobs in a dimensions, shuffled (first-k initial centroids mix the blobs)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(k, a))
    x = centres[rng.integers(0, k, size=n)] + rng.normal(0, 1.5, size=(n, a))
    return x


def in_process(x: np.ndarray, k: int, key: liu.LiuKey, rounds: int) -> dict[str, Any]:
    """The core's SKMeans loop (as ``core.dataowner.run_skmeans``), timed per round."""
    t0 = time.perf_counter()
    encrypted = liu.encrypt(key, x)
    udm = build_udm(x, k)
    prepare = time.perf_counter() - t0
    previous = None
    per_round = []
    labels = np.empty(0)
    for it in range(1, rounds + 1):
        r0 = time.perf_counter()
        result = skmeans.encrypted_phase(encrypted, udm, k, it == 1, previous)
        shift = skmeans.decrypt_shift(key, result.shift)
        labels, previous = result.labels, result.centroids
        if it < rounds:
            udm = skmeans.plaintext_phase(udm, shift)
        per_round.append(time.perf_counter() - r0)
    total = time.perf_counter() - t0
    return {"total": total, "prepare": prepare, "rounds": per_round, "labels": labels}


async def end_to_end(
    x: np.ndarray, k: int, rounds: int, data_dir: Path, in_process_worker: bool, num_chunks: int | None
) -> dict[str, Any]:
    import nats

    from dataowner.client import DataOwnerClient
    from dataowner.demo import PREFIX, WorkerProcess, worker_env
    from dataowner.keys import OwnerKeys
    from worker.embedded import EmbeddedNats
    from worker.storage import LocalStore

    keys = OwnerKeys.generate(data_dir / "owner-keys", profiles=())
    server = await EmbeddedNats(data_dir / "nats", log_file=data_dir / "nats.log").start()
    worker: Any = None
    nc = await nats.connect(server.url)
    store = LocalStore(data_dir / "storage", "rory")
    try:
        env = worker_env(data_dir, "bench-0", server.url, data_dir / "worker-keys")
        if in_process_worker:
            from dataowner.demo import _start_in_process

            worker = await _start_in_process(data_dir, "bench-0", server.url, data_dir / "worker-keys")
        else:
            worker = WorkerProcess("bench-0", env, data_dir / "worker.log")
            await worker.start(nc, PREFIX)
        client = DataOwnerClient(
            nc, store, keys, prefix=PREFIX, node="bench-0", timeout=600, num_chunks=num_chunks
        )
        # warm-up: the worker's pool processes import numpy/the core on their first task
        await client.skmeans(x[: max(k, 50)], k, max_iterations=2, tolerance=-1.0)
        report = await client.skmeans(x, k, max_iterations=rounds, tolerance=-1.0)
        return {"report": report, "keys": keys}
    finally:
        if worker is not None:
            await worker.stop()
        await store.aclose()
        await nc.close()
        await server.stop()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--a", type=int, default=8, help="attributes (default 8)")
    parser.add_argument("--k", type=int, default=5, help="clusters (default 5)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds on both sides (default 10)")
    parser.add_argument("--num-chunks", type=int, default=None, help="chunks for uploads and results")
    parser.add_argument("--in-process", action="store_true", help="run the worker service in this process")
    args = parser.parse_args(argv)

    x = make_data(args.n, args.a, args.k)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 1.0:
        print(
            f"note: load average {load:.1f}: other processes compete for the CPU; the worker's pool runs at "
            "nice 5, so end-to-end figures are pessimistic",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="rory-bench-") as tmp:
        data_dir = Path(tmp)
        e2e = asyncio.run(end_to_end(x, args.k, args.rounds, data_dir, args.in_process, args.num_chunks))
        report, keys = e2e["report"], e2e["keys"]
        core = in_process(x, args.k, keys.liu, args.rounds)

    same = bool(np.array_equal(core["labels"], report.labels))
    rounds = report.rounds
    e2e_round = statistics.mean(report.per_round_seconds)
    core_round = statistics.mean(core["rounds"])
    messaging = statistics.mean(r["request"] - r["worker"] for r in rounds)
    storage = statistics.mean(r["storage"] for r in rounds)
    queued = statistics.mean(r["queued"] for r in rounds)
    compute = statistics.mean(r["compute"] for r in rounds)
    owner_side = statistics.mean(r["seconds"] - r["request"] for r in rounds)
    ratio = report.total_seconds / core["total"]

    print(
        f"SKMeans {args.n} x {args.a}, k={args.k}, {args.rounds} rounds "
        f"({'worker in process' if args.in_process else 'worker process'}, local storage, "
        f"labels {'identical' if same else 'DIFFERENT'})"
    )
    print()
    print(f"{'':34}{'in-process':>12}{'end-to-end':>12}")
    print(f"{'total (s)':34}{core['total']:12.3f}{report.total_seconds:12.3f}")
    print(
        f"{'prepare: encrypt + UDM [+ upload] (s)':34}{core['prepare']:12.3f}{report.prepare_seconds:12.3f}"
    )
    print(f"{'mean round (ms)':34}{core_round * 1000:12.1f}{e2e_round * 1000:12.1f}")
    print(f"{'ratio end-to-end / in-process':34}{ratio:24.2f}x   (goal <= 1.5x)")
    print()
    print("per-round overhead of the end-to-end path (ms, mean over rounds)")
    print(f"  {'round, owner view':40}{_ms(e2e_round)}")
    print(f"  {'  worker compute (pool)':40}{_ms(compute)}")
    print(f"  {'    of which the core (in-process round)':40}{_ms(core_round)}")
    print(f"  {'    pool transfer (pickling) + scheduling':40}{_ms(compute - core_round)}")
    print(f"  {'  worker storage get + put':40}{_ms(storage)}")
    print(f"  {'  worker queueing':40}{_ms(queued)}")
    print(f"  {'  messaging (request - worker total)':40}{_ms(messaging)}")
    print(f"  {'  owner: fetch + decrypt + upload shift':40}{_ms(owner_side)}")
    print(f"  {'overhead vs in-process round':40}{_ms(e2e_round - core_round)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
