"""Reading a MictlanX router's answers: bounded bodies, its error conventions, its metadata records.

Every body is read with a bound: JSON answers up to :data:`MAX_ANSWER_BYTES` (listings
:data:`MAX_LISTING_BYTES`), error bodies only their first :data:`MAX_ERROR_BYTES`; a larger answer is
``StorageUnavailable``, never an allocation of whatever size the router chooses. Router quirks (a
missing key's metadata answered as a **500** whose ``detail`` reads ``"404: ..."``) are mapped to the
typed errors here; the wire sequence and the retries are the store's (``mictlanx.py``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp

from worker.errors import BadRequest, CorruptObject, NotFound, StorageUnavailable
from worker.storage.codec import ChunkMeta, normalise_checksum

API = "/api/v4"
_DETAIL_CODE = re.compile(r"\s*(\d{3})\s*:")
#: The most bytes read of a JSON answer (metadata, put and delete answers, peer stats).
MAX_ANSWER_BYTES = 1024 * 1024
#: ... of a bucket listing (one record per chunk and replica).
MAX_LISTING_BYTES = 64 * 1024 * 1024
#: Only this much of an error body is read (for the message); the rest is dropped with the connection.
MAX_ERROR_BYTES = 64 * 1024
_READ_PIECE = 64 * 1024


class Transient(Exception):
    """Worth another attempt (possibly on another router)."""


class KeyExists(Transient):
    """put-metadata said 404/666: the key is already there (delete it, then retry)."""


def detail_text(detail: Any) -> str:
    return detail if isinstance(detail, str) else str(detail)[:300]


async def read_body(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body if it has at most ``limit`` bytes, else its first ``limit`` bytes (the rest is left
    unread and the connection dropped); and whether that was all of it."""
    body = bytearray()
    async for piece in response.content.iter_chunked(_READ_PIECE):
        body += piece
        if len(body) > limit:
            return bytes(body[:limit]), False
    return bytes(body), True


async def error_detail(response: aiohttp.ClientResponse) -> Any:
    """The ``detail`` of an error answer, from its first MAX_ERROR_BYTES only."""
    try:
        raw, complete = await read_body(response, MAX_ERROR_BYTES)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return ""
    if not complete:
        return f"(an error body over {MAX_ERROR_BYTES} bytes, not read; it starts {raw[:80]!r})"
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return raw[:300].decode("utf-8", "replace")
    return body.get("detail", body) if isinstance(body, dict) else body


def embedded_status(detail: Any) -> int | None:
    """The status the router wrapped into a 500: ``"404: No available peers"`` -> 404."""
    if isinstance(detail, str):
        match = _DETAIL_CODE.match(detail)
        return int(match.group(1)) if match else None
    if isinstance(detail, dict) and isinstance(detail.get("code"), int):
        return int(detail["code"])
    return None


async def check_answer(
    response: aiohttp.ClientResponse, what: str, *, missing_is_transient: bool = False
) -> None:
    """Raise the right error for a non-2xx answer."""
    status = response.status
    if status < 400:
        return
    detail = await error_detail(response)
    text = f"{what}: HTTP {status} {detail_text(detail)}"
    missing = status == 404 or (status >= 500 and embedded_status(detail) == 404)
    if missing:
        if missing_is_transient:
            raise Transient(text)
        raise NotFound(text)
    if status >= 500 or status in (408, 425, 429, 499):
        raise Transient(text)
    raise BadRequest(f"MictlanX rejected the request: {text}")


async def json_body(response: aiohttp.ClientResponse, what: str, limit: int | None = None) -> dict[str, Any]:
    """A JSON object answer of at most ``limit`` bytes (MAX_ANSWER_BYTES by default); a larger one is
    ``StorageUnavailable`` without reading the rest."""
    limit = MAX_ANSWER_BYTES if limit is None else limit
    raw, complete = await read_body(response, limit)
    if not complete:
        raise StorageUnavailable(f"{what}: the router's answer is larger than {limit} bytes; refused")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise Transient(f"{what}: unreadable JSON answer ({type(error).__name__})") from None
    if not isinstance(body, dict):
        raise Transient(f"{what}: expected a JSON object")
    return body


def metadata_record(record: Any, what: str) -> ChunkMeta:
    if not isinstance(record, dict):
        raise CorruptObject(f"{what}: metadata record is not an object")
    key, size, tags = record.get("key"), record.get("size"), record.get("tags", {})
    if not isinstance(key, str) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise CorruptObject(f"{what}: metadata without a key or a valid size")
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise CorruptObject(f"{what}: tags must map str to str")
    return ChunkMeta(key=key, size=size, checksum=normalise_checksum(record.get("checksum")), tags=tags)


__all__ = [
    "API",
    "MAX_ANSWER_BYTES",
    "MAX_ERROR_BYTES",
    "MAX_LISTING_BYTES",
    "KeyExists",
    "Transient",
    "check_answer",
    "detail_text",
    "embedded_status",
    "error_detail",
    "json_body",
    "metadata_record",
    "read_body",
]
