"""Storage throughput and memory: the local backend beside numpy.save/numpy.load on the same disk,
and the MictlanX client through the in-repo fake router.

    python benchmarks/bench_storage.py                 # 64 MB float64, quick
    python benchmarks/bench_storage.py --full          # 64 MB and 512 MB
    python benchmarks/bench_storage.py --sizes 16 128 --repeat 5 --num-chunks 1 --fsync
    python benchmarks/bench_storage.py --quick --no-mictlanx --dir /data   # ends with the fsync-cost table
    python benchmarks/bench_storage.py --nats-only --nats-r3   # the nats backend, R1 and R3

Goals (from the storage issue): local put/get >= 0.7x numpy.save/numpy.load throughput, and the peak
memory of a get <= 2x the array (tracemalloc peak of the call, divided by the array's bytes).
Times are the best of ``--repeat`` runs, with warm page cache for every contender alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.mictlanx_router import FakeRouter
from worker.storage import LocalStore, MictlanXStore, ObjectStore, RetryPolicy, parse_mictlanx_uri
from worker.storage.local import VERIFIED_HASH

MB = 1024 * 1024


@dataclass
class Row:
    size_mb: int
    name: str
    put_s: float
    get_s: float
    peak_ratio: float | None


class Contender:
    """Something that can store and fetch the benchmark array."""

    name = ""

    async def put(self, array: np.ndarray) -> None:
        raise NotImplementedError

    async def get(self) -> np.ndarray:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class NumpyFile(Contender):
    def __init__(self, path: Path, fsync: bool) -> None:
        self.name, self.path, self.fsync = "numpy.save / numpy.load", path, fsync

    async def put(self, array: np.ndarray) -> None:
        with open(self.path, "wb") as handle:
            np.save(handle, array)
            if self.fsync:
                handle.flush()
                os.fsync(handle.fileno())

    async def get(self) -> np.ndarray:
        return np.load(self.path)


class Store(Contender):
    def __init__(self, name: str, store: ObjectStore, num_chunks: int) -> None:
        self.name, self.store, self.num_chunks = name, store, num_chunks

    async def put(self, array: np.ndarray) -> None:
        await self.store.put_ndarray("bench", array, num_chunks=self.num_chunks)

    async def get(self) -> np.ndarray:
        return await self.store.get_ndarray("bench")

    async def close(self) -> None:
        await self.store.aclose()


async def _peak_ratio(contender: Contender, array: np.ndarray) -> float:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    fetched = await contender.get()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del fetched
    return peak / array.nbytes


async def _measure(contenders: list[Contender], array: np.ndarray, repeat: int, size: int) -> list[Row]:
    """Interleave the contenders round by round, so load changes on a shared machine hit all alike."""
    puts: dict[str, list[float]] = {c.name: [] for c in contenders}
    gets: dict[str, list[float]] = {c.name: [] for c in contenders}
    for _ in range(repeat):
        for contender in contenders:
            start = time.perf_counter()
            await contender.put(array)
            puts[contender.name].append(time.perf_counter() - start)
            start = time.perf_counter()
            fetched = await contender.get()
            gets[contender.name].append(time.perf_counter() - start)
            if not np.array_equal(fetched, array):
                raise SystemExit(f"{contender.name}: round trip mismatch")
            del fetched
    rows = []
    for contender in contenders:
        peak = await _peak_ratio(contender, array)
        rows.append(Row(size, contender.name, min(puts[contender.name]), min(gets[contender.name]), peak))
    return rows


async def run(args: argparse.Namespace) -> list[Row]:
    sizes = sorted(set(args.sizes + ([512] if args.full else [])))
    rows: list[Row] = []
    base = Path(args.dir) if args.dir else None
    suffix = " fsync" if args.fsync else ""
    with tempfile.TemporaryDirectory(prefix="bench-storage-", dir=base) as tmp:
        root = Path(tmp)
        for size in sizes:
            array = np.random.default_rng(size).random((size * MB // 8 // 128, 128))
            print(f"... {size} MB float64 {array.shape}", file=sys.stderr, flush=True)
            contenders: list[Contender] = [NumpyFile(root / "numpy.npy", args.fsync)]
            configs: list[tuple[str, dict[str, bool]]] = [(f"local ({VERIFIED_HASH}, default)", {})]
            if not args.quick:
                configs += [
                    ("local sha256=True", {"sha256": True}),
                    ("local verify=False", {"verify": False}),
                ]
            for index, (label, options) in enumerate(configs):
                store = LocalStore(root / f"css{index}", fsync=args.fsync, **options)
                contenders.append(Store(label + suffix, store, args.num_chunks))
            try:
                rows += await _measure(contenders, array, args.repeat, size)
            finally:
                for contender in contenders:
                    await contender.close()
            if not args.no_mictlanx:
                async with FakeRouter() as router:
                    policy = RetryPolicy(max_retries=2, delay=0.01)
                    store = MictlanXStore(
                        parse_mictlanx_uri(router.uri), retry=policy, chunk_size=MB, timeout=600
                    )
                    remote = Store("mictlanx via fake router", store, args.num_chunks)
                    try:
                        rows += await _measure([remote], array, max(1, args.repeat - 1), size)
                    finally:
                        await remote.close()
            del array
            gc.collect()
    return rows


def report(rows: list[Row], num_chunks: int) -> None:
    header = (
        f"{'size':>6}  {'contender':<28} {'put MB/s':>9} {'get MB/s':>9} "
        f"{'put/np':>7} {'get/np':>7} {'get peak':>9}"
    )
    print(
        f"\nnum_chunks={num_chunks}; ratios are against numpy.save/numpy.load of the same array in this run"
    )
    print("goals: local put/np and get/np >= 0.70, get peak <= 2.00x the array\n")
    print(header)
    print("-" * len(header))
    reference: dict[int, Row] = {}
    for row in rows:
        if row.name.startswith("numpy"):
            reference[row.size_mb] = row
        ref = reference[row.size_mb]
        put_rate, get_rate = row.size_mb / row.put_s, row.size_mb / row.get_s
        put_ratio, get_ratio = ref.put_s / row.put_s, ref.get_s / row.get_s
        peak = f"{row.peak_ratio:.2f}x" if row.peak_ratio is not None else "-"
        print(
            f"{row.size_mb:>4}MB  {row.name:<28} {put_rate:>9.0f} {get_rate:>9.0f} "
            f"{put_ratio:>7.2f} {get_ratio:>7.2f} {peak:>9}"
        )


async def _timed(action: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def _nats_rows(
    label: str, store: ObjectStore, array: np.ndarray, small: list[np.ndarray], repeat: int
) -> str:
    """Best-of-``repeat`` put/get of the big array and of every small one (one ball each, in parallel
    groups of 16 as handlers issue them), as one line of the nats table."""
    big_put = big_get = small_put = small_get = float("inf")
    for _ in range(repeat):
        big_put = min(big_put, await _timed(lambda: store.put_ndarray("bench", array, num_chunks=4)))
        big_get = min(big_get, await _timed(lambda: store.get_ndarray("bench")))

        async def put_all() -> None:
            for start in range(0, len(small), 16):
                batch = range(start, min(start + 16, len(small)))
                await asyncio.gather(*(store.put_ndarray(f"small{i}", small[i]) for i in batch))

        async def get_all() -> None:
            for start in range(0, len(small), 16):
                batch = range(start, min(start + 16, len(small)))
                await asyncio.gather(*(store.get_ndarray(f"small{i}") for i in batch))

        small_put = min(small_put, await _timed(put_all))
        small_get = min(small_get, await _timed(get_all))
    if not np.array_equal(await store.get_ndarray("bench"), array):
        raise SystemExit(f"{label}: round trip mismatch")
    mb = array.nbytes / MB
    return (
        f"{label:<30} {mb / big_put:>9.0f} {mb / big_get:>9.0f} "
        f"{len(small) / small_put:>10.0f} {len(small) / small_get:>10.0f}"
    )


async def run_nats(args: argparse.Namespace) -> None:
    """The ``nats`` backend (JetStream object store) beside the local one: a 64 MB array and many
    small balls, on one embedded server (R1) and, with ``--nats-r3``, a three-server cluster (R3)."""
    import nats

    from worker.embedded import EmbeddedNats
    from worker.storage.nats_objects import NatsObjectStore

    array = np.random.default_rng(64).random((64 * MB // 8 // 128, 128))
    small = [np.random.default_rng(i).random((64, 8)) for i in range(args.small_count)]  # 4 KiB each
    header = f"{'backend':<30} {'put MB/s':>9} {'get MB/s':>9} {'small put/s':>10} {'small get/s':>10}"
    lines = [header, "-" * len(header)]
    with tempfile.TemporaryDirectory(prefix="bench-nats-", dir=args.dir) as tmp:
        root = Path(tmp)
        local = LocalStore(root / "css")
        try:
            lines.append(await _nats_rows("local (default)", local, array, small, args.repeat))
        finally:
            await local.aclose()
        async with EmbeddedNats(root / "nats") as server:
            nc = await nats.connect(server.url)
            store = NatsObjectStore("bench", nc=nc, timeout=60)
            try:
                lines.append(await _nats_rows("nats R1 (file storage)", store, array, small, args.repeat))
            finally:
                await store.aclose()
                await nc.close()
        if args.nats_r3:
            from scripts.cluster import LocalCluster

            with LocalCluster(3, 0, jetstream=True, base_dir=root / "cluster") as cluster:
                nc = await nats.connect(servers=cluster.urls)
                store = NatsObjectStore("bench", nc=nc, replicas=3, timeout=60)
                try:
                    lines.append(
                        await _nats_rows("nats R3 (3 local servers)", store, array, small, args.repeat)
                    )
                finally:
                    await store.aclose()
                    await nc.close()
    print(
        f"\n64 MB float64 in 4 chunks; {args.small_count} small balls of 4 KiB (16 at a time); "
        f"best of {args.repeat}"
    )
    print("\n".join(lines))


async def _best_put(contender: Contender, array: np.ndarray, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        await contender.put(array)
        best = min(best, time.perf_counter() - start)
    return best


async def _mean_put(contender: Contender, array: np.ndarray, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        await contender.put(array)
    return (time.perf_counter() - start) / count


async def run_fsync_cost(args: argparse.Namespace) -> None:
    """What STORAGE_FSYNC=true costs a put: numpy.save and the default local store, each without and
    with fsync on the same disk (``--dir``), a big array and a run of small balls (a k-means step
    writes many small ones, where the fsync latency, not the bandwidth, is the cost)."""
    sizes = sorted(set(args.sizes + ([512] if args.full else [])))
    small = np.random.default_rng(0).random((64, 8))  # 4 KiB
    header = f"{'size':>6}  {'writer':<22} {'put MB/s':>9} {'fsync MB/s':>11} {'cost':>7}"
    lines = ["", "fsync cost of a put (STORAGE_FSYNC=true; best of --repeat):", "", header, "-" * len(header)]
    with tempfile.TemporaryDirectory(prefix="bench-fsync-", dir=args.dir) as tmp:
        root = Path(tmp)

        def pair(name: str) -> tuple[Contender, Contender]:
            if name == "numpy.save":
                return NumpyFile(root / "off.npy", False), NumpyFile(root / "on.npy", True)
            return (
                Store(name, LocalStore(root / "css-off", fsync=False), args.num_chunks),
                Store(name, LocalStore(root / "css-on", fsync=True), args.num_chunks),
            )

        for name in ("numpy.save", "local (default)"):
            off, on = pair(name)
            try:
                for size in sizes:
                    array = np.random.default_rng(size).random((size * MB // 8 // 128, 128))
                    plain = await _best_put(off, array, args.repeat)
                    synced = await _best_put(on, array, args.repeat)
                    lines.append(
                        f"{size:>4}MB  {name:<22} {size / plain:>9.0f} {size / synced:>11.0f} "
                        f"{synced / plain:>6.1f}x"
                    )
                    del array
                plain = await _mean_put(off, small, args.small_count)
                synced = await _mean_put(on, small, args.small_count)
                rates = f"{1 / plain:>7.0f}/s {1 / synced:>9.0f}/s"
                lines.append(f"{'4KiB':>6}  {name:<22} {rates} {synced / plain:>6.1f}x")
            finally:
                await off.close()
                await on.close()
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64], help="array sizes in MB (default 64)")
    parser.add_argument("--full", action="store_true", help="also run 512 MB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is shown")
    parser.add_argument("--num-chunks", type=int, default=4, help="chunks per ball (NUM_CHUNKS, default 4)")
    parser.add_argument("--fsync", action="store_true", help="fsync numpy.save and the local store alike")
    parser.add_argument("--dir", default=None, help="directory on the disk to test (default: system temp)")
    parser.add_argument("--quick", action="store_true", help="only the default local configuration")
    parser.add_argument("--no-mictlanx", action="store_true", help="skip the fake-router measurement")
    parser.add_argument("--no-fsync-cost", action="store_true", help="skip the put without/with fsync table")
    parser.add_argument("--nats", action="store_true", help="also the nats backend (JetStream object store)")
    parser.add_argument("--nats-only", action="store_true", help="only the nats table (implies --nats)")
    parser.add_argument("--nats-r3", action="store_true", help="nats also on a local three-server R3 cluster")
    parser.add_argument("--small-count", type=int, default=500, help="small balls in the nats table")
    args = parser.parse_args()
    if not args.nats_only:
        rows = asyncio.run(run(args))
        report(rows, args.num_chunks)
        if not args.no_fsync_cost:
            asyncio.run(run_fsync_cost(args))
    if args.nats or args.nats_only or args.nats_r3:
        asyncio.run(run_nats(args))


if __name__ == "__main__":
    main()
