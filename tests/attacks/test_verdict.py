"""Verdicts: a sequence is certified exactly when no cause stands against it, and every cause
reads."""

from __future__ import annotations

import json

import pytest

from gradleak.attacks import (
    CERTIFIED,
    Assurance,
    Cause,
    CauseKind,
    Reconstruction,
    RecoveredSequence,
    best_effort,
)
from gradleak.attacks.verdict import render

SEQUENCE_CAUSES = [kind for kind in CauseKind if not kind.batch_only]
BATCH_CAUSES = [kind for kind in CauseKind if kind.batch_only]


def test_nothing_against_a_sequence_certifies_it():
    assert CERTIFIED.certified and CERTIFIED.message() is None
    assert Assurance().to_dict() == {"certified": True, "causes": []}


@pytest.mark.parametrize("kind", SEQUENCE_CAUSES, ids=lambda k: k.value)
def test_no_cause_can_coexist_with_a_certificate(kind):
    for cause in (Cause(kind), Cause(kind, block=1, count=3, detail="x")):
        verdict = Assurance((cause,))
        assert not verdict.certified
        assert not CERTIFIED.with_causes([cause]).certified
        assert not RecoveredSequence((1, 2), "a b", verdict).certified
        message = verdict.message()
        assert message and message.endswith(".") and "None" not in message


@pytest.mark.parametrize("kind", BATCH_CAUSES, ids=lambda k: k.value)
def test_batch_causes_never_sit_on_a_sequence(kind):
    with pytest.raises(ValueError, match="describe a batch"):
        Assurance((Cause(kind),))
    result = Reconstruction("dager", (), causes=(Cause(kind),))
    assert not result.certified and result.reason


def test_every_cause_renders_and_round_trips_through_json():
    for kind in CauseKind:
        cause = Cause(kind, block=2, count=4, detail="dp-sgd defence")
        data = json.loads(json.dumps(cause.to_dict()))
        assert data["cause"] == kind.value and data["message"] == cause.message()
        assert Cause.from_dict(data) == cause


def test_a_best_effort_verdict_needs_a_cause():
    with pytest.raises(ValueError, match="at least one cause"):
        best_effort()


def test_the_reason_is_rendered_from_every_cause_once():
    saturated = Cause(CauseKind.SATURATED, block=1, count=576)
    cut = Cause(CauseKind.FRONTIER_CUT)
    sequences = (
        RecoveredSequence((1,), "a", best_effort(saturated)),
        RecoveredSequence((2,), "b", best_effort(saturated, cut)),
    )
    missing = Cause(CauseKind.MISSING_SEQUENCES, count=2)
    result = Reconstruction("dager", sequences, causes=(missing,))
    assert result.all_causes == (missing, saturated, cut)
    assert result.reason == render([missing, saturated, cut])
    assert "block 1's" in result.reason and "576" in result.reason
    record = result.to_dict()
    assert [c["cause"] for c in record["causes"]] == [
        "missing_sequences",
        "saturated",
        "frontier_cut",
    ]
    assert record["sequences"][0]["causes"][0]["cause"] == "saturated"


def test_a_certified_batch_says_nothing():
    result = Reconstruction("dager", (RecoveredSequence((1,), "a", CERTIFIED),))
    assert result.certified and result.reason is None and result.all_causes == ()


def test_the_architecture_doc_lists_every_cause():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"
    if not doc.exists():
        pytest.skip("docs are not beside the tests")
    text = doc.read_text()
    assert [k.value for k in CauseKind if f"`{k.value}`" not in text] == []
