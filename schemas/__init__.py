"""Wire models shared by the worker, Managers and clients.

``schemas.envelopes`` (Command, Reply, Health, Heartbeat, Announcement), ``schemas.codec`` (bounded
msgpack/JSON), ``schemas.subjects`` (subject builders and parser), ``schemas.errors`` (error codes,
types and the exceptions carrying them). Operation parameter and result models, and one
``OperationSpec`` per operation (``OPERATIONS``), live in ``schemas.operations``; storage key names in
``schemas.keys``.

The package stands alone: it imports pydantic, msgpack and the standard library only, never the
worker, the core, nats, TenSEAL or numpy (tests/schemas/test_standalone.py), so a Manager in Python
can install it by itself.
"""

from schemas import codec, envelopes, errors, subjects
from schemas.envelopes import *  # noqa: F403 - the envelope models are the package's public face

__all__ = [*envelopes.__all__, "codec", "errors", "subjects"]
