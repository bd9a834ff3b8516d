"""Bucket and ball names that survive MictlanX unchanged.

The reference client writes chunk keys from the raw name but reads them from the *sanitised* name,
and the router sanitises bucket ids, so a name that sanitisation would rewrite is silently stored
under (or looked up as) another name. We refuse such names up front, in both backends, so the local
backend never accepts what MictlanX would mangle (and file names stay safe: ``[A-Za-z0-9_-]`` only).
"""

from __future__ import annotations

import re

from worker.errors import InvalidName

_DROP = re.compile(r"[^A-Za-z0-9_-]")
_RUNS = re.compile(r"[-_]{2,}")
_VALID = re.compile(r"[A-Za-z0-9]+(?:[A-Za-z0-9]|[-_](?=[A-Za-z0-9]))*")

#: Longest ball id: keeps ``<ball>.<version>`` and ``<ball>_<i>`` below the usual 255-byte NAME_MAX.
MAX_NAME_LENGTH = 200
#: Bucket ids that collide with fixed router routes (``/buckets/data/{task_id}/chunked``).
RESERVED_BUCKETS = frozenset({"data"})


def sanitize(name: str) -> str:
    """MictlanX's ``Utils.sanitize_str`` rules (docs/original-rory.md), re-implemented.

    Keep ``[A-Za-z0-9_-]``; collapse runs of 2+ ``-``/``_`` into ``-``; strip one leading and one
    trailing ``-``; anything that is then not ``alnum ([-_]? alnum)*`` becomes ``""``.
    """
    text = _RUNS.sub("-", _DROP.sub("", name))
    if text.startswith("-"):
        text = text[1:]
    if text.endswith("-"):
        text = text[:-1]
    return text if _VALID.fullmatch(text) else ""


def _check(what: str, name: object) -> str:
    if not isinstance(name, str):
        raise InvalidName(f"{what} must be a string, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"{what} must have 1..{MAX_NAME_LENGTH} characters, got {len(name)}")
    cleaned = sanitize(name)
    if cleaned != name:
        shown = repr(cleaned) if cleaned else "an empty name"
        raise InvalidName(
            f"{what} {name!r} would be rewritten by MictlanX to {shown}; "
            "use letters, digits and single '-' or '_' between them"
        )
    return name


def check_ball_id(ball_id: object) -> str:
    """Return ``ball_id`` unchanged or raise ``InvalidName``."""
    return _check("ball id", ball_id)


def check_bucket_id(bucket_id: object) -> str:
    """Return ``bucket_id`` unchanged or raise ``InvalidName``."""
    name = _check("bucket id", bucket_id)
    if name in RESERVED_BUCKETS:
        raise InvalidName(f"bucket id {name!r} collides with a router route")
    return name


def chunk_key(ball_id: str, index: int) -> str:
    """Storage key of chunk ``index``: ``<ball>_<index>`` (Rory's convention)."""
    return f"{ball_id}_{index}"
