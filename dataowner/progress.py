"""Progress of long jobs: an event type the client emits and a one-line display on stderr.

Secure k-means over CKKS can take minutes; the owner wants to see the round, the decrypted shift
and the elapsed time. The display rewrites one line with ``\\r`` only when the stream is a terminal,
so logs and pipes (CI, ``2> file``) never fill with control characters; in that case it prints
nothing unless ``force`` is set, and then one plain line per event.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["ProgressCallback", "ProgressDisplay", "ProgressEvent", "format_event"]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a job, as reported by :class:`dataowner.client.DataOwnerClient`.

    ``phase`` is a short word (``upload``, ``step1``, ``decrypt``, ``step2``, ``retry``, ``done``...);
    ``shift`` is the decrypted max |S| of the round when the protocol has one.
    """

    op: str
    job_id: str
    phase: str
    iteration: int = 0
    max_iterations: int = 0
    shift: float | None = None
    elapsed: float = 0.0
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


def format_event(event: ProgressEvent) -> str:
    """``clustering.skmeans  round 3/10  step2  max|S|=1.2e-03  4.1s``."""
    parts = [event.op]
    if event.max_iterations:
        parts.append(f"round {event.iteration}/{event.max_iterations}")
    elif event.iteration:
        parts.append(f"round {event.iteration}")
    parts.append(event.phase)
    if event.shift is not None:
        parts.append(f"max|S|={event.shift:.3g}")
    parts.append(f"{event.elapsed:.1f}s")
    if event.message:
        parts.append(event.message)
    return "  ".join(parts)


class ProgressDisplay:
    """A callable progress sink: pass it as ``progress=`` to the client's drivers.

    ``enabled=None`` means "only when ``stream`` is a TTY". ``close()`` ends the line.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
        force: bool = False,
        min_interval: float = 0.1,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        isatty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._tty = isatty
        self._enabled = (isatty or force) if enabled is None else enabled
        self._min_interval = min_interval
        self._last = 0.0
        self._width = 0
        self._open = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __call__(self, event: ProgressEvent) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        final = event.phase in {"done", "failed"}
        # A retry is always shown: it explains a pause the owner would otherwise wonder about.
        if not final and event.phase != "retry" and now - self._last < self._min_interval:
            return
        self._last = now
        line = format_event(event)
        if self._tty:
            pad = max(0, self._width - len(line))
            self._stream.write("\r" + line + " " * pad)
            self._width = len(line)
            self._open = True
            if final:
                self.close()
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Finish the current line (TTY only); safe to call more than once."""
        if self._open:
            self._stream.write("\n")
            self._stream.flush()
            self._open = False
            self._width = 0

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
