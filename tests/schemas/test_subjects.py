"""Subject builders match the contract table and the parser inverts them."""

from __future__ import annotations

import pytest

from schemas import subjects


def test_contract_subjects() -> None:
    assert subjects.node_cmd("rory", "n1", "clustering.kmeans") == "rory.worker.n1.cmd.clustering.kmeans"
    assert subjects.node_cmd_all("rory", "n1") == "rory.worker.n1.cmd.>"
    assert subjects.node_queue("rory", "n1") == "rory.worker.n1"
    assert subjects.pool_cmd("rory", "ml.lr.train") == "rory.pool.cmd.ml.lr.train"
    assert subjects.pool_cmd_all("rory") == "rory.pool.cmd.>"
    assert subjects.pool_queue("rory") == "rory-workers"
    assert subjects.health("rory", "n1") == "rory.worker.n1.health"
    assert subjects.heartbeat("rory", "n1") == "rory.worker.n1.heartbeat"
    assert subjects.started("rory", "n1") == "rory.worker.n1.started"
    assert subjects.stopped("rory", "n1") == "rory.worker.n1.stopped"
    assert subjects.results("rory", "job-1") == "rory.results.job-1"
    assert subjects.jobs_node("rory", "n1", "clustering.nnc") == "rory.jobs.n1.clustering.nnc"
    assert subjects.jobs_pool("rory", "clustering.nnc") == "rory.jobs.pool.clustering.nnc"
    assert subjects.jobs_node_consumer("n1") == "worker-n1"
    assert subjects.JOBS_STREAM == "RORY_JOBS"
    assert subjects.srv_subjects("rory-worker", "ID1") == [
        "$SRV.PING",
        "$SRV.PING.rory-worker",
        "$SRV.PING.rory-worker.ID1",
        "$SRV.INFO",
        "$SRV.INFO.rory-worker",
        "$SRV.INFO.rory-worker.ID1",
        "$SRV.STATS",
        "$SRV.STATS.rory-worker",
        "$SRV.STATS.rory-worker.ID1",
    ]
    assert subjects.node_cmd("acme.rory", "n1", "x") == "acme.rory.worker.n1.cmd.x"


@pytest.mark.parametrize(
    "call",
    [
        lambda: subjects.node_cmd("rory", "n 1", "x"),
        lambda: subjects.node_cmd("rory", "n1", "x.>"),
        lambda: subjects.node_cmd("rory", "n1", "x..y"),
        lambda: subjects.node_cmd("ro*ry", "n1", "x"),
        lambda: subjects.pool_cmd("rory", "*"),
        lambda: subjects.results("rory", "a.b"),
        lambda: subjects.results("rory", ""),
        lambda: subjects.health("rory", "n" * 65),
        lambda: subjects.jobs_node("rory", "pool", "x"),
        lambda: subjects.srv("NOPE"),
    ],
)
def test_invalid_tokens_rejected(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_parse_roundtrip() -> None:
    parsed = subjects.parse_command_subject("rory", subjects.node_cmd("rory", "n1", "clustering.pqc.skmeans"))
    assert parsed == subjects.CommandSubject("node", "n1", "clustering.pqc.skmeans")
    assert subjects.parse_command_subject(
        "rory", subjects.pool_cmd("rory", "a.b")
    ) == subjects.CommandSubject("pool", None, "a.b")
    assert subjects.parse_command_subject("rory", subjects.jobs_node("rory", "n1", "a")).via == "jobs-node"
    assert subjects.parse_command_subject("rory", subjects.jobs_pool("rory", "a")).via == "jobs-pool"
    for bad in (
        "other.worker.n1.cmd.x",
        "rory.worker.n1.health",
        "rory.worker.n1.cmd.",
        "rory.pool.cmd",
        "rory.results.x",
    ):
        assert subjects.parse_command_subject("rory", bad) is None


def test_op_extractor() -> None:
    ops = subjects.OpExtractor("rory", "n1")
    assert ops.op("rory.worker.n1.cmd.clustering.kmeans") == "clustering.kmeans"
    assert ops.op("rory.pool.cmd.ml.lr.train") == "ml.lr.train"
    assert ops.op("rory.worker.n2.cmd.x") == ""
