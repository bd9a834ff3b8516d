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
    node_id: str = Field("rory-worker-0", pattern=NODE_ID_PATTERN)
    node_port: int = Field(9000, ge=0, le=65535)
    node_index: int = Field(0, ge=0)
    node_ip_addr: str = ""  # empty means: same as NODE_ID (the original default)
    rory_manager_ip_addr: str = "localhost"
    rory_manager_port: int = Field(6000, ge=0, le=65535)
    server_ip_addr: str = "0.0.0.0"

    # --- algorithms (seed) ---
    distance: Distance = Distance.MANHATTAN
    min_error: float = Field(0.015, ge=0)
    num_chunks: int = Field(4, ge=1, le=4096)

    # --- CKKS material (seed); the worker only ever reads public material ---
    ckks_round: bool = False
    ckks_decimals: int = Field(2, ge=0, le=15)
    ctx_filename: str = "ctx"
    pubkey_filename: str = "pubkey"
    secret_key_filename: str = "secretkey"
    relinkey_filename: str = "relinkey"
    rotatekey_filename: str = "rotatekey"

    # --- storage (seed + backend choice) ---
    storage_backend: StorageBackend = StorageBackend.AUTO
    storage_path: str = ""  # local backend directory; empty means <SINK_PATH>/css
    mictlanx_uri: str = ""
    mictlanx_routers: CommaList = Field(default_factory=lambda: ["mictlanx-router-0:localhost:60666"])
    mictlanx_protocol: str = Field("http", pattern=r"^https?$")
    mictlanx_api_version: int = Field(4, ge=1)
    mictlanx_client_id: str = ""  # empty means <NODE_ID>_mictlanx
    mictlanx_bucket_id: str = Field("rory", min_length=1)
    mictlanx_chunk_size: int = 256 * 1024
    mictlanx_timeout: float = Field(120.0, gt=0)
    mictlanx_max_workers: int = Field(4, ge=1, le=256)
    mictlanx_max_retries: int = Field(10, ge=0, le=1000)
    mictlanx_delay: float = Field(2.0, ge=0)
    mictlanx_backoff_factor: float = Field(0.5, ge=0)

    # --- paths (seed) ---
    source_path: str = "/rory/source"
    sink_path: str = "/rory/sink"
    log_path: str = "/rory/log"
    keys_path: str = "/rory/keys"
    env_file_path: str = DEFAULT_ENV_FILE

    # --- NATS ---
    nats_urls: CommaList = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    nats_user: str = ""
    nats_password: str = ""
    nats_token: str = ""
    nats_nkey_seed: str = ""  # path to a file holding an nkey seed
    nats_creds: str = ""  # path to a .creds file (JWT + seed)
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    nats_inbox_prefix: str = Field("_INBOX", pattern=SUBJECT_TOKEN_PATTERN)
    nats_connect_timeout: float = Field(5.0, gt=0)
    rory_subject_prefix: str = Field("rory", pattern=SUBJECT_TOKEN_PATTERN)
    heartbeat_interval: float = Field(5.0, gt=0)
    worker_capacity: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1, le=256)
    rory_jobs_mode: JobsMode = JobsMode.CORE
    shutdown_grace_period: float = Field(30.0, ge=0)
    max_message_bytes: int = Field(1024 * 1024, ge=1024)
    log_level: str = Field("INFO", pattern=r"^(?i:debug|info|warning|error|critical)$")

    @field_validator("distance", mode="before")
    @classmethod
    def _distance_alias(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().upper() in {"MANHATTAN", "MANHATHAN"}:
            return Distance.MANHATTAN
        return value.strip().upper() if isinstance(value, str) else value

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
