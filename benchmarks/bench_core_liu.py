"""Benchmark of the Liu / FDH-OPE core: one SKMeans iteration vs one plaintext L1 k-means iteration.

Prints, for n records x a attributes, k clusters, Liu m = 3 (security level 128), compact UDM:
* SKMeans encrypted phase + plaintext phase (worker side of one iteration) beside one iteration of
  plaintext numpy L1 k-means on the same data, and their ratio (goal <= 3x);
* peak traced memory of the secure iteration (tracemalloc, numpy allocations included) against the
  compact UDM size and the n x n x a size the original's layout would need (goal: no n x n temporary);
* Liu and FDH-OPE encryption throughput (values/s); data-owner decrypt + convergence check time.

Usage: python benchmarks/bench_core_liu.py [--n 100000] [--a 8] [--k 5] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.algorithms import skmeans
from core.algorithms.kmeans import l1_assign, mean_centroids
from core.algorithms.udm import build_udm
from core.crypto import fdhope, liu


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _median(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_mb(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--a", type=int, default=8)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="data seed (keys and encryption use the OS CSPRNG)")
    args = p.parse_args()
    n, a, k, rep = args.n, args.a, args.k, args.repeat

    rng = np.random.default_rng(args.seed)
    centres = rng.uniform(-10, 10, size=(k, a))
    data = centres[rng.integers(0, k, size=n)] + rng.normal(0, 2, size=(n, a))
    key = liu.generate_key(security_level=128)
    print(f"n={n} a={a} k={k} m={key.m}  numpy {np.__version__}  repeat={rep} (best/median of repeats)")

    t_enc, enc = _best(lambda: liu.encrypt(key, data), rep)
    t_udm, udm = _best(lambda: build_udm(data, k), rep)
    print(
        f"Liu encrypt     {t_enc * 1e3:9.1f} ms  {n * a / t_enc / 1e6:8.2f} M values/s   "
        f"({enc.nbytes / 2**20:.1f} MB)"
    )
    print(
        f"compact UDM     {t_udm * 1e3:9.1f} ms  ({udm.nbytes / 2**20:.1f} MB; full n x n x a would be "
        f"{8 * n * n * a / 2**30:,.1f} GB)"
    )

    # state after iteration 1, so the timed iteration is a regular (non-START) one
    first = skmeans.encrypted_phase(enc, udm, k, True, None)
    s1 = skmeans.decrypt_shift(key, first.shift)
    udm2 = skmeans.plaintext_phase(udm, s1)
    prev = first.centroids
    cents_plain = liu.decrypt(key, prev)

    def secure_iteration() -> np.ndarray:
        res = skmeans.encrypted_phase(enc, udm2, k, False, prev)
        return skmeans.plaintext_phase(udm2, skmeans.decrypt_shift(key, res.shift))

    def worker_iteration() -> np.ndarray:
        skmeans.encrypted_phase(enc, udm2, k, False, prev)
        return skmeans.plaintext_phase(udm2, s1)

    def plain_iteration() -> np.ndarray:
        labels = l1_assign(data, cents_plain)
        return mean_centroids(data, labels, k, cents_plain)

    t_ep = _median(lambda: skmeans.encrypted_phase(enc, udm2, k, False, prev), rep)
    t_pp = _median(lambda: skmeans.plaintext_phase(udm2, s1), rep)
    t_worker = _median(worker_iteration, rep)
    t_owner = _median(lambda: skmeans.check_shift(key, first.shift, 1e-6), rep)
    t_plain = _median(plain_iteration, rep)
    print(f"SKMeans encrypted phase  {t_ep * 1e3:9.1f} ms")
    print(f"SKMeans plaintext phase  {t_pp * 1e3:9.1f} ms")
    print(
        f"SKMeans worker total     {t_worker * 1e3:9.1f} ms   "
        f"(+ data owner decrypt/check {t_owner * 1e3:.2f} ms)"
    )
    print(f"plaintext L1 iteration   {t_plain * 1e3:9.1f} ms")
    ratio = t_worker / t_plain
    print(f"ratio secure/plaintext   {ratio:9.2f} x   (goal <= 3x: {'OK' if ratio <= 3 else 'MISSED'})")

    peak = _peak_mb(secure_iteration)
    peak_plain = _peak_mb(plain_iteration)
    nn_mb = 8 * n * n * a / 2**20
    verdict = (
        ("no n x n intermediate" if peak < nn_mb / 4 else "POSSIBLE n x n intermediate")
        if n >= 1000
        else "n too small to tell"
    )
    print(
        f"peak traced memory, secure iteration  {peak:9.1f} MB  (inputs excluded; compact UDM "
        f"{udm.nbytes / 2**20:.1f} MB, n x n x a {nn_mb:,.0f} MB -> {verdict})"
    )
    print(f"peak traced memory, plaintext iter.   {peak_plain:9.1f} MB")

    t_key, fkey = _best(lambda: fdhope.generate_key(udm), 1)
    t_ope, _ = _best(lambda: fdhope.encrypt(fkey, udm), rep)
    print(f"FDH-OPE keygen  {t_key * 1e3:9.1f} ms  ({fkey.n_ranges} ranges, from {udm.size:,} UDM entries)")
    print(f"FDH-OPE encrypt {t_ope * 1e3:9.1f} ms  {udm.size / t_ope / 1e6:8.2f} M values/s")


if __name__ == "__main__":
    main()
