"""Typed errors of the data-owner client (re-exported by :mod:`dataowner.client`)."""

from __future__ import annotations

__all__ = ["BadResult", "NoWorkerError", "WorkerError"]


class WorkerError(RuntimeError):
    """The worker answered with an error Reply (``code``/``type``/``retryable`` as on the wire)."""

    def __init__(self, op: str, code: int, type_: str, message: str, retryable: bool, node: str = ""):
        super().__init__(f"{op}: {code} {type_}: {message}" + (f" (node {node})" if node else ""))
        self.op = op
        self.code = code
        self.type = type_
        self.message = message
        self.retryable = retryable
        self.node = node


class BadResult(WorkerError):
    """A successful Reply whose result does not say what the protocol needs (a worker bug)."""

    def __init__(self, op: str, message: str, node: str = "") -> None:
        super().__init__(op, 500, "BAD_RESULT", message, False, node)


class NoWorkerError(RuntimeError):
    """Nobody is subscribed to the command subject (no worker running, wrong prefix or node id)."""
