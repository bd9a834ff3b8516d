"""Generate ``docs/protocol.md`` from the models, so the document and the code cannot drift.

    python -m schemas.docgen            # rewrite docs/protocol.md
    python -m schemas.docgen --check    # exit 1 if docs/protocol.md is out of date (CI, tests)

Subjects come from the builders in :mod:`schemas.subjects`, fields from the pydantic models in
:mod:`schemas.envelopes`, error codes from :mod:`schemas.errors`, limits from :mod:`schemas.codec`,
operations from :data:`schemas.operations.OPERATIONS`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas import codec, envelopes, errors, subjects
from schemas.operations import GLOSSARY, OPERATIONS, Compat

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# Placeholder tokens that satisfy the builders' validation, replaced by <p>, <node>, <op>, <job_id>.
_P, _N, _O, _J, _I = "PFXTOKEN", "NODETOKEN", "OPTOKEN", "JOBTOKEN", "IDTOKEN"


def _shown(subject: str) -> str:
    for token, name in ((_P, "<p>"), (_N, "<node>"), (_O, "<op>"), (_J, "<job_id>"), (_I, "<instance id>")):
        subject = subject.replace(token, name)
    return f"`{subject}`"


def _subject_rows() -> list[tuple[str, str, str, str]]:
    return [
        (
            _shown(subjects.node_cmd(_P, _N, _O)),
            f"request-reply, queue group {_shown(subjects.node_queue(_P, _N))}",
            "Manager / client",
            "Command → Reply",
        ),
        (
            _shown(subjects.pool_cmd(_P, _O)),
            f"request-reply, queue group {_shown(subjects.pool_queue(_P))}",
            "Manager / client",
            "Command → Reply",
        ),
        (
            _shown(subjects.health(_P, _N)),
            "request-reply (no queue group: every instance answers)",
            "anyone",
            "Health (JSON; msgpack on request)",
        ),
        (
            _shown(subjects.heartbeat(_P, _N)),
            "publish every HEARTBEAT_INTERVAL seconds",
            "worker",
            "Heartbeat",
        ),
        (
            _shown(subjects.started(_P, _N)),
            "publish once, after the subscriptions are flushed",
            "worker",
            "Announcement",
        ),
        (_shown(subjects.stopped(_P, _N)), "publish once, at graceful stop", "worker", "Announcement"),
        (
            _shown(subjects.results(_P, _N, _J)),
            "publish when a command finishes (also after errors)",
            "worker",
            "Reply (msgpack)",
        ),
        (
            ", ".join(_shown(s) for s in subjects.srv_subjects(subjects.SERVICE_NAME, _I)[:3])
            + " (same for INFO, STATS)",
            "request-reply, plain subscriptions (ADR-32)",
            "worker",
            "ADR-32 JSON",
        ),
        (
            f"{_shown(subjects.jobs_node(_P, _N, _O))}, {_shown(subjects.jobs_pool(_P, _O))}",
            f"JetStream stream `{subjects.JOBS_STREAM}` (RORY_JOBS_MODE=jetstream), consumers "
            f"{_shown(subjects.jobs_node_consumer(_N))} and `{subjects.JOBS_POOL_CONSUMER}`",
            "Manager",
            "Command; Reply only on results",
        ),
    ]


def _type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "anyOf" in schema:
        return " \\| ".join(_type(s, defs) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{_type(schema.get('items', {}), defs)}]"
    if kind == "object":
        return "map"
    return {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null"}.get(
        kind, kind
    )


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("pattern", "pattern"),
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
    ):
        for candidate in [schema, *schema.get("anyOf", [])]:
            if key in candidate:
                value = candidate[key]
                # A "|" inside a table cell ends the cell, code span or not: GFM wants it escaped.
                shown = f"`{value}`".replace("|", "\\|")
                parts.append(f"{label} {shown}" if key == "pattern" else f"{label} {value}")
                break
    if "default" in schema and schema["default"] not in (None, {}):
        parts.append(f"default `{json.dumps(schema['default'])}`")
    return "; ".join(parts)


def _model_table(model: type[BaseModel]) -> str:
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    lines = ["| field | type | required | constraints | meaning |", "|---|---|---|---|---|"]
    for name, prop in schema["properties"].items():
        own = prop.get("description") or model.model_fields[name].description
        description = own or GLOSSARY.get(name, "")
        lines.append(
            f"| `{name}` | {_type(prop, defs)} | {'yes' if name in required else 'no'} | "
            f"{_constraints(prop)} | {description} |"
        )
    return "\n".join(lines)


def _errors_table() -> str:
    rows = ["| code | type | retryable | when |", "|---|---|---|---|"]
    for kind in errors.ERRORS:
        rows.append(f"| {kind.code} | `{kind.type}` | {str(kind.retryable).lower()} | {kind.meaning} |")
    return "\n".join(rows)


MODELS: list[tuple[type[BaseModel], str]] = [
    (envelopes.Command, "Command"),
    (envelopes.Reply, "Reply"),
    (envelopes.ErrorInfo, "Reply.error"),
    (envelopes.Timings, "Reply.timings"),
    (envelopes.Health, "Health"),
    (envelopes.StorageHealth, "Health.storage"),
    (envelopes.NatsHealth, "Health.nats"),
    (envelopes.Heartbeat, "Heartbeat"),
    (envelopes.Load, "Heartbeat.load"),
    (envelopes.Announcement, "Announcement"),
]


_HEADER = """\
<!-- Generated by `python -m schemas.docgen` from schemas/. Do not edit by hand;
     tests/schemas/test_docgen.py fails when this file and the models disagree. -->

