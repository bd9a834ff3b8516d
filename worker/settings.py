"""Worker configuration from the environment.

Names and defaults follow the original Rory worker so existing env files keep working; the NATS,
storage-backend and capacity settings are new. ``ENV_FILE_PATH`` (default ``/rory/envs/.worker.env``)
is read when it exists; real environment variables win over it.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_ENV_FILE = "/rory/envs/.worker.env"
NODE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
SUBJECT_TOKEN_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "k": 1024, "mb": 1024**2, "m": 1024**2, "gb": 1024**3, "g": 1024**3}


class SettingsError(ValueError):
    """A configuration value is invalid; the message is one line naming the variable."""


class Distance(StrEnum):
    # The original spells it MANHATHAN; both spellings are accepted and normalised to this one.
    MANHATTAN = "MANHATHAN"
    EUCLIDEAN = "EUCLIDEAN"


class JobsMode(StrEnum):
    CORE = "core"
    JETSTREAM = "jetstream"


class StorageBackend(StrEnum):
    AUTO = "auto"
    LOCAL = "local"
    MICTLANX = "mictlanx"
    NATS = "nats"


def parse_size(value: str | int) -> int:
    """Parse ``256kb``-style sizes (binary units, as MictlanX does) into bytes."""
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"not a size like 256kb: {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if size <= 0:
        raise ValueError("must be positive")
    return size


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every variable the worker reads. Field names are the lower-case environment variable names."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)

    # --- node identity (seed) ---
    node_id: str = Field(
        "rory-worker-0",
        pattern=NODE_ID_PATTERN,
        description="Unique worker id; a NATS subject token, ^[A-Za-z0-9_-]{1,64}$.",
    )
    node_port: int = Field(
        9000,
        ge=0,
        le=65535,
        description="Port of the original HTTP service (kept from the original worker).",
    )
    node_index: int = Field(0, ge=0, description="Node index of the original deployment (port offsets).")
    node_ip_addr: str = Field("", description="Host name of this node; empty means the same as NODE_ID.")
    rory_manager_ip_addr: str = Field(
        "localhost",
        description="Manager host of the original deployment (Managers now use NATS).",
    )
    rory_manager_port: int = Field(
        6000,
        ge=0,
        le=65535,
        description="Manager port of the original deployment.",
    )
    server_ip_addr: str = Field("0.0.0.0", description="Interface of the original HTTP service.")

    # --- algorithms (seed) ---
    distance: Distance = Field(
        Distance.MANHATTAN,
        description="Distance metric: MANHATHAN (MANHATTAN accepted) or EUCLIDEAN.",
    )
    min_error: float = Field(0.015, ge=0, description="Convergence tolerance of the iterative algorithms.")
    num_chunks: int = Field(4, ge=1, le=4096, description="Chunks a result matrix is split into when stored.")

    # --- CKKS material (seed); the worker only ever reads public material ---
    ckks_round: bool = Field(False, description="Round CKKS results (true/false, 1/0).")
    ckks_decimals: int = Field(
        2,
        ge=0,
        le=15,
        description="Decimal places kept when CKKS results are rounded.",
    )
    ctx_filename: str = Field("ctx", description="File name of the public CKKS context in KEYS_PATH.")
    pubkey_filename: str = Field("pubkey", description="File name of the public key in KEYS_PATH.")
    secret_key_filename: str = Field(
        "secretkey",
        description="File name of the secret key; the worker never opens it (data owner only).",
    )
    relinkey_filename: str = Field(
        "relinkey",
        description="File name of the relinearisation key in KEYS_PATH.",
    )
    rotatekey_filename: str = Field(
        "rotatekey",
        description="File name of the Galois (rotation) keys in KEYS_PATH.",
    )

    # --- storage (seed + backend choice) ---
    storage_backend: StorageBackend = Field(
        StorageBackend.AUTO,
        description="auto, local, mictlanx or nats; auto = mictlanx only if MICTLANX_URI/ROUTERS is set.",
    )
    storage_path: str = Field("", description="Directory of the local backend; empty means <SINK_PATH>/css.")
    storage_cache_bytes: int = Field(
        512 * 1024**2,
        ge=0,
        description="Read cache for storage objects, validated by version on every read (0 disables).",
    )
    nats_object_bucket: str = Field(
        "",
        pattern=r"^([A-Za-z0-9_-]{1,200})?$",
        description="JetStream object-store bucket of STORAGE_BACKEND=nats; empty means MICTLANX_BUCKET_ID.",
    )
    nats_object_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Replicas of the nats bucket when the worker creates it (3 on a three-server cluster).",
    )
    nats_object_max_bytes: int = Field(
        -1,
        ge=-1,
        description="Size limit of the nats bucket in bytes when the worker creates it; -1 = unlimited.",
    )
    mictlanx_uri: str = Field(
        "",
        description="mictlanx://<router-id>@<host>:<port>?api_version=4&protocol=http",
    )
    mictlanx_routers: CommaList = Field(
        default_factory=lambda: ["mictlanx-router-0:localhost:60666"],
        description="Comma-separated MictlanX routers as id:host:port.",
    )
    mictlanx_protocol: str = Field(
        "http",
        pattern=r"^https?$",
        description="http or https towards the routers.",
    )
    mictlanx_api_version: int = Field(4, ge=1, description="MictlanX router API version.")
    mictlanx_client_id: str = Field(
        "",
        description="Client id sent to MictlanX; empty means <NODE_ID>_mictlanx.",
    )
    mictlanx_bucket_id: str = Field("rory", min_length=1, description="Bucket holding Rory's objects.")
    mictlanx_chunk_size: int = Field(
        256 * 1024,
        description="Chunk size for uploads, e.g. 256kb, 1mb, or bytes.",
    )
    mictlanx_timeout: float = Field(120.0, gt=0, description="Seconds before a storage request times out.")
    mictlanx_max_workers: int = Field(4, ge=1, le=256, description="Concurrent storage requests.")
    mictlanx_max_retries: int = Field(10, ge=0, le=1000, description="Retries of a failed storage request.")
    mictlanx_delay: float = Field(2.0, ge=0, description="Seconds before the first retry.")
    mictlanx_backoff_factor: float = Field(
        0.5,
        ge=0,
        description="Exponential back-off factor between retries.",
    )

    # --- paths (seed) ---
    source_path: str = Field("/rory/source", description="Input directory.")
    sink_path: str = Field("/rory/sink", description="Output directory.")
    log_path: str = Field("/rory/log", description="Log directory.")
    keys_path: str = Field("/rory/keys", description="Directory of the public CKKS material.")
    env_file_path: str = Field(
        DEFAULT_ENV_FILE,
        description="This file's path; read at start when it exists (real environment variables win).",
    )

    # --- NATS ---
    nats_urls: CommaList = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        description="Comma-separated server URLs (nats://, tls://, ws://, wss://).",
    )
    nats_user: str = Field("", description="User name (user/password auth).")
    nats_password: str = Field("", description="Password (user/password auth); prefer NATS_NKEY_SEED.")
    nats_token: str = Field("", description="Token auth.")
    nats_nkey_seed: str = Field(
        "",
        description="Path to a file holding this node's nkey seed (see config/auth/).",
    )
    nats_creds: str = Field("", description="Path to a .creds file (JWT + seed, operator mode).")
    nats_tls_ca: str = Field("", description="CA bundle to verify the servers (tls:// URLs).")
    nats_tls_cert: str = Field("", description="Client certificate for mutual TLS.")
    nats_tls_key: str = Field("", description="Client key for mutual TLS.")
    nats_tls_handshake_first: bool | None = Field(
        None,
        description=(
            "Start TLS before any NATS protocol byte (server needs tls.handshake_first); "
            "empty means on whenever NATS_TLS_CA/CERT/KEY or a tls:// URL is configured."
        ),
    )
    nats_inbox_prefix: str = Field(
        "_INBOX",
        pattern=SUBJECT_TOKEN_PATTERN,
        description="Inbox prefix; with per-node permissions use _INBOX_<NODE_ID>.",
    )
    nats_connect_timeout: float = Field(5.0, gt=0, description="Seconds allowed for the first connection.")
    rory_subject_prefix: str = Field(
        "rory",
        pattern=SUBJECT_TOKEN_PATTERN,
        description="Subject prefix <p> of every Rory subject.",
    )
    heartbeat_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between heartbeats; a Manager drops a node after three missed beats.",
    )
    worker_capacity: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        le=256,
        description="Commands run at once; defaults to the number of CPUs.",
    )
    rory_jobs_mode: JobsMode = Field(
        JobsMode.CORE,
        description="core (request-reply) or jetstream (durable RORY_JOBS work queue).",
    )
    shutdown_grace_period: float = Field(
        30.0,
        ge=0,
        description="Seconds in-flight commands get to finish on SIGTERM.",
    )
    max_message_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest message the worker accepts or sends (bytes).",
    )
    # --- durable intake and limits ---
    jetstream_stream: str = Field(
        "RORY_JOBS", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Work-queue stream of job commands."
    )
    jetstream_dlq_stream: str = Field(
        "RORY_DLQ",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Stream of commands that exhausted their deliveries.",
    )
    jetstream_ensure: bool = Field(
        True,
        description="Create/update the streams and consumers (false: only verify, for restricted users).",
    )
    jetstream_ack_wait: float = Field(
        60.0, gt=0, description="Seconds before an unacknowledged command is redelivered."
    )
    jetstream_max_deliver: int = Field(
        5, ge=1, le=1000, description="Deliveries of one command before it goes to the DLQ."
    )
    jetstream_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Replicas of RORY_JOBS, RORY_DLQ and the results bucket when created (3 on a cluster).",
    )
    jetstream_result_ttl: float = Field(
        24 * 3600.0,
        gt=0,
        description="Seconds a JetStream result record answers redeliveries and re-published commands.",
    )
    storage_fsync: bool = Field(
        False,
        description="fsync each local-store commit (files and directory) so it survives a power loss.",
    )
    max_object_bytes: int = Field(
        4 * 1024**3,
        ge=1024,
        description="Largest object (declared shape x itemsize) the worker will allocate.",
    )
    log_level: str = Field(
        "INFO",
        pattern=r"^(?i:debug|info|warning|error|critical)$",
        description="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    )

    @field_validator("distance", mode="before")
    @classmethod
    def _distance_alias(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().upper() in {"MANHATTAN", "MANHATHAN"}:
            return Distance.MANHATTAN
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("nats_tls_handshake_first", mode="before")
    @classmethod
    def _blank_means_automatic(cls, value: Any) -> Any:
        # An env-file line ``NATS_TLS_HANDSHAKE_FIRST=`` means "not set", as for every other variable.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("mictlanx_chunk_size", mode="before")
    @classmethod
    def _chunk_size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("nats_urls", "mictlanx_routers", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("nats_urls")
    @classmethod
    def _nats_urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one server URL is required")
        for url in value:
            if not re.match(r"^(nats|tls|ws|wss)://[^\s]+$", url):
                raise ValueError(f"not a NATS URL: {url!r}")
        return value

    @field_validator("mictlanx_routers")
    @classmethod
    def _routers(cls, value: list[str]) -> list[str]:
        for router in value:
            if not re.fullmatch(r"[^:\s]+:[^:\s]+:\d{1,5}", router):
                raise ValueError(f"expected id:host:port, got {router!r}")
        return value

    @field_validator("mictlanx_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if value and not re.fullmatch(r"mictlanx://[^@\s]+@[^:\s]+:\d{1,5}(\?\S*)?", value):
            raise ValueError("expected mictlanx://<router-id>@<host>:<port>?api_version=4&protocol=http")
        return value

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        if not self.node_ip_addr:
            self.node_ip_addr = self.node_id
        if not self.mictlanx_client_id:
            self.mictlanx_client_id = f"{self.node_id}_mictlanx"
        if not self.storage_path:
            self.storage_path = str(Path(self.sink_path) / "css")
        return self

    # --- derived values ---
    @property
    def resolved_storage_backend(self) -> StorageBackend:
        """``auto`` picks MictlanX only when its URI or routers were configured explicitly."""
        if self.storage_backend is not StorageBackend.AUTO:
            return self.storage_backend
        explicit = {"mictlanx_uri", "mictlanx_routers"} & self.model_fields_set
        return StorageBackend.MICTLANX if explicit else StorageBackend.LOCAL

    @property
    def keys_dir(self) -> Path:
        return Path(self.keys_path)


def _env_var(field_name: str) -> str:
    return field_name.upper()


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: ``NODE_ID: String should match pattern ...``."""
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "settings"
        lines.append(f"{_env_var(location.split('.')[0])}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (and ``ENV_FILE_PATH`` when present); raise SettingsError on bad values."""
    env_file = overrides.pop("env_file_path", None) or os.environ.get("ENV_FILE_PATH", DEFAULT_ENV_FILE)
    env_file_arg = env_file if Path(env_file).is_file() else None
    try:
        return Settings(_env_file=env_file_arg, env_file_path=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as error:
        raise SettingsError(format_validation_error(error)) from None
