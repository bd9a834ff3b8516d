"""The outsourcing ledger (dataowner/ledger.py): its math, its one privacy map, and the demo's columns.

No assertion depends on how long anything took: only on which figures are zero, positive or present.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dataowner.client import DataOwnerClient
from dataowner.demo_cases import ALGORITHMS, Context, DemoRow, prepare, run_case
from dataowner.inprocess_port import InProcessPort
from dataowner.job import JobReport
from dataowner.keys import OwnerKeys
from dataowner.ledger import (
    LEDGER_HEADER,
    PRIVACY,
    LedgerEntry,
    cpu_seconds,
    flag_note,
    format_ledger,
    format_table,
    privacy_class,
    ratio,
    totals,
)
from dataowner.progress import ProgressDisplay
from tests.dataowner.tables import DEMO_COLUMNS
from worker.storage import LocalStore

DOCS = Path(__file__).resolve().parents[2] / "docs" / "privacy.md"


def test_ratio_and_flag():
    assert ratio(2.0, 4.0) == 0.5
    assert ratio(0.0, 0.0) == 0.0  # the owner did nothing: nothing to save
    assert math.isinf(ratio(1.0, 0.0))
    saves = LedgerEntry("skmeans", "iris", 150, owner_cpu=0.5, local=1.0, worker=0.2)
    costs = LedgerEntry("dbskmeans+refresh", "iris", 150, owner_cpu=3.0, local=1.0, worker=0.2)
    assert not saves.flagged and saves.ratio == 0.5 and saves.privacy == "translation"
    assert costs.flagged and costs.ratio == 3.0 and costs.privacy == "distance-order"
    assert costs.as_dict()["flagged"] is True and costs.as_dict()["ratio"] == 3.0
    inf = LedgerEntry("pqc_kmeans", "iris", 150, owner_cpu=1.0, local=0.0, worker=0.0)
    assert inf.as_dict()["ratio"] is None and inf.flagged
    table = format_ledger([saves, costs]).splitlines()
    assert table[0].split() == ["protocol", "dataset", "n", "rounds", *LEDGER_HEADER]
    assert "!" not in table[2] and "3x !" in table[3]


def test_totals_add_every_job_of_a_row():
    a = JobReport("ml.lr.train", "j1", "d", 10, owner_cpu_seconds=0.25, worker_seconds=1.0)
    b = JobReport("ml.lr.predict", "j2", "d", 10, owner_cpu_seconds=0.5, worker_seconds=2.0)
    assert totals([a, b]) == (0.75, 3.0)


def test_cpu_seconds_measures_local_work():
    with cpu_seconds() as timer:
        np.linalg.svd(np.random.default_rng(0).normal(size=(120, 120)))
    assert timer.seconds >= 0.0


def test_one_privacy_class_per_demo_protocol_and_the_docs_name_each():
    assert set(PRIVACY) == set(ALGORITHMS)
    assert privacy_class("dbskmeans+refresh") == privacy_class("dbskmeans") == "distance-order"
    assert privacy_class("pqc_kmeans") == "labels-only"
    assert privacy_class("nope") == "?"
    docs = DOCS.read_text()
    for name, entry in PRIVACY.items():
        assert " " not in entry.cls, name  # one word (hyphens allowed)
        assert f"`{entry.cls}`" in docs, f"docs/privacy.md does not name the class of {name}"
    # the least-leaking class ranks lowest, the plaintext protocols highest
    assert min(PRIVACY.values(), key=lambda p: p.rank).cls == "sizes-only"
    assert {p.cls for p in PRIVACY.values() if p.rank == max(q.rank for q in PRIVACY.values())} == {
        "plaintext"
    }


def test_demo_table_has_the_ledger_columns_and_flags():
    report = JobReport("clustering.dbskmeans", "j", "d", 150, owner_cpu_seconds=0.02, worker_seconds=0.1)
    flagged = DemoRow("dbskmeans", "iris", 150, 6, 0.2, 0.9, 0.6, "ARI", ok=True, reports=[report])
    flagged.local_seconds = 0.001
    failed = DemoRow("pplr", "wine", 30, None, 40.0, None, None, "", ok=False, error="boom")
    lines = format_table([flagged, failed]).splitlines()
    assert lines[0].split() == DEMO_COLUMNS
    assert "20x !" in lines[2] and "distance-order" in lines[2]
    assert lines[3].split()[-6:] == ["-", "-", "-", "-", "-", "FAIL"]
    assert "dbskmeans/iris" in flag_note([flagged, failed])
    assert flag_note([failed]) == ""
    assert flagged.as_dict()["ledger"]["privacy"] == "distance-order"


@pytest.fixture
async def demo_context(tmp_path):
    keys = OwnerKeys.generate(tmp_path / "owner-keys", profiles=())
    store = LocalStore(tmp_path / "css")
    client = DataOwnerClient(None, store, keys, port=InProcessPort(store))
    yield Context(client, None, True, ProgressDisplay(enabled=False))
    await client.close()
    await store.aclose()


async def test_a_tiny_demo_run_fills_every_ledger_column(demo_context):
    """kmeans, dbskmeans, sknn and dbsnnc on iris through the worker's own handlers (no bus)."""
    iris = prepare("iris")
    rows = [
        await run_case(demo_context, ALGORITHMS[name], iris)
        for name in ("kmeans", "dbskmeans", "sknn", "dbsnnc")
    ]
    assert all(r.ok for r in rows), [r.error for r in rows]
    for row in rows:
        entry = row.ledger
        assert entry is not None and entry.local > 0.0 and entry.worker > 0.0
        assert entry.privacy == PRIVACY[row.algorithm].cls
        for report in row.reports:
            assert report.bytes_up > 0 and report.bytes_down > 0 and report.rounds
            assert all("owner_cpu" in r and "wait" in r for r in report.rounds)
    kmeans, dbskmeans, sknn, dbsnnc = (r.ledger for r in rows)
    assert kmeans is not None and kmeans.owner_cpu == 0.0  # plaintext upload: no owner work at all
    for entry in (dbskmeans, sknn, dbsnnc):  # encryption, OPE, decryption: owner work is counted
        assert entry is not None and entry.owner_cpu > 0.0
    # every round of the refreshed DBSKMeans but the last re-encrypts the UDM on the owner's side
    per_round = [r["owner_cpu"] for r in rows[1].reports[0].rounds]
    assert len(per_round) == rows[1].iterations and all(v > 0.0 for v in per_round[:-1])
    table = format_table(rows)
    for column in LEDGER_HEADER:
        assert column in table.splitlines()[0]
    assert "labels-only" not in table and "plaintext" in table and "distance-order" in table
