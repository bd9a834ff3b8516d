"""Wire models shared by the worker, Managers and clients.

``schemas.envelopes`` (Command, Reply, Health, Heartbeat, Announcement), ``schemas.codec`` (bounded
msgpack/JSON), ``schemas.subjects`` (subject builders and parser). Operation parameter and result
models live in ``schemas.operations``; storage key names in ``schemas.keys``.
"""

from schemas import codec, envelopes, subjects
from schemas.envelopes import *  # noqa: F403 - the envelope models are the package's public face

__all__ = [*envelopes.__all__, "codec", "subjects"]
