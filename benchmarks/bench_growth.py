"""How cost grows with n: SKMeans rounds at n = 1e3 .. 1e6 (issue 14), one table.

    python benchmarks/bench_growth.py                   # n = 1e3, 1e4, 1e5, 1e6; a = 8, k = 5, 3 rounds
    python benchmarks/bench_growth.py --quick           # stop at 1e5
    python benchmarks/bench_growth.py --sizes 2000,20000 --rounds 5

Each size runs the job of ``bench_e2e.py --in-process``'s reference side (:func:`bench_e2e.in_process`:
the data-owner client over ``InProcessPort``, the worker's dispatcher and handlers in the same process,
compute inline, local storage behind the read cache) in a fresh child process, so every size's peak
memory is its own. Per size:

* mean round (ms): the owner's view of a round (``JobReport.per_round_seconds``), mean over the
  ``--rounds`` rounds of one job after a small warm-up job; the last round has no step 2, as in a
  real job. "storage" and "compute" (ms per round) are the worker's own stage times within it, as
  its replies report them (storage get + put; the core, inline): a round's fixed cost, whatever n,
  shows up in "storage" (the small state objects checked and written every round);
* worker read / written (MB per round, MB = 10^6 bytes): the payload bytes (arrays and buffers,
  :func:`core.payload.payload_bytes`) the worker's store returned to or was handed by the worker's
  handlers during the job, divided by the rounds. Counted by :class:`CountingStore` between the
  worker and its read cache, so a cached read counts too: it is what a round moves in and out of
  the worker, not what reached the disk. Step 1 sends the labels in its reply while they fit a
  message (about a quarter of MAX_MESSAGE_BYTES) and stores them beyond: "reply MB" is the
  encoded replies per round, so written + reply is all the worker sends out;
* peak RSS (MB): ``ru_maxrss`` of the child process. Owner and worker share that process (and the
  cache), so this is not the worker's own RSS; "mem growth" is that peak minus the RSS after the
  imports and the key generation, before the data exists: the memory the job at this n added;
* "x prev": each figure over the previous row's, beside the n ratio: linear growth is a time,
  bytes (read + written + reply) and memory-growth ratio close to the n ratio (10x per 10x n).

The read cache (``--store-cache-mb``, default 1024) holds the encrypted data and the UDM at
n = 1,000,000 (512 MB of inputs, see ``bench_e2e.py``), so no round reads them from disk again.
The goal ("linear growth") is printed, never asserted: figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import in_process, make_data

from core.payload import payload_bytes
from worker.storage.base import BallInfo, ForwardingStore

DEFAULT_SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_MAX = 100_000
MB = 1e6


class CountingStore(ForwardingStore):
    """The worker's store, counting the payload bytes it returns (reads) and is handed (writes)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.read = 0
        self.written = 0

    async def _forward(self, op: str, ball_id: str | None, call: Any, *, array: Any = None) -> Any:
        value = await call()
        if op == "get":  # get_ndarray, fetch_ndarray (array, info), get_bytes_list
            self.read += payload_bytes(value)
        elif op == "put" and array is not None:  # put_ndarray, put_blob
            self.written += payload_bytes(array)
        return value

    async def put_bytes_list(self, ball_id: str, items: Sequence[bytes], **kwargs: Any) -> BallInfo:
        info = await super().put_bytes_list(ball_id, items, **kwargs)
        self.written += payload_bytes(list(items))
        return info


def _counting_port(commands: list[dict[str, Any]]) -> Any:
    """A port factory for :func:`bench_e2e.in_process`: ``InProcessPort`` over a :class:`CountingStore`,
    appending each command's job id and bytes read and written to ``commands``."""
    from dataowner.inprocess_port import InProcessPort

    class CountingPort(InProcessPort):
        def __init__(self, store: Any) -> None:
            self.meter = CountingStore(store)
            super().__init__(self.meter)

        async def exchange(self, command: Any) -> Any:
            read, written = self.meter.read, self.meter.written
            try:
                return await super().exchange(command)
            finally:
                commands.append(
                    {
                        "job_id": command.job_id,
                        "read": self.meter.read - read,
                        "written": self.meter.written - written,
                        "reply": command.record.bytes_down,
                    }
                )

    return CountingPort