# Rory worker protocol (v1)

The wire contract between a Rory worker and its Managers, clients and operators. Everything
below is produced from the models in `schemas/`; a Manager in another language can implement it
from this page. Changing a name or shape is a breaking change: bump `v` and keep accepting v1.

## 1. Subjects

`<p>` is RORY_SUBJECT_PREFIX (default `rory`), `<node>` is NODE_ID (`^[A-Za-z0-9_-]{{1,64}}$`),
`<op>` an operation name (dot-separated tokens), `<job_id>` a Command's `job_id`.

| subject | pattern | who publishes | payload |
|---|---|---|---|
{subject_rows}

The ADR-32 service name is `{service}`; `metadata.node_id` names the node.

## 2. Encoding

* Commands, Replies, Heartbeats and Announcements are msgpack maps
  (`{ct}: {msgpack}`).
* A request with the header `{ct}: {json}` is decoded as JSON and answered in JSON
  (the copy on `<p>.results.<node>.<job_id>` stays msgpack).
* Health answers JSON unless the request carries `{accept}: {msgpack}` or
  `{ct}: {msgpack}`. `$SRV.*` is always JSON.
* Decoding is bounded: at most MAX_MESSAGE_BYTES (default {max_bytes} bytes), nesting depth
  {max_depth}, string/bin/array/map lengths bounded by the payload size, no msgpack extension types,
  map keys must be strings, no JSON NaN/Infinity, nothing after the top-level map.
  Nothing is unpickled or evaluated.
* Bulk data never travels on the bus: parameters name storage keys.
* Unknown fields are ignored (a newer minor revision may add fields).

## 3. Envelopes
"""

_RULES = """\
Rules the tables cannot show:

* `Command.job_id` defaults to `id`. `deadline_s` counts from when the worker received the command.
* `Command.op` must equal the `<op>` of the subject it was sent on (else 400).
* A Reply to a command that could not be read has `in_reply_to` and/or `job_id` empty; it is then
  not published on `<p>.results.<node>.<job_id>`.
* `Reply.ok` true ⇒ `result` present and no `error`; false ⇒ `error` present and no `result`.
* An error Reply also carries the ADR-32 headers `Nats-Service-Error` (the message, one line) and
  `Nats-Service-Error-Code` (the code).
* Heartbeat `seq` starts at 1 per instance and grows by 1 per interval; a beat skipped while
  disconnected leaves a gap. A Manager declares a node gone after three missed beats.

## 4. Errors

