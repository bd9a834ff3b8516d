"""Benchmark of the CKKS core (core/crypto/ckks.py and the PQC algorithms).

Prints:
1. sizes: public context (no Galois keys), ciphertexts fresh / one level down, optionally Galois keys;
2. per-vector costs through our core beside the bare TenSEAL calls (overhead %, goal < 10 %):
   encrypt, add (sum), subtract, plaintext-scalar multiply, ct×ct square, serialize, deserialize;
3. one SKMeans-PQC iteration (rows layout, plaintext UDM) on ``--skmeans-n`` records, scaled linearly
   to ``--n`` (per-record costs: deserialisation + one addition; bytes: n row ciphertexts per round);
4. PQC k-means (labels-only protocol, column packing) per round for ``--n`` records: worker seconds,
   data-owner seconds, bytes each way — beside the SKMeans-PQC figures for the same data.

Default run (n = 10,000, a = 8, k = 5, SKMeans-PQC measured on 1,000 records) takes about a minute on one
core. ``--n 100000`` for the large case; ``--galois-sizes`` adds the (slow) Galois key sizes.
Timings are wall-clock medians; run on an otherwise idle machine for stable ratios.

    python benchmarks/bench_core_ckks.py [--n 10000] [--a 8] [--k 5] [--skmeans-n 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tenseal as ts

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import pqc_dataowner as do
from core.algorithms import pplr, pqc_kmeans, pqc_skmeans, udm
from core.crypto import ckks

MB = 1024 * 1024


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


Job = Callable[[], object]


def paired(label: str, core_fn: Job, raw_fn: Job, per: int, reps: int) -> None:
    """Interleave core and raw runs, alternating which goes first, and keep the minimum of each: on a
    shared machine the minimum is the least disturbed estimate of a CPU-bound cost."""
    core_t, raw_t = [], []
    for i in range(reps):
        if i % 2:
            core_t.append(timed(core_fn))
            raw_t.append(timed(raw_fn))
        else:
            raw_t.append(timed(raw_fn))
            core_t.append(timed(core_fn))
    c, r = min(core_t) / per * 1e3, min(raw_t) / per * 1e3
    print(f"  {label:<42} core {c:7.3f} ms   tenseal {r:7.3f} ms   overhead {100 * (c - r) / r:+6.1f} %")


def sizes(ctx: ts.Context, galois: bool) -> None:
    print("== sizes ==")
    for name in ("default-128", "ml-128"):
        c = ctx if name == "default-128" else ckks.create_context(name)
        pub = ckks.public_context_bytes(c)
        v = ts.ckks_vector(c, np.ones(8))
        lvl = v * 0.5
        print(
            f"  {name:<12} public context {len(pub) / MB:6.2f} MiB   ciphertext fresh "
            f"{len(v.serialize()) / 1024:7.1f} KiB   one level down "
            f"{len(lvl.serialize()) / 1024:7.1f} KiB   "
            f"slots {ckks.slot_count(c)}"
        )
    if galois:
        c = ckks.create_context("ml-128")
        t0 = time.perf_counter()
        few = ckks.public_context_bytes(c, galois=True, rotation_steps=pplr.rotation_steps(8))
        t1 = time.perf_counter()
        full = ckks.public_context_bytes(c, galois=True)
        t2 = time.perf_counter()
        steps = len(pplr.rotation_steps(8))
        print(
            f"  ml-128 + Galois keys for PPLR d=8 ({steps} steps): {len(few) / MB:7.1f} MiB "
            f"({t1 - t0:.1f} s)   "
            f"all power-of-two keys: {len(full) / MB:7.1f} MiB ({t2 - t1:.1f} s)"
        )


def overheads(ctx: ts.Context, reps: int) -> None:
    print("== per-vector cost, core vs TenSEAL (N=8192, 8 values per vector; goal: overhead < 10 %) ==")
    rng = np.random.default_rng(0)
    m = 200
    X = rng.normal(size=(m, 8))
    rows = [ts.ckks_vector(ctx, r) for r in X]
    blobs = [v.serialize() for v in rows]
    other = ts.ckks_vector(ctx, np.ones(8))

    paired(
        "encrypt (encrypt_rows)",
        lambda: ckks.encrypt_rows(ctx, X),
        lambda: [ts.ckks_vector(ctx, r) for r in X],
        m,
        reps,
    )

    def raw_sum() -> object:
        acc = rows[0]
        for v in rows[1:]:
            acc = acc + v
        return acc

    paired("add (sum_vectors)", lambda: ckks.sum_vectors(rows), raw_sum, m - 1, reps)
    paired(
        "subtract (subtract)",
        lambda: [ckks.subtract(v, other) for v in rows],
        lambda: [v - other for v in rows],
        m,
        reps,
    )
    sums: list[ts.CKKSVector | None] = list(rows[:50])
    paired(
        "scalar multiply (finish_centroids)",
        lambda: pqc_skmeans.finish_centroids(sums, np.full(50, 3), rows[:50]),
        lambda: [v * (1 / 3) for v in rows[:50]],
        50,
        reps,
    )
    cols, cent = rows[:40], [other] * 40

    def raw_distances() -> object:
        acc = (cols[0] - cent[0]).square()
        for c, o in zip(cols[1:], cent[1:], strict=True):
            acc = acc + (c - o).square()
        return acc

    paired(
        "sub+square+add (block_squared_distances)",
        lambda: pqc_kmeans.block_squared_distances(cols, cent),
        raw_distances,
        40,
        reps,
    )
    paired("serialize", lambda: ckks.serialize(rows), lambda: [v.serialize() for v in rows], m, reps)
    paired(
        "deserialize (validated)",
        lambda: ckks.deserialize(ctx, blobs),
        lambda: [ts.ckks_vector_from(ctx, b) for b in blobs],
        m,
        reps,
    )
    print("  (differences of a few % either way are noise: the wrappers add argument checks only)")


def skmeans_round(owner: ts.Context, pub: bytes, X: np.ndarray, k: int, n_target: int) -> dict[str, float]:
    n, a = X.shape
    t0 = time.perf_counter()
    rows = ckks.serialize(do.encrypt_dataset(owner, X))
    zeros = ckks.serialize(do.init_shift_matrix(owner, k, a))
    enc_s = time.perf_counter() - t0
    U = udm.build_udm(X, k)
    ckks.cached_public_context(pub)  # warm the per-process cache (the worker would have it)
    t0 = time.perf_counter()
    _, cent, shift = pqc_skmeans.encrypted_phase_bytes(pub, rows, U, k, True, None, zeros)
    w1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    S = do.decrypt_shift(owner, ckks.deserialize(owner, shift), a)
    o1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    U = pqc_skmeans.plaintext_phase(U, S)
    w2 = time.perf_counter() - t0
    t0 = time.perf_counter()
    pqc_skmeans.encrypted_phase_bytes(pub, rows, U, k, False, cent, zeros)
    w3 = time.perf_counter() - t0
    scale = n_target / n
    rows_bytes = sum(map(len, rows))
    to_w = rows_bytes * scale + U.nbytes * scale + sum(map(len, cent)) + sum(map(len, zeros)) + S.nbytes
    from_w = sum(map(len, cent)) + sum(map(len, shift))
    print(f"== SKMeans-PQC, one iteration, measured on n={n} (a={a}, k={k}) ==")
    print(
        f"  data owner: encrypt {n} rows {enc_s:.2f} s ({enc_s / n * 1e3:.2f} ms/row)   "
        f"decrypt shift {o1 * 1e3:.1f} ms"
    )
    print(
        f"  worker: encrypted phase START {w1:.2f} s, next iteration {w3:.2f} s "
        f"({w3 / n * 1e3:.3f} ms/record: deserialise + add); plaintext phase {w2 * 1e3:.1f} ms"
    )
    print(
        f"  bytes per round: {rows_bytes / MB:.1f} MiB of row ciphertexts re-read, "
        f"UDM {U.nbytes / MB:.2f} MiB"
    )
    return {
        "worker_s": (w3 + w2) * scale,
        "owner_s": o1,
        "to_worker": to_w,
        "from_worker": from_w,
        "setup_owner_s": enc_s * scale,
        "stored": rows_bytes * scale,
    }


def kmeans_rounds(owner: ts.Context, X: np.ndarray, k: int) -> dict[str, float]:
    """Two full rounds (distances, labels, masked sums, centroids) plus the closing assignment."""
    n, a = X.shape
    t0 = time.perf_counter()
    res = do.run_pqc_kmeans(X, k, ctx=owner, max_iterations=2, tol=0.0)
    total = time.perf_counter() - t0
    slots = ckks.slot_count(owner)
    blocks = -(-n // slots)
    print(
        f"== PQC k-means (labels only), n={n}, a={a}, k={k}: {blocks} block(s) of {min(n, slots)} records =="
    )
    for i, r in enumerate(res.stats.rounds):
        what = "closing assignment" if i == len(res.stats.rounds) - 1 else "full round"
        print(
            f"  round {i + 1} ({what:<18}): worker {r['worker_s']:.2f} s   "
            f"data owner {r['owner_s']:.2f} s   "
            f"to worker {r['to_worker'] / MB:6.1f} MiB   from worker {r['from_worker'] / MB:5.1f} MiB"
        )
    print(
        f"  run incl. column encryption: {total:.1f} s; 'to worker' counts the {a * blocks} column "
        "ciphertexts the worker re-reads twice per round (round 1 also the public context)"
    )
    return res.stats.rounds[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="records (100000 for the large case)")
    ap.add_argument("--a", type=int, default=8)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--skmeans-n", type=int, default=1_000, help="records actually run through SKMeans-PQC")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--galois-sizes", action="store_true", help="also measure Galois key sizes (slow)")
    args = ap.parse_args()

    owner = ckks.create_context("default-128")
    pub = ckks.public_context_bytes(owner)
    worker = ckks.load_public_context(pub)
    sizes(owner, args.galois_sizes)
    overheads(worker, args.reps)

    rng = np.random.default_rng(0)
    centres = rng.uniform(-10, 10, size=(args.k, args.a))
    X = centres[rng.integers(0, args.k, size=args.n)] + rng.normal(size=(args.n, args.a))
    sk = skmeans_round(owner, pub, X[: min(args.skmeans_n, args.n)], args.k, args.n)
    km = kmeans_rounds(owner, X, args.k)

    n_sk = min(args.skmeans_n, args.n)
    print(
        f"== per full round, n={args.n}: PQC k-means vs SKMeans-PQC (SKMeans measured on n={n_sk}, scaled) =="
    )
    rows = (
        ("worker seconds", "worker_s", 1.0, "s"),
        ("data-owner seconds", "owner_s", 1.0, "s"),
        ("bytes to worker", "to_worker", MB, "MiB"),
        ("bytes from worker", "from_worker", MB, "MiB"),
    )
    for label, key, div, unit in rows:
        print(
            f"  {label:<20} pqc_kmeans {km[key] / div:9.2f} {unit:<4} skmeans_pqc {sk[key] / div:9.2f} {unit}"
        )
    print(
        f"  SKMeans-PQC also stores {sk['stored'] / MB:.0f} MiB of row ciphertexts (data-owner encryption "
        f"{sk['setup_owner_s']:.0f} s) and shows the worker the UDM and every shift; "
        "pqc_kmeans shows labels only."
    )


if __name__ == "__main__":
    main()
