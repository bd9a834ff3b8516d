"""Awaiting work that must not be abandoned half-way.

Cancelling an asyncio task does not stop a thread it waits for. Where that thread still touches files
the caller is about to clean up (a local-store write about to commit, a compute result being mapped),
the caller waits for it to end first, and only then lets the cancellation through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def await_to_end(awaitable: Awaitable[T]) -> T:
    """The result of ``awaitable``, awaited to its end even when the caller is cancelled meanwhile
    (once or repeatedly); such a cancellation is raised afterwards and the result dropped."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])  # waits only: neither cancels the work nor raises its error
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:  # before the work's own outcome: a deadline must still read as one
        raise asyncio.CancelledError
    return future.result()


__all__ = ["await_to_end"]
