"""Benchmark of privacy-preserving logistic regression: seconds per epoch and accuracy, side by side.

For each demo dataset (z-scored, class 0 vs rest, the demo's split: 40 training rows, 30 test rows),
``--epochs`` full-batch epochs (learning rate 0.1) of:

1. plaintext LR (``core.algorithms.lr``), the accuracy reference;
2. the textbook TenSEAL approach (TenSEAL's logistic-regression tutorial, written here from its
   description): one encrypted vector per sample, N = 8192 with [40, 21 x 6, 40] and a 2^21 scale,
   Galois keys for the dot products, σ(z) ≈ 0.5 + 0.197 z − 0.004 z³, encrypted full-batch update,
   then decrypt/re-encrypt (refresh) — its per-epoch time is the encrypted forward, backward and
   update plus the refresh;
3. the worker's PPLR in process: the packed layout (``core/algorithms/pplr.py``) under the
   ``pplr-128`` profile (N = 8192, 4 levels, no Galois keys); per epoch the owner encrypts the
   replicated model, the worker step (``pplr.gradient_packed_bytes``: deserialise, compute, serialise
   — what the compute pool runs) and the owner's decrypt + plaintext step;
4. (``--rows``) the former rows layout, ``ml-128`` with rotation keys (``pplr.fit_step_bytes``):
   slow, one epoch per dataset;
5. (unless ``--no-e2e``) end to end: ``rory-client demo --only pplr`` machinery (nats-server, a worker
   process, local storage), its training rounds as the data owner sees them (NATS, storage, worker).

Every timing is printed beside the goal (≤ 1 s per epoch at 128-bit security). Accuracy is on the
test rows (prediction x·w + b ≥ 0) against the truth, and agreement with plaintext LR's predictions.

    python benchmarks/bench_pplr.py [--epochs 5] [--datasets iris,wine,breast_cancer] [--rows] [--no-e2e]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenseal as ts

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import pqc_dataowner as do
from core.algorithms import pplr
from core.algorithms.lr import gradient_step
from core.crypto import ckks
from dataowner.datasets import Dataset, subset, train_test_split
from dataowner.demo import DATASETS, prepare

GOAL_S = 1.0
LEARNING_RATE = 0.1
TRAIN_ROWS, TEST_ROWS = 40, 30  # the demo's PPLR sizes (dataowner/demo.py)
#: The tutorial's degree-3 approximation of the sigmoid on [-5, 5] (TenSEAL tutorial 1).
TEXTBOOK_SIGMOID = [0.5, 0.197, 0.0, -0.004]


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Figure:
    name: str
    epochs: list[float]
    weights: np.ndarray
    bias: float
    note: str = ""


def split_of(name: str) -> Split:
    """The demo's PPLR data: its split and subsets (dataowner/demo.py ``_classify``)."""
    ds: Dataset = prepare(name)
    train, test = train_test_split(ds, 0.3, seed=1)
    train, test = subset(train, TRAIN_ROWS, seed=2), subset(test, TEST_ROWS, seed=3)
    assert train.y is not None and test.y is not None
    return Split(train.x, (train.y == 0).astype(np.float64), test.x, (test.y == 0).astype(np.float64))


def timed_epochs(epochs: int, step: Callable[[], None]) -> list[float]:
    out = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------------ approaches
def plaintext(s: Split, epochs: int) -> Figure:
    state = {"w": np.zeros(s.x.shape[1]), "b": 0.0}

    def step() -> None:
        state["w"], state["b"] = gradient_step(s.x, s.y, state["w"], state["b"], LEARNING_RATE)

    return Figure("plaintext LR (numpy)", timed_epochs(epochs, step), state["w"], state["b"])


def textbook(s: Split, epochs: int) -> Figure:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[40, 21, 21, 21, 21, 21, 21, 40])
    ctx.global_scale = 2**21
    ctx.generate_galois_keys()
    n, d = s.x.shape
    enc_x = [ts.ckks_vector(ctx, row) for row in s.x]
    enc_y = [ts.ckks_vector(ctx, [v]) for v in s.y]
    state = {"w": np.zeros(d), "b": 0.0}

    def step() -> None:
        w, b = ts.ckks_vector(ctx, state["w"]), ts.ckks_vector(ctx, [state["b"]])
        grad_w = grad_b = None
        for x, y in zip(enc_x, enc_y, strict=True):  # one encrypted vector per sample, as the tutorial
            err = (x.dot(w) + b).polyval(TEXTBOOK_SIGMOID) - y
            gx = x * err
            grad_w = gx if grad_w is None else grad_w + gx
            grad_b = err if grad_b is None else grad_b + err
        assert grad_w is not None and grad_b is not None
        new_w, new_b = w - grad_w * (LEARNING_RATE / n), b - grad_b * (LEARNING_RATE / n)
        state["w"], state["b"] = np.array(new_w.decrypt()), float(new_b.decrypt()[0])  # refresh

    return Figure("textbook TenSEAL (rows, N=8192)", timed_epochs(epochs, step), state["w"], state["b"],
                  "tutorial sigmoid 0.197/-0.004")


