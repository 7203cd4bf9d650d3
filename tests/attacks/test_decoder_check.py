"""BART's decoder confirms the sentences its encoder's spans certified, and rejects a wrong one."""

from __future__ import annotations

from conformance import TINY_SHAPES, spec_for

from gradleak.attacks.base import Reconstruction, RecoveredSequence
from gradleak.attacks.dager.decoder_check import confirm_on_decoder
from gradleak.attacks.verdict import Assurance, CauseKind
from gradleak.client import simulate_update
from gradleak.data import Batch
from gradleak.models import load_model


def test_the_decoder_keeps_true_sentences_and_uncertifies_a_wrong_one():
    public = load_model(spec_for("bart", TINY_SHAPES[0]))  # 72 wide: the span leaves room
    texts = ("my pin is 4471", "see you at six")
    update = simulate_update(public, Batch(texts=texts, labels=(0, 1)))
    true = tuple(public.tokenizer(texts[0])["input_ids"])
    wrong = (*true[:2], true[3], true[2], *true[4:])  # two tokens swapped
    claimed = Reconstruction(
        attack="dager",
        sequences=tuple(RecoveredSequence(ids, "", Assurance(())) for ids in (true, wrong)),
    )
    checked = confirm_on_decoder(public, update.gradients(), claimed, seed=0)
    assert checked.diagnostics["decoder_check"]["status"] == "tested"
    kept, rejected = checked.sequences
    assert kept.certified
    assert not rejected.certified
    assert rejected.assurance.causes[0].kind is CauseKind.ABOVE_THRESHOLD
