"""Every benchmark script still runs: each one at its smallest sizes, as a user would start it.

``python benchmarks/<script>.py ...`` in a child process from the repository root; the test checks the
exit status and that the output holds the figures a reader looks for (the goal lines, the table
headers, the series' names). Never a timing or a ratio: the targets live in the scripts' own output.
The scripts start their own loopback nats-server (``worker.embedded.EmbeddedNats``, 127.0.0.1), fake
MictlanX router and workers, and write their temporary files under the test's ``tmp_path`` (TMPDIR).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
TIMEOUT_S = 240

#: test id -> (script, arguments ("{tmp}" becomes the test's tmp_path), strings its stdout must hold)
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    "core_liu": (
        "bench_core_liu.py",
        ["--n", "1000", "--repeat", "1"],
        ["Liu encrypt", "SKMeans worker total", "ratio secure/plaintext", "(goal <= 3x",
         "peak traced memory, secure iteration", "FDH-OPE encrypt"],
    ),
    "core_ckks": (
        "bench_core_ckks.py",
        ["--n", "200", "--skmeans-n", "50", "--reps", "1"],
        ["== sizes ==", "== per-vector cost, core vs TenSEAL", "goal: overhead < 10 %",
         "== SKMeans-PQC, one iteration", "== PQC k-means (labels only)", "== per full round",
         "bytes to worker"],
    ),
    "storage": (
        "bench_storage.py",
        ["--sizes", "1", "--repeat", "1", "--small-count", "10"],
        ["goals: local put/np and get/np >= 0.70", "contender", "put MB/s", "get peak",
         "numpy.save / numpy.load", "local sha256=True", "mictlanx via fake router",
         "fsync cost of a put", "fsync MB/s"],
    ),
    "storage_nats": (
        "bench_storage.py",
        ["--nats-only", "--nats-r3", "--repeat", "1", "--small-count", "10"],
        ["backend", "small put/s", "local (default)", "nats R1 (file storage)", "nats R3 (3 local servers)"],
    ),
    "e2e": (
        "bench_e2e.py",
        ["--n", "60", "--rounds", "2", "--pqc-n", "60", "--pqc-rounds", "1"],
        ["(worker process,", "labels identical", "in-process", "end-to-end", "mean round (ms)", "(goal <=",
         "round ratio end-to-end / in-process", "per-round overhead", "health while the job ran", "goal p99",
         "per protocol: mean round in process vs end to end", "labels agree", "  skmeans ", "  dbskmeans ",
         "  pqc-skmeans ", "  pqc-dbskmeans "],
    ),
    "e2e_in_process": (
        "bench_e2e.py",
        ["--n", "60", "--rounds", "2", "--in-process", "--protocols", "skmeans,pqc-skmeans", "--pqc-n", "60",
         "--pqc-rounds", "1"],
        ["(worker in process,", "labels identical", "mean round (ms)", "(goal <=", "per-round overhead",
         "per protocol: mean round in process vs end to end", "  pqc-skmeans "],
    ),
    "growth": (
        "bench_growth.py",
        ["--sizes", "300,1000", "--rounds", "2", "--store-cache-mb", "64"],
        ["goal: linear growth", "round ms", "read MB", "peak RSS MB", "mem growth MB", "x prev"],
    ),
    "ledger": (
        "bench_ledger.py",
        ["--sizes", "100", "--pqc-n", "100", "--rounds", "2", "--pqc-rounds", "1", "--markdown",
         "--json", "{tmp}/ledger.json"],
        ["outsourcing ledger", "owner_cpu_s", "privacy", "pqc_kmeans", "pqc_dbskmeans+refresh",
         "ratio = owner CPU / local plaintext CPU", "| protocol | n | rounds |"],
    ),
    "pplr": (
        "bench_pplr.py",
        ["--epochs", "1", "--datasets", "iris"],
        ["iris:", "goal <= 1 s", "plaintext LR (numpy)", "textbook TenSEAL", "worker PPLR in process",
         "worker PPLR end to end (NATS + storage)"],
    ),
    "pool": (
        "bench_pool.py",
        ["--workers", "1,2", "--slots", "2,1", "--commands", "4", "--rounds", "1", "--n", "500",
         "--iterations", "1"],
        ["pool benchmark:", "cmd/s", "occup.", "core       on", "core       off", "jetstream  on",
         "goal >= 0.90x (2 cores)", "goal 0 while a slot is free"],
    ),
    "runtime": (
        "bench_runtime.py",
        ["--requests", "20", "--health-requests", "20", "--rounds", "1"],
        ["runtime benchmark:", "series", "p99 ms", "worker no-op command", "slots burning CPU",
         "dispatch overhead", "goal <= 1.20x", "health p99 under load", "goal < 10 ms"],
    ),
    "jetstream": (
        "bench_jetstream.py",
        ["--commands", "20", "--latency", "10"],
        ["durable intake benchmark", "core request-reply", "jetstream -> results", "latency ratio",
         "burst, jetstream", "redelivery answered from record"],
    ),
    # run_all.py sequences the others with their default arguments: the quickest one proves it works
    "run_all": (
        "run_all.py",
        ["--only", "core-liu"],
        ["=== core-liu: python benchmarks/bench_core_liu.py", "(goal <= 3x", "=== core-liu: exit 0"],
    ),
}


def run_script(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/<script> args`` from the repository root; on a hang, SIGINT (the scripts'
    ``finally`` blocks stop their servers and workers), then SIGKILL of its process group."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(BENCHMARKS / script), *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
            shown = f"--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}"
            pytest.fail(f"{script} ran past {TIMEOUT_S} s\n{shown}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.parametrize("case", list(CASES))
def test_script_runs_and_prints_its_figures(case: str, tmp_path: Path) -> None:
    script, args, expected = CASES[case]
    result = run_script(script, args, tmp_path)
    shown = f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
    assert result.returncode == 0, f"{script} exited {result.returncode}\n{shown}"
    missing = [text for text in expected if text not in result.stdout]
    assert not missing, f"{script}: missing from its output: {missing}\n{shown}"
    assert "Traceback (most recent call last)" not in result.stdout + result.stderr, shown
    if case == "ledger":
        rows = json.loads((tmp_path / "ledger.json").read_text())
        assert {row["protocol"] for row in rows} >= {"kmeans", "skmeans", "pqc_skmeans"}


@pytest.mark.parametrize("script", sorted({script for script, _, _ in CASES.values()}))
def test_help_lists_the_flags_used_here(script: str, tmp_path: Path) -> None:
    """``--help`` works (argparse formats every help string only then) and names the small-size flags."""
    result = run_script(script, ["--help"], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr
    flags = {arg for name, args, _ in CASES.values() if name == script for arg in args if arg[:2] == "--"}
    undocumented = [flag for flag in sorted(flags) if flag not in result.stdout]
    assert not undocumented, result.stdout


def test_every_benchmark_script_has_a_case() -> None:
    """A new benchmark script gets a smoke case here, or it may rot unnoticed."""
    scripts = {path.name for path in BENCHMARKS.glob("*.py")}
    assert scripts == {script for script, _, _ in CASES.values()}


def test_run_all_names_existing_scripts_and_rejects_unknown_names(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_run_all", BENCHMARKS / "run_all.py")
    assert spec is not None and spec.loader is not None
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    for script, _, _ in run_all.BENCHMARKS.values():
        assert (BENCHMARKS / script).is_file(), script
    result = run_script("run_all.py", ["--only", "no-such-benchmark"], tmp_path)
    assert result.returncode == 2 and "unknown benchmark(s): no-such-benchmark" in result.stderr
