"""The outsourcing ledger: what each protocol saves the data owner, and what it costs in privacy.

A data owner outsources mining to save work without giving the data away. Per protocol the ledger
puts side by side:

* ``owner_cpu``: the owner's own CPU seconds in the outsourced run (encryption, decryption, key and
  UDM work, as :meth:`dataowner.job.Job.owner` accounts them in ``JobReport.owner_cpu_seconds``);
* ``local``: CPU seconds of the same algorithm run locally in plaintext by the owner
  (:func:`cpu_seconds` around scikit-learn or the core's plaintext functions);
* ``ratio`` = owner_cpu / local: below 1 the owner saves work by outsourcing; above 1 it works
  more than if it had mined the data itself (:attr:`LedgerEntry.flagged`) and still leaks;
* ``worker``: the workers' own seconds (``JobReport.worker_seconds``);
* ``privacy``: a one-word class of what the worker learns, from docs/privacy.md.

:data:`PRIVACY` is the one place the privacy class of each protocol is written down; the demo
(dataowner/demo_cases.py), the benchmark (benchmarks/bench_ledger.py) and the docs read it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from dataowner.demo_cases import DemoRow
    from dataowner.job import JobReport

__all__ = [
    "PRIVACY",
    "CpuTimer",
    "LedgerEntry",
    "Privacy",
    "cpu_seconds",
    "format_ledger",
    "format_table",
    "privacy_class",
    "ratio",
    "totals",
]


@dataclass(frozen=True)
class Privacy:
    """What the worker learns in one protocol, in one word (``cls``) and one line (``leaks``).

    ``rank`` orders the classes from least to most leakage (0: only sizes); ``section`` is the
    protocol's section in docs/privacy.md.
    """

    cls: str
    rank: int
    leaks: str
    section: int


#: Privacy class of every protocol (the names of ``rory-client demo``), from docs/privacy.md.
#: Classes, least leakage first: sizes-only, labels-only, neighbour-index, distance-order,
#: distances, translation, scaled (Liu: one known value decrypts), plaintext.
PRIVACY: dict[str, Privacy] = {
    "pplr": Privacy("sizes-only", 0, "n, d, hyperparameters; not even the predictions", 14),
    "pqc_kmeans": Privacy("labels-only", 1, "each round's labels (hence cluster sizes)", 8),
    "pqc_sknn": Privacy("neighbour-index", 2, "nearest model row of each record, predictions", 11),
    "dbsnnc": Privacy("distance-order", 3, "order and OPE magnitudes of all pairwise distances", 5),
    "dbskmeans": Privacy("distance-order", 3, "per-attribute order of every record-centroid difference", 3),
    "pqc_dbskmeans": Privacy("distance-order", 3, "per-attribute order of record-centroid differences", 7),
    "nnc": Privacy("distances", 4, "all pairwise L1 distances: the dataset up to an isometry", 4),
    "skmeans": Privacy("translation", 5, "the dataset up to one translation (UDM), every shift", 2),
    "pqc_skmeans": Privacy("translation", 5, "the dataset up to one translation (UDM), every shift", 6),
    "sknn": Privacy("scaled", 6, "Liu ciphertexts: the data up to a secret scale; nearest indices", 10),
    "kmeans": Privacy("plaintext", 7, "everything", 1),
    "knn": Privacy("plaintext", 7, "everything", 9),
    "lr": Privacy("plaintext", 7, "everything", 12),
}


def privacy_class(protocol: str) -> str:
    """The one-word privacy class of ``protocol`` (a demo name, e.g. ``"pqc_kmeans"``)."""
    base = protocol.split("+", 1)[0].split(" ", 1)[0]
    entry = PRIVACY.get(base)
    return entry.cls if entry is not None else "?"


# ----------------------------------------------------------------------------- measuring
@dataclass
class CpuTimer:
    seconds: float = 0.0


@contextlib.contextmanager
def cpu_seconds(timer: CpuTimer | None = None) -> Iterator[CpuTimer]:
    """CPU seconds of the enclosed (synchronous) local work, all threads of this process.

    Process time, not thread time: scikit-learn's k-means runs OpenMP threads, and the local run
    must be charged for all of them. Nothing else of the owner runs meanwhile (no ``await``).
    """
    out = timer if timer is not None else CpuTimer()
    started = time.process_time()
    try:
        yield out
    finally:
        out.seconds += time.process_time() - started


def ratio(owner_cpu: float, local: float) -> float:
    """owner_cpu / local; 0 when the owner did nothing, inf when the local run took no time."""
    if owner_cpu <= 0.0:
        return 0.0
    if local <= 0.0:
        return math.inf
    return owner_cpu / local


def totals(reports: Iterable[JobReport]) -> tuple[float, float]:
    """(owner CPU seconds, worker seconds) of the jobs one protocol run is made of."""
    owner = worker = 0.0
    for report in reports:
        owner += report.owner_cpu_seconds
        worker += report.worker_seconds
    return owner, worker


@dataclass
class LedgerEntry:
    """One line of the ledger: one protocol on one dataset."""

    protocol: str
    dataset: str
    n: int
    owner_cpu: float
    local: float
    worker: float
    rounds: int | None = None
    privacy: str = ""

    def __post_init__(self) -> None:
        if not self.privacy:
            self.privacy = privacy_class(self.protocol)

    @property
    def ratio(self) -> float:
        return ratio(self.owner_cpu, self.local)

    @property
    def flagged(self) -> bool:
        """The owner works more than it would mining its data itself in plaintext."""
        return self.ratio > 1.0

    def as_dict(self) -> dict[str, Any]:
        value = self.ratio
        return {
            "protocol": self.protocol,
            "dataset": self.dataset,
            "n": self.n,
            "rounds": self.rounds,
            "owner_cpu_s": round(self.owner_cpu, 6),
            "local_s": round(self.local, 6),
            "ratio": None if math.isinf(value) else round(value, 4),
            "worker_s": round(self.worker, 6),
            "privacy": self.privacy,
            "flagged": self.flagged,
        }


# ----------------------------------------------------------------------------- rendering
def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_seconds(value: float) -> str:
    """Seconds with three significant digits (iris runs take microseconds, 1e5 runs seconds)."""
    if value == 0.0:
        return "0"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def fmt_ratio(value: float) -> str:
    if math.isinf(value):
        return "inf"
    if value == 0.0:
        return "0"
    return f"{value:.3g}x" if value < 1000 else f"{value:.2e}x"


def _render(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


LEDGER_HEADER = ("owner_cpu_s", "local_s", "ratio", "worker_s", "privacy")


def ledger_cells(entry: LedgerEntry | None) -> list[str]:
    """The ledger columns of one row; the ratio carries a ``!`` when the owner works more than locally."""
    if entry is None:
        return ["-"] * len(LEDGER_HEADER)
    return [
        fmt_seconds(entry.owner_cpu),
        fmt_seconds(entry.local),
        fmt_ratio(entry.ratio) + (" !" if entry.flagged else ""),
        fmt_seconds(entry.worker),
        entry.privacy,
    ]


def format_ledger(entries: Sequence[LedgerEntry]) -> str:
    """The benchmark's table: one line per protocol and size."""
    header = ["protocol", "dataset", "n", "rounds", *LEDGER_HEADER]
    body = [
        [e.protocol, e.dataset, str(e.n), "-" if e.rounds is None else str(e.rounds), *ledger_cells(e)]
        for e in entries
    ]
    return _render(header, body)


def format_table(rows: Sequence[DemoRow]) -> str:
    """The demo's table: results and agreement, then the ledger columns of each row."""
    header = [
        "algorithm",
        "dataset",
        "n",
        "iter",
        "seconds",
        "agreement",
        "vs truth",
        *LEDGER_HEADER,
        "status",
    ]
    body = [
        [
            r.algorithm,
            r.dataset,
            str(r.n),
            "-" if r.iterations is None else str(r.iterations),
            f"{r.seconds:.2f}",
            f"{fmt(r.agreement)} {r.metric}".strip() if r.agreement is not None else "-",
            fmt(r.truth),
            *ledger_cells(r.ledger),
            "ok" if r.ok else "FAIL",
        ]
        for r in rows
    ]
    return _render(header, body)


def flag_note(rows: Sequence[DemoRow]) -> str:
    """One line naming the rows whose owner worked more than a local plaintext run (empty if none)."""
    flagged = [f"{r.algorithm}/{r.dataset}" for r in rows if r.ledger is not None and r.ledger.flagged]
    if not flagged:
        return ""
    return f"! owner work > local plaintext work (outsourcing saves the owner nothing): {', '.join(flagged)}"