def packed(s: Split, epochs: int, profile: str = "pplr-128") -> Figure:
    owner = ckks.create_context(profile)
    pub = ckks.public_context_bytes(owner)  # what the worker holds: no secret key, no Galois keys
    n, d = s.x.shape
    x_blobs, _, y_blobs, size = pplr.encrypt_training_packed(owner, s.x, s.y)
    ckks.cached_public_context(pub)  # the pool process loads the context once, not per epoch
    state = {"w": np.zeros(d), "b": 0.0}

    def step() -> None:
        wb, bb = pplr.packed_model_blobs(owner, state["w"], state["b"], size)
        gw, gb = pplr.gradient_packed_bytes(pub, [x_blobs], y_blobs, wb, bb, n)
        grads = ckks.deserialize(owner, [*gw, gb])
        w, b = pplr.update_from_packed(owner, grads, state["w"], state["b"], LEARNING_RATE, n)
        state["w"], state["b"] = w, b

    return Figure(f"worker PPLR in process (packed, {profile})", timed_epochs(epochs, step), state["w"],
                  state["b"], f"{len(pub) / 2**20:.1f} MiB public context")


def rows(s: Split, epochs: int) -> Figure:
    owner = ckks.create_context("ml-128")
    d = s.x.shape[1]
    pub = ckks.public_context_bytes(owner, galois=True, rotation_steps=pplr.rotation_steps(d))
    ckks.cached_public_context(pub)
    xb = ckks.serialize(do.encrypt_dataset(owner, s.x))
    yb = ckks.serialize(do.encrypt_labels(owner, s.y))
    state = {"w": np.zeros(d), "b": 0.0}

    def step() -> None:
        wv, bv = do.encrypt_model(owner, state["w"], state["b"])
        nw, nb = pplr.fit_step_bytes(pub, xb, yb, wv.serialize(), bv.serialize(), LEARNING_RATE)
        state["w"], state["b"] = do.decrypt_model(owner, *ckks.deserialize(owner, [nw, nb]))

    return Figure("former worker PPLR (rows, ml-128)", timed_epochs(epochs, step), state["w"], state["b"],
                  f"{len(pub) / 2**20:.0f} MiB public context")


def end_to_end(names: list[str]) -> dict[str, tuple[list[float], float, float]]:
    """``rory-client demo --only pplr`` (2 epochs): per dataset (round seconds, accuracy, agreement)."""
    from dataowner.demo import DemoOptions, run_demo

    rows_out = asyncio.run(run_demo(DemoOptions(only=["pplr"], datasets=names)))
    out = {}
    for row in rows_out:
        if not row.ok:
            raise SystemExit(f"end to end: pplr/{row.dataset} failed: {row.error}")
        train = row.reports[0]
        out[row.dataset] = (list(train.per_round_seconds), row.truth or 0.0, row.agreement or 0.0)
    return out


# ------------------------------------------------------------------------------------------ report
def accuracy(s: Split, w: np.ndarray, b: float) -> np.ndarray:
    return (s.x_test @ w + b >= 0).astype(np.float64)


def line(label: str, epochs: list[float], acc: float, agree: float, note: str = "") -> str:
    best, med = min(epochs), statistics.median(epochs)
    verdict = "meets" if med <= GOAL_S else "MISSES"
    return (f"  {label:<44} {best:8.3f} {med:8.3f} s/epoch  {verdict} goal <= {GOAL_S:.0f} s   "
            f"acc {acc:.3f}  agree {agree:.3f}  {note}").rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--rows", action="store_true", help="also the former rows layout (ml-128; slow)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end run")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    e2e = {} if args.no_e2e else end_to_end(names)
    print(f"\nPPLR, {TRAIN_ROWS} training rows, {args.epochs} epochs, learning rate {LEARNING_RATE} "
          "(columns: best, median seconds per epoch)")
    for name in names:
        s = split_of(name)
        print(f"\n{name}: {s.x.shape[0]} x {s.x.shape[1]} train, {s.x_test.shape[0]} test")
        ref = plaintext(s, args.epochs)
        reference = accuracy(s, ref.weights, ref.bias)
        figures = [ref, textbook(s, args.epochs), packed(s, args.epochs)]
        if args.rows:
            figures.append(rows(s, 1))
        for f in figures:
            predicted = accuracy(s, f.weights, f.bias)
            acc = float(np.mean(predicted == s.y_test))
            agree = float(np.mean(predicted == reference))
            print(line(f.name, f.epochs, acc, agree, f.note))
        if name in e2e:
            rounds, acc, agree = e2e[name]
            print(line("worker PPLR end to end (NATS + storage)", rounds, acc, agree,
                       f"2 epochs: {', '.join(f'{r:.2f}' for r in rounds)} s (first loads the context)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
