"""Write ``config/worker.env`` from the Settings model, so the file can't drift from what the worker reads.

    python scripts/gen_worker_env.py > config/worker.env     # regenerate
    python scripts/gen_worker_env.py --check config/worker.env  # exit 1 if the file is out of date

Every field of ``worker.settings.Settings`` gets a one-line comment and its default. A few defaults are
written commented out (``#NAME=default``) on purpose, because *setting* them changes behaviour even to the
default value: MICTLANX_URI / MICTLANX_ROUTERS switch ``STORAGE_BACKEND=auto`` to MictlanX, ENV_FILE_PATH
names the file itself, and WORKER_CAPACITY defaults to the machine's CPU count.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/gen_worker_env.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.settings import Settings

# Written as "#NAME=value": explicitly setting these changes behaviour (see the module docstring).
UNSET_ON_PURPOSE = {"mictlanx_uri", "mictlanx_routers", "env_file_path", "worker_capacity"}
# Spelled as the original worker's docs spell them (render() checks each still parses to the default);
# a machine-dependent default is shown as a description instead of this machine's value.
DISPLAY = {"mictlanx_chunk_size": "256kb", "worker_capacity": "<number of CPUs>"}
MACHINE_DEPENDENT = {"worker_capacity"}

SECTIONS: dict[str, dict[str, str]] = {
    "Node identity (names and defaults of the original worker)": {
        "node_id": "Unique worker id; a NATS subject token, ^[A-Za-z0-9_-]{1,64}$.",
        "node_port": "Port of the original HTTP service (kept from the original worker).",
        "node_index": "Node index of the original deployment (port offsets).",
        "node_ip_addr": "Host name of this node; empty means the same as NODE_ID.",
        "rory_manager_ip_addr": "Manager host of the original deployment (Managers now use NATS).",
        "rory_manager_port": "Manager port of the original deployment.",
        "server_ip_addr": "Interface of the original HTTP service.",
    },
    "Algorithms": {
        "distance": "Distance metric: MANHATHAN (MANHATTAN accepted) or EUCLIDEAN.",
        "min_error": "Convergence tolerance of the iterative algorithms.",
        "num_chunks": "Chunks a result matrix is split into when stored.",
    },
    "CKKS material (the worker only ever reads public material from KEYS_PATH)": {
        "ckks_round": "Round CKKS results (true/false, 1/0).",
        "ckks_decimals": "Decimal places kept when CKKS results are rounded.",
        "ctx_filename": "File name of the public CKKS context in KEYS_PATH.",
        "pubkey_filename": "File name of the public key in KEYS_PATH.",
        "secret_key_filename": "File name of the secret key; the worker never opens it (data owner only).",
        "relinkey_filename": "File name of the relinearisation key in KEYS_PATH.",
        "rotatekey_filename": "File name of the Galois (rotation) keys in KEYS_PATH.",
    },
    "Storage (CSS)": {
        "storage_backend": "auto, local or mictlanx; auto = mictlanx only if MICTLANX_URI/ROUTERS is set.",
        "storage_path": "Directory of the local backend; empty means <SINK_PATH>/css.",
        "mictlanx_uri": "mictlanx://<router-id>@<host>:<port>?api_version=4&protocol=http",
        "mictlanx_routers": "Comma-separated MictlanX routers as id:host:port.",
        "mictlanx_protocol": "http or https towards the routers.",
        "mictlanx_api_version": "MictlanX router API version.",
        "mictlanx_client_id": "Client id sent to MictlanX; empty means <NODE_ID>_mictlanx.",
        "mictlanx_bucket_id": "Bucket holding Rory's objects.",
        "mictlanx_chunk_size": "Chunk size for uploads, e.g. 256kb, 1mb, or bytes.",
        "mictlanx_timeout": "Seconds before a storage request times out.",
        "mictlanx_max_workers": "Concurrent storage requests.",
        "mictlanx_max_retries": "Retries of a failed storage request.",
        "mictlanx_delay": "Seconds before the first retry.",
        "mictlanx_backoff_factor": "Exponential back-off factor between retries.",
    },
    "Paths": {
        "source_path": "Input directory.",
        "sink_path": "Output directory.",
        "log_path": "Log directory.",
        "keys_path": "Directory of the public CKKS material.",
        "env_file_path": "This file's path; read at start when it exists (real environment variables win).",
    },
    "NATS": {
        "nats_urls": "Comma-separated server URLs (nats://, tls://, ws://, wss://).",
        "nats_user": "User name (user/password auth).",
        "nats_password": "Password (user/password auth); prefer NATS_NKEY_SEED.",
        "nats_token": "Token auth.",
        "nats_nkey_seed": "Path to a file holding this node's nkey seed (see config/auth/).",
        "nats_creds": "Path to a .creds file (JWT + seed, operator mode).",
        "nats_tls_ca": "CA bundle to verify the servers (tls:// URLs).",
        "nats_tls_cert": "Client certificate for mutual TLS.",
        "nats_tls_key": "Client key for mutual TLS.",
        "nats_inbox_prefix": "Inbox prefix; with per-node permissions use _INBOX_<NODE_ID>.",
        "nats_connect_timeout": "Seconds allowed for the first connection.",
        "rory_subject_prefix": "Subject prefix <p> of every Rory subject.",
        "heartbeat_interval": "Seconds between heartbeats; a Manager drops a node after three missed beats.",
        "worker_capacity": "Commands run at once; defaults to the number of CPUs.",
        "rory_jobs_mode": "core (request-reply) or jetstream (durable RORY_JOBS work queue).",
        "shutdown_grace_period": "Seconds in-flight commands get to finish on SIGTERM.",
        "max_message_bytes": "Largest message the worker accepts or sends (bytes).",
        "log_level": "DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    },
}

HEADER = """\
# Rory worker configuration: every variable the worker reads (worker/settings.py), with its default.
# Generated by `python scripts/gen_worker_env.py > config/worker.env`; edit the generator, not this file.
# The worker reads ENV_FILE_PATH (default /rory/envs/.worker.env) at start; real environment variables
# win over the file. compose.yaml passes this file to every worker with env_file.
# Lines "#NAME=value" show defaults left unset on purpose: setting them changes behaviour
# (MICTLANX_URI/MICTLANX_ROUTERS select MictlanX under STORAGE_BACKEND=auto; WORKER_CAPACITY = CPUs).
"""


def env_value(value: Any) -> str:
    """How a default is spelled in an env file (the inverse of what pydantic-settings parses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def field_default(name: str) -> Any:
    info = Settings.model_fields[name]
    return info.get_default(call_default_factory=True)


def render() -> str:
    """The whole file; raises if a Settings field has no comment or a comment names no field."""
    fields = list(Settings.model_fields)
    documented = [name for section in SECTIONS.values() for name in section]
    missing = sorted(set(fields) - set(documented))
    stale = sorted(set(documented) - set(fields))
    if missing or stale:
        raise SystemExit(f"gen_worker_env: update SECTIONS (undocumented: {missing}, unknown: {stale})")
    for name, spelled in DISPLAY.items():
        parsed = None if name in MACHINE_DEPENDENT else Settings(**{name: spelled}).model_dump()[name]
        if parsed is not None and parsed != field_default(name):
            raise SystemExit(f"gen_worker_env: {name.upper()}={spelled} no longer equals the model's default")
    out = [HEADER]
    for title, comments in SECTIONS.items():
        out.append(f"\n# --- {title} ---\n")
        for name, comment in comments.items():
            out.append(f"# {comment}\n")
            value = DISPLAY.get(name) or env_value(field_default(name))
            out.append(f"{'#' if name in UNSET_ON_PURPOSE else ''}{name.upper()}={value}\n")
    return "".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", type=Path, metavar="FILE", help="compare FILE with the generated text")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if args.check.read_text() != text:
            fix = f"python scripts/gen_worker_env.py > {args.check}"
            print(f"{args.check} is out of date: {fix}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
