"""The committed nats-server configs are valid (``nats-server -t``), boot, and match their generators."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from scripts.cluster import (
    NatsServer,
    ServerPorts,
    example_node_confs,
    free_ports,
    nats_server_binary,
    wait_until,
)
from scripts.cluster_conf import LIVENESS_LINES, ROUTE_LIVENESS_LINES
from scripts.nats_auth import EXAMPLE_HEADER, MANAGER, parse_public_keys, render_accounts_conf
from tests.deploy.util import REPO

CONFIG = REPO / "config"
ALL_CONFS = [
    CONFIG / "nats-server.conf",
    CONFIG / "auth" / "nats-server.conf",
    *sorted((CONFIG / "cluster").glob("*.conf")),
]


def _check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("path", ALL_CONFS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_is_valid(path):
    result = _check(path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "is valid" in result.stderr + result.stdout


def test_three_cluster_members_are_committed():
    assert sorted(p.name for p in (CONFIG / "cluster").glob("*.conf")) == [
        "node-a.conf",
        "node-b.conf",
        "node-c.conf",
    ]


def test_cluster_confs_are_generated():
    """node-*.conf come from the same renderer LocalCluster boots in the cluster tests."""
    for name, text in example_node_confs().items():
        assert (CONFIG / "cluster" / name).read_text() == text, "python scripts/cluster.py --write-configs"


def test_cluster_routes_form_a_full_mesh():
    confs = {
        name: (CONFIG / "cluster" / name).read_text()
        for name in ("node-a.conf", "node-b.conf", "node-c.conf")
    }
    own = {
        name: re.search(r"cluster \{\s*name: rory\s*listen: 127\.0\.0\.1:(\d+)", t).group(1)
        for name, t in confs.items()
    }
    for name, text in confs.items():
        routes = set(re.findall(r"nats-route://127\.0\.0\.1:(\d+)", text))
        assert routes == set(own.values()) - {own[name]}
        assert "127.0.0.1" in text and "0.0.0.0" not in text  # loopback only


def test_auth_example_matches_the_generator_and_holds_no_seed():
    text = (CONFIG / "auth" / "accounts.conf").read_text()
    keys = parse_public_keys(text)
    assert set(keys) == {"rory-worker-0", "rory-worker-1", MANAGER}
    workers = {node: key for node, key in keys.items() if node != MANAGER}
    assert text == render_accounts_conf(workers, keys[MANAGER], header=EXAMPLE_HEADER)
    assert "EXAMPLE ONLY" in text
    assert not re.search(r"\bS[A-Z2-7]{57}\b", text), "no nkey seed may be committed"
    assert not list((CONFIG / "auth").glob("*.nk"))


def _substituted(text: str, tmp_path: Path, ports: ServerPorts) -> str:
    text = text.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{ports.client}")
    text = text.replace("http: 0.0.0.0:8222", f"http: 127.0.0.1:{ports.http}")
    return text.replace('store_dir: "/data"', f'store_dir: "{tmp_path / "js"}"')


def test_single_node_config_boots_with_its_limits(tmp_path):
    """The compose server config, with loopback ports and a temp store: limits are what we promise."""
    ports = ServerPorts(*free_ports(3))
    conf = tmp_path / "nats-server.conf"
    conf.write_text(_substituted((CONFIG / "nats-server.conf").read_text(), tmp_path, ports))
    server = NatsServer("rory-nats-0", conf, ports, tmp_path / "nats.log")
    server.start()
    try:
        wait_until(server.healthy, 10, "nats-server healthy")
        varz = server.monitor("/varz")
        assert varz["max_payload"] == 1024 * 1024
        assert varz["server_name"] == "rory-nats-0"
        js = varz["jetstream"]["config"]
        assert js["max_memory"] == 256 * 1024**2
        assert js["max_storage"] == 2 * 1024**3
        assert js["store_dir"].startswith(str(tmp_path / "js"))
        assert varz["ping_interval"] == 2 * 10**9 and varz["ping_max"] == 2  # (nanoseconds)
        assert _dropped_after_silence(ports.client) < 30.0
    finally:
        server.stop()


@pytest.mark.parametrize("path", ALL_CONFS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_server_config_drops_a_silent_client_in_seconds(path):
    """A partitioned worker must leave the pool queue group soon (docs/reliability.md, "Link cut"):
    every shipped config pings clients every 2 s and closes one after 2 missed pings."""
    lines = {line.split("#")[0].strip() for line in path.read_text().splitlines()}
    assert set(LIVENESS_LINES) <= lines
    if "cluster {" in path.read_text():  # routes keep a slower pace of their own (a stall is not death)
        assert set(ROUTE_LIVENESS_LINES) <= lines


def _dropped_after_silence(port: int) -> float:
    """Connect like a client that then goes silent (never answers PING, as behind a cut link);
    return the seconds until the server closes the connection (the default would be minutes)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        while sock.recv(4096):  # PINGs, unanswered, until the server hangs up
            pass
    return time.monotonic() - started
