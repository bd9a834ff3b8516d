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

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydantic import ValidationError

from schemas import codec
from schemas.envelopes import parse_command
from schemas.errors import BadRequest
from schemas.operations import PARAMS, Op
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
        params = PARAMS[op].model_validate(raw)
    except ValidationError as error:
        codec.encode({"message": format_params_error(error)})
        return
    # Whatever is accepted must travel back in both encodings (no NaN/inf, no int msgpack refuses).
    dumped = params.model_dump(mode="json")
    codec.encode(dumped, json_mode=True)
    codec.encode(dumped)


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
    for name, data in HOSTILE_SEEDS.items():
        (directory / name).write_bytes(data)


def _hostile_seeds() -> dict[str, bytes]:
    """Inputs that once escaped as OverflowError or ended in a 500, so the fuzzer
    starts next to them: JSON integers no float holds in ``ts``/``deadline_s``, counters past what an
    echo can encode, NaN/inf in float params (msgpack carries them; Python's json.loads does too)."""
    body = {"v": 1, "id": "h", "op": Op.KMEANS.value, "ts": 1.7e9, "params": {"plaintext_matrix_id": "m"}}
    seeds = {
        "json-ts-huge": b"\x01" + json.dumps({**body, "ts": 10**400}).encode(),
        "json-deadline-huge": b"\x01" + json.dumps({**body, "deadline_s": 10**400}).encode(),
        "json-deadline-negative-huge": b"\x01" + json.dumps({**body, "deadline_s": -(10**400)}).encode(),
        "msgpack-ts-nan": b"\x00" + codec.encode({**body, "ts": float("nan")}),
        "msgpack-deadline-inf": b"\x00" + codec.encode({**body, "deadline_s": float("inf")}),
    }
    hostile_params = {
        Op.SKMEANS: {"plaintext_matrix_id": "m", "iterations": 2**64 - 1},
        Op.PQC_KMEANS: {"plaintext_matrix_id": "m", "iterations": 10**400},
        Op.KMEANS: {"plaintext_matrix_id": "m", "tolerance": float("nan")},
        Op.LR_TRAIN: {"weights_id": "w", "bias_id": "b", "learning_rate": float("inf")},
        Op.PPLR_PREDICT: {
            "encrypted_matrix_test_id": "x",
            "encrypted_weights_id": "w",
            "encrypted_bias_id": "b",
            "scale": float("-inf"),
        },
        Op.DBSNNC: {"plaintext_matrix_id": "m", "encrypted_threshold": float("nan")},
        Op.NNC: {"plaintext_matrix_id": "m", "threshold": 10**400},
    }
    for op, params in hostile_params.items():
        # json.dumps writes NaN/Infinity literals, which json.loads in _params reads back as floats.
        seeds[f"params-hostile-{op.value}"] = b"\x02" + bytes([OPS.index(op)]) + json.dumps(params).encode()
    return seeds


HOSTILE_SEEDS = _hostile_seeds()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seed-corpus":
        seed_corpus(Path(sys.argv[2]))
        return
    import atheris  # only here: tests/fuzz/test_codec_fuzz.py runs the seeds without it

    atheris.instrument_all()  # our code and pydantic's Python parts (msgpack/json are C)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
