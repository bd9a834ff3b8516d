"""Coverage-guided fuzzing (atheris/libFuzzer) of the envelope decoder, command validator and params.

Not part of pytest (the property tests in this directory are); run it by hand or in a nightly job::

    pip install atheris
    python tests/fuzz/fuzz_codec.py -runs=200000            # or -max_total_time=300
    python tests/fuzz/fuzz_codec.py --seed-corpus corpus/   # valid commands to start from
    python tests/fuzz/fuzz_codec.py corpus/ -max_total_time=300

The first input byte picks the target: msgpack envelope, JSON envelope, or an operation's params
(JSON text). The contract under test: only ``BadRequest`` (and its subclasses) or pydantic's
``ValidationError`` may come out; anything else is a crash libFuzzer reports with the input.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import atheris

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydantic import ValidationError

from schemas import codec
from schemas.envelopes import parse_command
from schemas.operations import PARAMS, Op
from worker.errors import BadRequest
from worker.runtime.registry import format_params_error

OPS = list(Op)
MAX_BYTES = 64 * 1024


def _envelope(data: bytes, json_mode: bool) -> None:
    with contextlib.suppress(BadRequest):
        parse_command(codec.decode(data, json_mode=json_mode, max_bytes=MAX_BYTES))


def _params(data: bytes) -> None:
    if not data:
        return
    op = OPS[data[0] % len(OPS)]
    try:
        raw = json.loads(data[1:])
    except (ValueError, RecursionError):
        return
    if not isinstance(raw, dict):
        return
    try:
        PARAMS[op].model_validate(raw)
    except ValidationError as error:
        codec.encode({"message": format_params_error(error)})


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target, rest = data[0] % 3, data[1:]
    if target == 0:
        _envelope(rest, json_mode=False)
    elif target == 1:
        _envelope(rest, json_mode=True)
    else:
        _params(rest)


def seed_corpus(directory: Path) -> None:
    """Valid inputs for every target: mutating these reaches deeper than random bytes (the msgpack and
    JSON parsers are C code that libFuzzer cannot see into)."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, op in enumerate(OPS):
        body = {
            "v": 1,
            "id": f"c{index}",
            "op": op.value,
            "ts": 1.7e9,
            "params": {"plaintext_matrix_id": "m"},
        }
        (directory / f"msgpack-{index}").write_bytes(b"\x00" + codec.encode(body))
        (directory / f"json-{index}").write_bytes(b"\x01" + codec.encode(body, json_mode=True))
        params = {
            "plaintext_matrix_id": "m",
            "k": 3,
            "encrypted_matrix_shape": [4, 3],
            "distance": "EUCLIDEAN",
        }
        (directory / f"params-{index}").write_bytes(b"\x02" + bytes([index]) + json.dumps(params).encode())


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seed-corpus":
        seed_corpus(Path(sys.argv[2]))
        return
    atheris.instrument_all()  # our code and pydantic's Python parts (msgpack/json are C)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
