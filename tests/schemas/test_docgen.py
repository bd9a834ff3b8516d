"""docs/protocol.md is generated from the models: it must match them exactly."""

from __future__ import annotations

from schemas import docgen


def test_protocol_doc_is_up_to_date() -> None:
    assert docgen.DOC_PATH.read_text() == docgen.generate(), "run: python -m schemas.docgen"


def test_doc_mentions_every_envelope_field() -> None:
    text = docgen.generate()
    for model, _ in docgen.MODELS:
        for name in model.model_fields:
            assert f"`{name}`" in text
