"""The JSON documents the owner's Liu and FDH-OPE keys are saved as: a format tag, a version, fields.

JSON, never pickle: a key file must not be able to run code when loaded. Python's float repr
round-trips float64 exactly, so a saved key decrypts exactly as the one in memory.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Self

from core.errors import CoreError

__all__ = ["KeyDocument", "check", "dump", "load"]


def dump(document: dict[str, Any]) -> bytes:
    """The document as compact UTF-8 JSON."""
    return json.dumps(document, separators=(",", ":")).encode()


def load(raw: bytes, name: str) -> Any:
    """The parsed JSON of a ``name`` key (not yet checked: see :func:`check`)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CoreError(f"{name} key is not valid JSON: {exc}") from exc


def check(obj: Any, fmt: str, version: int, name: str, article: str = "a") -> dict[str, Any]:
    """``obj`` as a ``name`` key document of format ``fmt`` at ``version`` (a CoreError otherwise:
    another key kind, or a version this code cannot read)."""
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise CoreError(f"not {article} {name} key document")
    if obj.get("version") != version:
        raise CoreError(f"unsupported {name} key version {obj.get('version')!r}")
    return obj


class KeyDocument:
    """The bytes of a key class that has ``to_dict``/``from_dict``: ``NAME`` names it in errors."""

    NAME: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Self:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return dump(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Self:
        return cls.from_dict(load(raw, cls.NAME))
