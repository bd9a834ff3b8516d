"""The main job as a user runs it (`rory-client demo`), plus the CLI's keygen/upload/run commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataowner import cli, demo
from dataowner.demo import ALGORITHMS, DemoRow, format_table, nnc_threshold, parse_list
from dataowner.ledger import LEDGER_HEADER
from tests.dataowner.tables import DEMO_COLUMNS

REPO = Path(__file__).resolve().parents[2]


def _client_command() -> list[str]:
    exe = shutil.which("rory-client")
    return [exe] if exe else [sys.executable, "-m", "dataowner.cli"]


@pytest.mark.demo
def test_demo_quick_smoke(tmp_path):
    """`rory-client demo --quick --only kmeans,skmeans`: real nats-server, real worker process."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [*_client_command(), "demo", "--quick", "--only", "kmeans,skmeans", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2/2 ok" in proc.stdout
    assert "kmeans" in proc.stdout and "skmeans" in proc.stdout and "iris" in proc.stdout
    # the outsourcing ledger's columns (dataowner/ledger.py) are in the printed table
    header = next(line for line in proc.stdout.splitlines() if line.startswith("algorithm"))
    for column in LEDGER_HEADER:
        assert column in header
    import json

    rows = json.loads(out.read_text())
    assert [r["algorithm"] for r in rows] == ["kmeans", "skmeans"]
    assert all(r["ok"] and r["agreement"] == pytest.approx(1.0) for r in rows)
    ledger = {r["algorithm"]: r["ledger"] for r in rows}
    assert ledger["kmeans"]["owner_cpu_s"] == 0 and ledger["kmeans"]["privacy"] == "plaintext"
    assert ledger["skmeans"]["owner_cpu_s"] > 0 and ledger["skmeans"]["privacy"] == "translation"
    # the temporary data directory (keys, storage, logs) is gone and no worker is left behind
    assert "(temporary)" in proc.stdout
    data_dir = Path(proc.stdout.split("data directory:")[1].split()[0])
    assert not data_dir.exists()


def test_demo_unknown_algorithm_is_a_usage_error():
    with pytest.raises(SystemExit, match="unknown algorithm nope"):
        parse_list("kmeans,nope", list(ALGORITHMS), "algorithm")
    assert parse_list("pqc-skmeans", list(ALGORITHMS), "algorithm") == ["pqc_skmeans"]


def test_demo_options_and_table():
    args = cli.build_parser().parse_args(["demo", "--quick"])
    options = demo.options_from_args(args)
    assert options.quick and options.datasets == ["iris"] and options.only == list(ALGORITHMS)
    args = cli.build_parser().parse_args(["demo", "--only", "skmeans", "--datasets", "wine,iris"])
    options = demo.options_from_args(args)
    assert options.only == ["skmeans"] and options.datasets == ["wine", "iris"] and not options.quick
    rows = [
        DemoRow("skmeans", "iris", 150, 6, 0.2, 1.0, 0.66, "ARI", ok=True),
        DemoRow("pplr", "wine", 30, 2, 40.0, None, None, "", ok=False, error="boom"),
    ]
    table = format_table(rows).splitlines()
    assert table[0].split() == DEMO_COLUMNS
    assert table[2].split()[-1] == "ok" and table[3].split()[-1] == "FAIL"
    # every algorithm of the demo has a driver on the client
    from dataowner.client import DataOwnerClient

    for name, spec in ALGORITHMS.items():
        if name in ("lr", "pplr"):
            assert hasattr(DataOwnerClient, f"{name}_train") and hasattr(DataOwnerClient, f"{name}_predict")
        else:
            assert hasattr(DataOwnerClient, name), name
        assert spec.kind in ("cluster", "classify")


def test_nnc_threshold_is_the_largest_nearest_neighbour_distance():
    dm = np.array([[0, 1, 5], [1, 0, 3], [5, 3, 0]], dtype=float)
    assert nnc_threshold(dm) == 3.0


