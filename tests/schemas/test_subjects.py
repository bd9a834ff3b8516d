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
    assert subjects.results("rory", "n1", "job-1") == "rory.results.n1.job-1"
    assert subjects.results_of_job("rory", "job-1") == "rory.results.*.job-1"
    assert subjects.results_of_node("rory", "n1") == "rory.results.n1.*"
    assert subjects.results_all("rory") == "rory.results.>"
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
        lambda: subjects.results("rory", "n1", "a.b"),
        lambda: subjects.results("rory", "n1", ""),
        lambda: subjects.results("rory", "*", "job-1"),  # a node token is never a wildcard
        lambda: subjects.results("rory", "n.1", "job-1"),
        lambda: subjects.results_of_job("rory", ">"),
        lambda: subjects.results_of_node("rory", "*"),
        lambda: subjects.record_key("rory", "n1", "a.b"),
        lambda: subjects.record_key("rory", "*", "c1"),
        lambda: subjects.record_keys("rory", ">"),
        lambda: subjects.dlq_subject("rory", "n*", "x"),
        lambda: subjects.max_deliveries_advisory("RORY_JOBS", "a.b"),
        lambda: subjects.results_bucket("A.B"),
        lambda: subjects.health("rory", "n" * 65),
        lambda: subjects.jobs_node("rory", "pool", "x"),
        lambda: subjects.srv("NOPE"),
    ],
)
def test_invalid_tokens_rejected(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_jetstream_names() -> None:
    """Result records, dead letters and advisories: the names the intake and the permissions share."""
    assert subjects.results_bucket("RORY_JOBS") == "RORY_RESULTS"
    assert subjects.results_bucket("OTHER") == "OTHER_RESULTS"
    assert subjects.record_key("rory", "n1", "c1") == "rory.n1.c1"
    assert subjects.record_key("rory", "pool", "c1") == "rory.pool.c1"
    assert subjects.record_keys("acme.rory", "n1") == "acme.rory.n1.*"
    assert subjects.kv_subject("RORY_RESULTS", "rory.n1.*") == "$KV.RORY_RESULTS.rory.n1.*"
    assert (
        subjects.kv_direct_get("RORY_RESULTS", "rory.n1.c1")
        == "$JS.API.DIRECT.GET.KV_RORY_RESULTS.$KV.RORY_RESULTS.rory.n1.c1"
    )
    assert subjects.dlq_subject("rory", "n1", "clustering.nnc") == "rory.dlq.n1.clustering.nnc"
    assert subjects.dlq_subject("rory", "pool", "bad op!") == "rory.dlq.pool.unknown"
    assert subjects.dlq_source_all("rory", "n1") == "rory.dlq.n1.>"
    assert subjects.dlq_stream_subjects("rory") == ["rory.dlq.>"]
    assert subjects.dlq_movers_queue("rory") == "rory.dlq-movers"
    assert (
        subjects.max_deliveries_advisory("RORY_JOBS", "worker-n1")
        == "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.RORY_JOBS.worker-n1"
    )
    assert (
        subjects.max_deliveries_advisory("RORY_JOBS")
        == "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.RORY_JOBS.*"
    )


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
        "rory.results.n1.x",
    ):
        assert subjects.parse_command_subject("rory", bad) is None


def test_op_extractor() -> None:
    ops = subjects.OpExtractor("rory", "n1")
    assert ops.op("rory.worker.n1.cmd.clustering.kmeans") == "clustering.kmeans"
    assert ops.op("rory.pool.cmd.ml.lr.train") == "ml.lr.train"
    assert ops.op("rory.worker.n2.cmd.x") == ""
