"""NATS authorisation for Rory: one nkey user per worker node, plus a manager user.

Why a generator instead of a hand-written file: the per-node permission lists must match the subjects of
the wire contract (docs/contract.md, section 1) exactly, for every node, and the tests, the local cluster
(``scripts/cluster.py --auth``) and the committed example (``config/auth/accounts.conf``) must all use the
same lists. Seeds are written only to files the caller names (mode 0600) and never into a config.

Regenerate the committed example (fresh example-only keys; their seeds are thrown away)::

    python scripts/nats_auth.py --example config/auth/accounts.conf

Generate real material for a deployment (seeds land next to the config, one ``<node>.nk`` per node)::

    python scripts/nats_auth.py --out /secure/dir rory-worker-0 rory-worker-1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nkeys

if __package__ in (None, ""):  # run as `python scripts/nats_auth.py`: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import subjects
from worker.settings import Settings

DLQ_STREAM = Settings.model_fields["jetstream_dlq_stream"].default
RESULTS_BUCKET = subjects.results_bucket(subjects.JOBS_STREAM)

ACCOUNT = "RORY"
MANAGER = "manager"
_PUBKEY_RE = re.compile(r"nkey:\s*\"(U[A-Z2-7]{55})\"\s*#\s*user\s+(\S+)")


@dataclass(frozen=True)
class NkeyUser:
    """A user nkey; ``seed`` is None for public-only entries (such as the committed example)."""

    name: str
    public_key: str
    seed: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AuthMaterial:
    """What ``write_auth_material`` produced: the accounts include file and one seed file per user."""

    conf_path: Path
    seed_paths: dict[str, Path]
    users: dict[str, NkeyUser]

    def seed_path(self, name: str) -> Path:
        return self.seed_paths[name]


def inbox_prefix(node_id: str) -> str:
    """Per-node inbox prefix; a worker must set ``NATS_INBOX_PREFIX`` to this so its own requests work."""
    return f"_INBOX_{node_id}"


def generate_user(name: str) -> NkeyUser:
    """A fresh user nkey (Ed25519); the seed stays in memory until the caller writes it somewhere."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public_key = nkeys.from_seed(bytearray(seed)).public_key.decode()
    return NkeyUser(name=name, public_key=public_key, seed=bytes(seed))


def worker_permissions(node_id: str, prefix: str = "rory") -> dict[str, list[str]]:
    """Exactly the subjects node ``node_id`` uses (contract, section 1); replies use allow_responses.

    Built with ``schemas.subjects`` so a renamed subject changes the permissions too. A node reaches
    only its own subjects and the shared pool's, never another node's (docs/security.md):

    * results only under its own token, ``<p>.results.<node>.*``, so it cannot forge another's;
    * JetStream: its own durable ``worker-<node>`` and the pool durable; no stream-wide message access
      (``$JS.API.STREAM.MSG.GET``/``DELETE``, ``$JS.API.DIRECT.GET.<stream>``), no consumer creation,
      so it can neither read nor delete another node's queued commands. Its dead letters are published
      from the message it holds (``<p>.dlq.<node>.>``, ``<p>.dlq.pool.>``); the MAX_DELIVERIES
      mover, which needs stream-wide access, runs under the manager (see ``manager_permissions``);
    * result records only under ``<p>.<node>.*`` and ``<p>.pool.*`` of the results bucket, written
      through ``$KV.<bucket>.<key>`` and read by direct get on the key (the subject names the key).
    """
    if node_id == subjects.JOBS_POOL_TOKEN:
        raise ValueError(f"node id {node_id!r} is reserved: it would share the pool's subjects and records")
    consumers = [subjects.jobs_node_consumer(node_id), subjects.JOBS_POOL_CONSUMER]
    stream = subjects.JOBS_STREAM
    own_records = [subjects.record_keys(prefix, source) for source in (node_id, subjects.JOBS_POOL_TOKEN)]
    publish = [
        subjects.heartbeat(prefix, node_id),
        subjects.started(prefix, node_id),
        subjects.stopped(prefix, node_id),
        subjects.health(prefix, node_id),  # the container HEALTHCHECK asks with the node's own user
        subjects.results_of_node(prefix, node_id),
        # JetStream intake (RORY_JOBS_MODE=jetstream): this node's durable and the shared pool durable only.
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        *[f"$JS.API.CONSUMER.INFO.{stream}.{name}" for name in consumers],
        *[f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}" for name in consumers],
        *[f"$JS.ACK.{stream}.{name}.>" for name in consumers],
        # dead letters (published from the message held) and result records (KV), docs/reliability.md
        f"$JS.API.STREAM.INFO.{DLQ_STREAM}",
        f"$JS.API.STREAM.INFO.KV_{RESULTS_BUCKET}",
        subjects.dlq_source_all(prefix, node_id),
        subjects.dlq_source_all(prefix, subjects.JOBS_POOL_TOKEN),
        *[subjects.kv_subject(RESULTS_BUCKET, keys) for keys in own_records],
        *[subjects.kv_direct_get(RESULTS_BUCKET, keys) for keys in own_records],
    ]
    subscribe = [
        subjects.node_cmd_all(prefix, node_id),
        subjects.health(prefix, node_id),
        subjects.pool_cmd_all(prefix),
        *[subjects.srv(verb) for verb in subjects.SRV_VERBS],
        f"$SRV.*.{subjects.SERVICE_NAME}",
        f"$SRV.*.{subjects.SERVICE_NAME}.*",
        f"{inbox_prefix(node_id)}.>",
    ]
    return {"publish": publish, "subscribe": subscribe}