def test_cli_keygen_upload_offline(tmp_path, capsys):
    data = tmp_path / "d"
    assert cli.main(["keygen", "--data-dir", str(data)]) == 0
    assert (data / "owner-keys" / "liu.json").is_file()
    assert sorted(p.name for p in (data / "keys").iterdir()) == ["ctx", "pubkey", "relinkey"]
    assert cli.main(["keygen", "--data-dir", str(data)]) == 0  # idempotent: keeps the keys
    assert "keys exist" in capsys.readouterr().out
    csv = tmp_path / "x.csv"
    csv.write_text("a,b,label\n1,2,x\n3,4,y\n5,6,x\n")
    assert (
        cli.main(["upload", str(csv), "--id", "mydata", "--data-dir", str(data), "--label-column", "label"])
        == 0
    )
    assert "stored x (3x2, liu) as encryptedmydata" in capsys.readouterr().out
    assert (data / "storage" / "rory" / "encryptedmydata.ref").is_file()
    # bad input: one line on stderr, usage exit code
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3\n")
    assert cli.main(["upload", str(bad), "--id", "b", "--data-dir", str(data)]) == cli.EXIT_USAGE
    assert "row 2 has 1 columns" in capsys.readouterr().err


async def test_cli_run_against_a_worker(start_worker, nats_url, tmp_path):
    """`rory-client run skmeans iris --node N` against an in-process worker (via a thread: the CLI
    owns its event loop)."""
    import asyncio

    from worker.handlers import default_registry
    from worker.storage import LocalStore

    data = tmp_path / "d"
    assert cli.main(["keygen", "--data-dir", str(data)]) == 0
    worker = await start_worker(
        registry=default_registry(), store=LocalStore(data / "storage"), keys_path=str(data / "keys")
    )

    def run_argv(algorithm: str, node: str, *extra: str) -> list[str]:
        return [
            "run",
            algorithm,
            "iris",
            "--data-dir",
            str(data),
            "--nats",
            nats_url,
            "--node",
            node,
            "--prefix",
            worker.settings.rory_subject_prefix,
            *extra,
        ]

    argv = run_argv(
        "skmeans", worker.settings.node_id, "--json", "--labels-out", str(tmp_path / "labels.npy")
    )
    code = await asyncio.to_thread(cli.main, argv)
    assert code == 0
    labels = np.load(tmp_path / "labels.npy")
    assert labels.shape == (150,) and set(np.unique(labels)) <= {0, 1, 2}
    code = await asyncio.to_thread(cli.main, [*argv[:1], "kmeans", *argv[2:], "--k", "2"])
    assert code == 0 and set(np.unique(np.load(tmp_path / "labels.npy"))) == {0, 1}
    nobody = run_argv("kmeans", "ghost")
    assert await asyncio.to_thread(cli.main, nobody) == cli.EXIT_FAILED


async def test_cli_run_classification(start_worker, nats_url, tmp_path, capsys):
    """`rory-client run sknn|lr iris`: the two-step and the train-then-predict paths of the CLI."""
    import asyncio
    import json

    from worker.handlers import default_registry
    from worker.storage import LocalStore

    data = tmp_path / "d"
    assert cli.main(["keygen", "--data-dir", str(data)]) == 0
    worker = await start_worker(
        registry=default_registry(), store=LocalStore(data / "storage"), keys_path=str(data / "keys")
    )
    capsys.readouterr()
    common = ["iris", "--data-dir", str(data), "--nats", nats_url, "--node", worker.settings.node_id]
    common += ["--prefix", worker.settings.rory_subject_prefix, "--json"]
    for algorithm, ops in (
        ("sknn", ["classification.sknn.predict"]),
        ("lr", ["ml.lr.train", "ml.lr.predict"]),
    ):
        assert await asyncio.to_thread(cli.main, ["run", algorithm, *common, "--epochs", "3"]) == 0
        body = json.loads(capsys.readouterr().out)
        assert [r["op"] for r in body["reports"]] == ops
        assert len(body["output"]) == 45 and body["accuracy"] > 0.8