Every malformed input gets an error Reply (never a crash), counted in `$SRV.STATS`.

{errors}

## 5. Service discovery (ADR-32)

`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`, each also with `.rory-worker` and
`.rory-worker.<instance id>`, answer JSON valid against the `nats micro` schemas (copies in
`schemas/nats-micro-v1/`).

* One endpoint per operation: name = the op with `.` replaced by `_` (endpoint names cannot hold
  dots), subject `<p>.worker.<node>.cmd.<op>`, queue group `<p>.worker.<node>`; metadata `op`,
  `pool_subject`, `pool_queue_group`. Commands arriving on the pool subject count on the same
  endpoint.
* Endpoint `health` (the health subject) and endpoint `unrouted` (command subjects naming no
  registered operation).
* STATS `data` of an operation: `inflight` and `latency_ms` (`count`, `p50`, `p90`, `p99`, `max`
  over the last 1024 commands). `data` of `health` adds `status`, `capacity`, `pool_busy`,
  `pool_restarts`, `pool_kills`.

## 6. JSON Schemas
"""


_OPERATIONS_INTRO = """\
## 7. Operations

`Command.params` and `Reply.result` of every operation. Names and defaults are Rory's; parameters
also accept the original header spelling (`Plaintext-Matrix-Id` for `plaintext_matrix_id`) and every
field the original V1 or V2 worker accepted for the operation ("accepted for compatibility": checked
against storage where that means something, before anything is read or written, ignored otherwise),
and reject unknown fields, so a typo is still a 400. Floats must be finite; counts are at most
{max_count}. Derived storage keys follow `schemas/keys.py` (Rory's concatenations,
e.g. `<P>udm`, `encrypted<P>`; with `namespace` the job's state keys become `<namespace>_<key>`).
Status values: COMPLETED = 0, START = 1, WORK_IN_PROGRESS = 2.
"""


def _compatibility(legacy: dict[str, Compat]) -> str:
    groups = []
    for treatment in Compat:
        names = [f"`{name}`" for name, how in legacy.items() if how is treatment]
        if names:
            groups.append(f"{', '.join(names)} ({treatment.value})")
    return "Accepted for compatibility with the original worker: " + "; ".join(groups) + "."


def _operations() -> list[str]:
    from schemas.operations import MAX_COUNT

    out = [_OPERATIONS_INTRO.format(max_count=f"{MAX_COUNT:,}")]
    for spec in OPERATIONS:
        params = spec.params
        doc = (params.__doc__ or "").strip()
        out += [f"### `{spec.op.value}`", "", spec.description, ""]
        if doc and params.__doc__ != params.__mro__[1].__doc__:
            out += [doc, ""]
        out += [f"Parameters (`{params.__name__}`):", "", _model_table(params), ""]
        if params.LEGACY:
            out += [_compatibility(dict(params.LEGACY)), ""]
        for result in spec.result:
            out += [f"Result (`{result.__name__}`):", "", _model_table(result), ""]
    return out


def generate() -> str:
    """The whole of docs/protocol.md."""
    out: list[str] = [
        _HEADER.format(
            subject_rows="\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _subject_rows()),
            service=subjects.SERVICE_NAME,
            ct=codec.CONTENT_TYPE,
            accept=codec.ACCEPT,
            msgpack=codec.MSGPACK,
            json=codec.JSON,
            max_bytes=codec.DEFAULT_MAX_BYTES,
            max_depth=codec.DEFAULT_MAX_DEPTH,
        )
    ]
    for model, title in MODELS:
        doc = (model.__doc__ or "").strip()
        out += [f"### {title}", "", doc, "", _model_table(model), ""]
    out.append(_RULES.format(errors=_errors_table()))
    for model, title in MODELS:
        if "." in title:
            continue
        schema = json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        out += [f"<details><summary>{title}</summary>", "", "```json", schema, "```", "", "</details>", ""]
    out += _operations()
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.docgen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument("--path", type=Path, default=DOC_PATH)
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is out of date: run python -m schemas.docgen", file=sys.stderr)
            return 1
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