def manager_permissions(prefix: str = "rory") -> dict[str, list[str]]:
    """The manager drives every node, reads results and heartbeats, and administers the jobs stream.

    It also runs the dead-letter mover (``worker.runtime.jetstream.DeadLetterMover``): the
    MAX_DELIVERIES advisories of the jobs stream and stream-wide message access (``$JS.API.>``).
    """
    return {
        "publish": [f"{prefix}.>", "$SRV.>", "$JS.API.>"],
        "subscribe": [
            f"{prefix}.>",
            "_INBOX.>",
            subjects.max_deliveries_advisory(subjects.JOBS_STREAM),
        ],
    }


def _allow_list(kind: str, items: Sequence[str]) -> list[str]:
    """One subject per line, so a review of the permissions reads like a list."""
    pad = " " * 12
    head, tail = f"          {kind}: {{ allow: [", "          ] }"
    return [head, *[f"{pad}{json.dumps(item)}" for item in items], tail]


def _user_block(public_key: str, label: str, perms: Mapping[str, list[str]], responses: bool) -> list[str]:
    lines = [
        f'      {{ nkey: "{public_key}"  # user {label}',
        "        permissions: {",
        *_allow_list("publish", perms["publish"]),
        *_allow_list("subscribe", perms["subscribe"]),
    ]
    if responses:
        lines.append("          allow_responses: true")
    lines += ["        }", "      }"]
    return lines


def render_accounts_conf(
    workers: Mapping[str, str],
    manager_public_key: str,
    *,
    prefix: str = "rory",
    header: Sequence[str] = (),
) -> str:
    """The ``accounts { RORY { ... } }`` block to ``include`` from every server of a deployment.

    ``workers`` maps NODE_ID to that node's public user nkey. All servers of a cluster must include the
    same file: accounts and users are not replicated between servers.
    """
    lines = [f"# {line}" if line else "#" for line in header]
    lines += ["accounts {", f"  {ACCOUNT} {{", "    jetstream: enabled", "    users: ["]
    for node_id, public_key in workers.items():
        lines += _user_block(public_key, node_id, worker_permissions(node_id, prefix), responses=True)
    lines += _user_block(manager_public_key, MANAGER, manager_permissions(prefix), responses=False)
    lines += ["    ]", "  }", "}", ""]
    return "\n".join(lines)


def parse_public_keys(conf_text: str) -> dict[str, str]:
    """Map user label -> public key, read back from a file written by ``render_accounts_conf``."""
    return {label: key for key, label in _PUBKEY_RE.findall(conf_text)}


def write_seed(path: Path, seed: bytes) -> Path:
    """Write a seed file readable only by its owner (what ``NATS_NKEY_SEED`` points at)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(seed + b"\n")
    return path


def write_auth_material(directory: Path, nodes: Sequence[str], *, prefix: str = "rory") -> AuthMaterial:
    """Fresh nkeys for ``nodes`` and the manager: ``<dir>/accounts.conf`` and ``<dir>/<name>.nk`` seeds."""
    directory.mkdir(parents=True, exist_ok=True)
    users = {name: generate_user(name) for name in [*nodes, MANAGER]}
    conf = render_accounts_conf(
        {node: users[node].public_key for node in nodes},
        users[MANAGER].public_key,
        prefix=prefix,
        header=["Generated by scripts/nats_auth.py; the seeds are the *.nk files next to this file."],
    )
    conf_path = directory / "accounts.conf"
    conf_path.write_text(conf)
    seeds = {name: write_seed(directory / f"{name}.nk", user.seed or b"") for name, user in users.items()}
    return AuthMaterial(conf_path=conf_path, seed_paths=seeds, users=users)


EXAMPLE_HEADER = (
    "EXAMPLE ONLY. The public keys below were generated for this example and their seeds were discarded,",
    "so nobody can log in with them. Generate your own with:",
    "    python scripts/nats_auth.py --out /secure/dir rory-worker-0 rory-worker-1",
    "and include the generated accounts.conf instead (see docs/deployment.md, 'Permissions').",
    "",
    "Each worker user may only take its own node's commands and health requests, the shared pool",
    "commands and $SRV discovery, and may only publish its own heartbeats/announcements, its own",
    "results (<p>.results.<node>.*), its own JetStream pulls/acks, dead letters and result records",
    "(<p>.<node>.* and <p>.pool.*); it has no stream-wide message access, so it cannot read, answer",
    "or delete another node's queued commands. Replies go back through allow_responses. The manager",
    "runs the dead-letter mover for the MAX_DELIVERIES advisories.",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("nodes", nargs="*", default=["rory-worker-0", "rory-worker-1"], help="NODE_IDs")
    parser.add_argument("--prefix", default="rory", help="RORY_SUBJECT_PREFIX (default rory)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write accounts.conf and <name>.nk seed files here")
    group.add_argument("--example", type=Path, help="write an example accounts.conf with discarded seeds")
    args = parser.parse_args(argv)
    if args.example:
        users = {name: generate_user(name) for name in [*args.nodes, MANAGER]}
        text = render_accounts_conf(
            {node: users[node].public_key for node in args.nodes},
            users[MANAGER].public_key,
            prefix=args.prefix,
            header=EXAMPLE_HEADER,
        )
        args.example.parent.mkdir(parents=True, exist_ok=True)
        args.example.write_text(text)
        print(f"wrote {args.example} (example only: seeds discarded)")
        return 0
    material = write_auth_material(args.out, args.nodes, prefix=args.prefix)
    print(f"wrote {material.conf_path}")
    for name, path in material.seed_paths.items():
        print(f"  {name}: {path}  (public key {material.users[name].public_key})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
