"""Structured logging: one JSON object per line on stderr, and in LOG_PATH when it is writable.

Fields passed with ``extra={...}`` become keys of the line, so logs can be filtered by ``op``,
``job_id``, ``node_id`` without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from worker.settings import Settings

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_HANDLER_MARK = "_rory_handler"


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "msg": ..., <extra fields>, "exc": ...}``."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.static,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(settings: Settings, *, stream: Any = None) -> Path | None:
    """Configure the ``rory`` loggers; returns the log file used, or None if LOG_PATH is not writable."""
    root = logging.getLogger("rory")
    root.setLevel(settings.log_level.upper())
    root.propagate = False
    nats_logger = logging.getLogger("nats")  # nats-py's own warnings, in the same format
    for logger in (root, nats_logger):
        for handler in list(logger.handlers):
            if getattr(handler, _HANDLER_MARK, False):
                logger.removeHandler(handler)
                handler.close()
    formatter = JsonFormatter({"node_id": settings.node_id})
    console = logging.StreamHandler(stream or sys.stderr)
    console.setFormatter(formatter)
    setattr(console, _HANDLER_MARK, True)
    root.addHandler(console)
    log_file: Path | None = None
    try:
        directory = Path(settings.log_path)
        directory.mkdir(parents=True, exist_ok=True)
        log_file = directory / f"{settings.node_id}.log"
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
    except OSError:
        log_file = None
    else:
        file_handler.setFormatter(formatter)
        setattr(file_handler, _HANDLER_MARK, True)
        root.addHandler(file_handler)
    nats_logger.setLevel(logging.WARNING)
    nats_logger.addHandler(console)
    return log_file


__all__ = ["JsonFormatter", "setup_logging"]