def measure(n: int, a: int, k: int, rounds: int, cache_mb: int) -> dict[str, Any]:
    """One size in this (fresh) process: the job's round time, the worker's bytes, the peak RSS."""
    import psutil

    from dataowner.keys import OwnerKeys

    # what the job imports, so that the baseline below already holds the code
    for module in ("dataowner.client", "dataowner.inprocess_port", "worker.handlers", "worker.storage.cache"):
        importlib.import_module(module)

    commands: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rory-growth-") as tmp:
        data_dir = Path(tmp)
        keys = OwnerKeys.generate(data_dir / "owner-keys", profiles=())
        baseline = psutil.Process().memory_info().rss
        x = make_data(n, a, k)
        report = asyncio.run(
            in_process(x, k, keys, rounds, data_dir, None, cache_mb, port=_counting_port(commands))
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    mine = [c for c in commands if c["job_id"] == report.job_id]
    done = len(report.per_round_seconds)
    return {
        "n": n,
        "rounds": done,
        "round_s": sum(report.per_round_seconds) / done,
        "storage_s": sum(r["storage"] for r in report.rounds) / done,
        "compute_s": sum(r["compute"] for r in report.rounds) / done,
        "prepare_s": report.prepare_seconds,
        "commands": len(mine),
        "read": sum(c["read"] for c in mine) / done,
        "written": sum(c["written"] for c in mine) / done,
        "reply": sum(c["reply"] for c in mine) / done,
        "peak_rss": peak,
        "baseline_rss": baseline,
    }


def _child(n: int, args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable, str(Path(__file__).resolve()), "--measure", str(n),
            "--a", str(args.a), "--k", str(args.k), "--rounds", str(args.rounds),
            "--store-cache-mb", str(args.store_cache_mb), "--blas-threads", str(args.blas_threads),
        ],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _ratio(value: float, previous: float | None) -> str:
    if previous is None or previous <= 0:
        return "-"
    return f"{value / previous:.1f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(n) for n in DEFAULT_SIZES),
        help="comma-separated record counts (default 1000,10000,100000,1000000)",
    )
    parser.add_argument("--quick", action="store_true", help=f"only the sizes <= {QUICK_MAX}")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per job (default 3)")
    parser.add_argument("--a", type=int, default=8, help="attributes (default 8)")
    parser.add_argument("--k", type=int, default=5, help="clusters (default 5)")
    parser.add_argument(
        "--store-cache-mb", type=int, default=1024, help="the store's read cache (MB, default 1024)"
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=-1,
        help="BLAS threads (default: as one compute slot, cores // 2, as bench_e2e; 0 = leave)",
    )
    parser.add_argument("--measure", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from worker.runtime.pool import _usable_cpus, limit_blas_threads

    if args.blas_threads < 0:
        args.blas_threads = max(1, _usable_cpus() // 2)
    if args.measure is not None:
        if args.blas_threads > 0:
            limit_blas_threads(args.blas_threads)
        result = measure(args.measure, args.a, args.k, args.rounds, args.store_cache_mb)
        print(json.dumps(result), flush=True)
        return 0

    sizes = sorted({int(float(s)) for s in args.sizes.split(",") if s.strip()})
    if args.quick:
        sizes = [n for n in sizes if n <= QUICK_MAX]
    if not sizes:
        parser.error("no sizes to run")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 1.0:
        print(f"note: load average {load:.1f}: other processes compete for the CPU", file=sys.stderr)

    print(
        f"SKMeans growth: a={args.a}, k={args.k}, {args.rounds} rounds per job, worker in process "
        f"(InProcessPort, inline compute), local storage, read cache {args.store_cache_mb} MB, "
        f"BLAS threads {args.blas_threads or 'default'}; one child process per n"
    )
    print(
        "goal: linear growth (each 'x prev' close to the n ratio, 10x per 10x n); printed, not asserted"
    )
    print(
        "read/written: payload bytes between the worker and its store per round (cached reads count), "
        "reply: the worker's encoded replies per round (labels inline while they fit)\n"
        "storage, compute: the worker's stage times within the round (ms)\n"
        "peak RSS: the whole child process (owner + worker + cache; not the worker alone), "
        "mem growth: peak - RSS before the data"
    )
    print()
    columns = [
        ("n", 9), ("n x", 5), ("|", 1), ("round ms", 9), ("x prev", 6), ("storage", 7), ("compute", 7),
        ("|", 1), ("read MB", 9),
        ("written MB", 10), ("reply MB", 9), ("x prev", 7), ("|", 1), ("peak RSS MB", 11),
        ("mem growth MB", 13), ("x prev", 7),
    ]
    header = " ".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header), flush=True)
    prev: dict[str, Any] = {}
    started = time.perf_counter()
    for n in sizes:
        row = _child(n, args)
        row["growth"] = max(0, row["peak_rss"] - row["baseline_rss"])
        row["moved"] = row["read"] + row["written"] + row["reply"]
        cells = [
            str(n), _ratio(n, prev.get("n")), "|",
            f"{row['round_s'] * 1000:.1f}", _ratio(row["round_s"], prev.get("round_s")),
            f"{row['storage_s'] * 1000:.1f}", f"{row['compute_s'] * 1000:.1f}", "|",
            f"{row['read'] / MB:.2f}", f"{row['written'] / MB:.3f}", f"{row['reply'] / MB:.3f}",
            _ratio(row["moved"], prev.get("moved")), "|",
            f"{row['peak_rss'] / MB:.0f}", f"{row['growth'] / MB:.1f}",
            _ratio(row["growth"], prev.get("growth")),
        ]
        line = " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, columns, strict=True))
        print(line, flush=True)
        prev = row
    print(
        f"\n(bytes 'x prev': read + written + reply; MB = 10^6 bytes; "
        f"{time.perf_counter() - started:.0f} s in all, preparation and warm-up included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
