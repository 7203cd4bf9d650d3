"""Certification never lies: on every search path, a certified sequence is exactly one the client
used.

Each case drives one path of the attacks (prefix, encoder, ranked past the hidden size, noise,
a multi-step delta, a next-token update with and without the head, the layer-span attack) on a
tiny random model, and checks the one property a certificate promises, whatever else happens.
The benchmarks print the same count at realistic sizes (``certified_but_wrong``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gradleak.attacks import CauseKind, create_attack
from gradleak.attacks.base import Reconstruction, RecoveredSequence
from gradleak.attacks.budget import Deadline
from gradleak.attacks.dager.accounting import account_for_batch, best_supported, out_of_time
from gradleak.attacks.verdict import CERTIFIED, Cause, best_effort
from gradleak.client import ClientSettings, simulate_update
from gradleak.data import Batch

TEXTS = (
    "Call Maria at 555-0147 before noon.",
    "The rent is due on Friday, not Monday.",
    "Send the invoice to Tom at the Elm Street office.",
    "my pin is 4471",
    "see you at the station at six",
    "Her new address is 12 Rose Lane.",
)

CASES = {
    "gpt2-prefix": ("gpt2", "seq_class", 2, {}, "dager", {}),
    "llama-prefix": ("llama", "seq_class", 2, {}, "dager", {}),
    "bert-encoder": ("bert", "seq_class", 2, {}, "dager", {}),
    "gpt2-next-token": ("gpt2", "next_token", 3, {}, "dager", {}),
    "llama-next-token": ("llama", "next_token", 2, {}, "dager", {}),
    "gpt2-next-token-no-head": (
        "gpt2",
        "next_token",
        2,
        {"expose": "blocks=0,1"},
        "dager",
        {},
    ),
    "gpt2-ranked": ("gpt2", "seq_class", 6, {}, "dager", {}),
    "gpt2-capped": ("gpt2", "seq_class", 6, {}, "dager", {"saturated": "cap"}),
    "gpt2-noise": (
        "gpt2",
        "seq_class",
        1,
        {"defence": ("noise",), "sigma": 1e-6},
        "dager",
        {"max_length": 6, "noise_blocks": 2},
    ),
    "gpt2-fedavg": (
        "gpt2",
        "seq_class",
        2,
        {"algo": "fedavg", "local_epochs": 2, "mini_batch": 1, "lr": 1e-3},
        "dager",
        {},
    ),
    "llama-layer-span": ("llama", "seq_class", 1, {"expose": "blocks=1"}, "layer-span", {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_certified_implies_exact(tiny_models, case):
    family, task, size, client, attack, options = CASES[case]
    public = tiny_models(family, task)
    texts = TEXTS[:size]
    batch = Batch(texts=texts, labels=tuple(i % 2 for i in range(size)))
    update = simulate_update(public, batch, settings=ClientSettings(**client))
    result = create_attack(attack, **options).reconstruct(public, update)
    truth = {tuple(public.tokenizer(t)["input_ids"]) for t in texts}
    wrong = [s.text for s in result.sequences if s.certified and s.token_ids not in truth]
    assert not wrong, f"{case}: certified but not exact: {wrong}"
    for sequence in result.sequences:
        assert sequence.certified == (not sequence.assurance.causes)


def test_a_spent_time_budget_answers_best_effort_with_that_cause(tiny_models):
    public = tiny_models("gpt2")
    batch = Batch(texts=TEXTS[:2], labels=(0, 1))
    update = simulate_update(public, batch, settings=ClientSettings())
    result = create_attack("dager", time_budget=1e-9).reconstruct(public, update)
    assert CauseKind.TIME_BUDGET in {c.kind for c in result.causes}
    assert not any(s.certified for s in result.sequences)
    assert all(
        CauseKind.TIME_BUDGET in {c.kind for c in s.assurance.causes} for s in result.sequences
    )


def test_whole_sentences_proved_before_the_budget_ran_out_keep_their_certificate():
    proved = RecoveredSequence((1, 5, 2), "a", CERTIFIED, (1e-7,) * 3)
    guessed = RecoveredSequence((1, 6, 2), "b", best_effort(Cause(CauseKind.RANKED)), (0.1,) * 3)
    result = Reconstruction("dager", (proved, guessed))
    spent = Deadline(1.0, started=0.0)
    whole = out_of_time(result, spent, whole=True)
    assert [s.certified for s in whole.sequences] == [True, False]
    assert CauseKind.TIME_BUDGET in {c.kind for c in whole.sequences[1].assurance.causes}
    assert CauseKind.TIME_BUDGET in {c.kind for c in whole.causes}
    cut = out_of_time(result, spent)  # a prefix may have been cut mid-way: nothing stays proved
    assert not any(s.certified for s in cut.sequences)


def test_sequences_the_batch_holds_but_the_attack_missed_are_counted(tiny_models):
    public = tiny_models("gpt2")
    batch = Batch(texts=TEXTS[:3], labels=(0, 1, 0))
    update = simulate_update(public, batch, settings=ClientSettings(disclose=("batch_size",)))
    result = create_attack("dager", time_budget=1e-9).reconstruct(public, update)
    assert result.diagnostics["batch_size"] == {"value": 3, "source": "disclosed by the client"}
    missing = [c for c in result.causes if c.kind is CauseKind.MISSING_SEQUENCES]
    assert len({s.token_ids for s in result.sequences}) + sum(c.count or 0 for c in missing) >= 3


def test_never_more_sequences_than_the_batch_holds(tiny_models):
    public = tiny_models("gpt2")
    batch = Batch(texts=TEXTS[:2], labels=(0, 1))
    update = simulate_update(public, batch, settings=ClientSettings(disclose=("batch_size",)))
    found = create_attack("dager").reconstruct(public, update)
    sure = found.sequences[0]
    extra = [
        RecoveredSequence(s.token_ids + (i,), s.text, best_effort(Cause(CauseKind.RANKED)), (0.5,))
        for i, s in enumerate(found.sequences * 2)
    ]
    padded = replace(found, sequences=(*extra, sure))
    kept = account_for_batch(public, update, update.gradients(), padded)
    assert len(kept.sequences) == 2
    assert sure in kept.sequences  # the certified one is kept before any best-effort one
    surplus = [c for c in kept.causes if c.kind is CauseKind.SURPLUS]
    assert [c.count for c in surplus] == [3]


def _guess(ids, residuals):
    return RecoveredSequence(ids, "", best_effort(Cause(CauseKind.LOSSY_UPDATE)), residuals)


def test_the_best_supported_sequences_are_kept():
    """Each kept by its last row, then its weakest own row: a wrong branch or a wrong extension of
    a kept sentence ends on a weak row, and a prefix of a kept one adds nothing."""
    true_a = _guess((1, 2, 3, 4), (10.0, 40.0, 30.0, 9.0))  # a weak middle row, a strong end
    branch_a = _guess((1, 2, 3, 7), (10.0, 40.0, 30.0, 35.0))
    wrong_end_a = _guess((1, 2, 3, 4, 5), (10.0, 40.0, 30.0, 9.0, 60.0))
    prefix_a = _guess((1, 2), (10.0, 40.0))
    true_b = _guess((6, 2, 8), (12.0, 20.0, 11.0))
    true_c = _guess((9, 9, 5), (15.0, 5.0, 20.0))
    found = [branch_a, wrong_end_a, prefix_a, true_a, true_c, true_b]
    assert best_supported(found, 3) == [true_a, true_b, true_c]
    assert best_supported(found, 1) == [true_a]
    # With room for all, every sequence but the prefix of a kept one, best-supported first.
    assert best_supported(found, 10) == [true_a, true_b, true_c, branch_a, wrong_end_a]
    certified = replace(branch_a, assurance=CERTIFIED)
    assert best_supported([*found, certified], 2) == [certified, true_a]


def test_a_classifier_shows_its_batch_size_in_the_gradient(tiny_models):
    public = tiny_models("gpt2")
    update = simulate_update(public, Batch(texts=TEXTS[:3], labels=(0, 1, 0)))
    result = create_attack("dager").reconstruct(public, update)
    assert result.diagnostics["batch_size"]["value"] == 3
