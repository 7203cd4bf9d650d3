"""Block 0's MLP input as the sequence gate (an encoder classifier whose sequence block is its
last): certified implies exact, wrong sentences of the batch's own tokens are refused.

Wrong sentences made of the batch's tokens (one token off, two exchanged) sit decades closer to
that span than rows of tokens the batch lacks; on a narrow, shallow model, closer than the
threshold itself. These tests build such models and check that no such sentence is certified.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from gradleak.attacks.dager import Dager, DagerConfig
from gradleak.attacks.dager.encoder import nearest_neighbour
from gradleak.attacks.dager.oracle import MLP_INPUT_ROLES
from gradleak.attacks.dager.spans import read_spans, sequence_threshold, vocabulary
from gradleak.attacks.dager.tokens import scan_tokens
from gradleak.attacks.thresholds import MIN_SPLIT_DECADES
from gradleak.client import simulate_update
from gradleak.data import Batch
from gradleak.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conformance import TEXTS as MATRIX_TEXTS  # noqa: E402
from conformance import Shape, spec_for  # noqa: E402

TEXTS = (
    "my pin is 4471",
    "Call Maria at noon.",
    "see you at six",
    "The rent is due Friday.",
    "Meet me by the old bridge.",
    "The code for the gate is 0921.",
    "I will send the keys tomorrow.",
    "Dinner at eight, bring wine.",
    "Her flight lands at noon.",
)


def _public(model_type: str, blocks: int, seed: int):
    shape = Shape(f"b{blocks}", blocks=blocks, width=96, mlp=128, heads=6)
    return load_model(spec_for(model_type, shape, extra=f"&seed={seed}"), task="seq_class")


def _batch(seed: int, size: int) -> Batch:
    texts = tuple(TEXTS[(3 * seed + i) % len(TEXTS)] for i in range(size))
    return Batch(texts=texts, labels=tuple(i % 2 for i in range(size)))


def _certified_wrong(public, batch: Batch) -> list[str]:
    result = Dager().reconstruct(public, simulate_update(public, batch))
    truth = {tuple(public.tokenizer(text)["input_ids"]) for text in batch.texts}
    return [s.text for s in result.sequences if s.certified and s.token_ids not in truth]


#: (model type, blocks, seed, B): the default run keeps two quick ones; the rest is slow.
_QUICK = {("t5", 1, 1, 4), ("bert", 2, 1, 4)}
_CASES = [
    (model_type, blocks, seed, size)
    for model_type, blocks in (
        ("t5", 1),
        ("t5", 2),
        ("bert", 2),
        ("roberta", 2),
        ("distilbert", 2),
        ("electra", 2),
        ("bart", 2),
        ("deberta-v2", 2),
    )
    for seed in (1, 2, 3)
    for size in (4, 8)
]


@pytest.mark.parametrize(
    ("model_type", "blocks", "seed", "size"),
    [pytest.param(*case, marks=() if case in _QUICK else (pytest.mark.slow,)) for case in _CASES],
)
def test_nothing_certified_through_the_mlp_gate_is_wrong(model_type, blocks, seed, size):
    public = _public(model_type, blocks, seed)
    assert _certified_wrong(public, _batch(seed, size)) == []


def _gate(public, batch: Batch):
    gradients = simulate_update(public, batch).gradients()
    config, vocab = DagerConfig(), vocabulary(public)
    spans = read_spans(public, gradients, vocab, config, min_gap=1.0)
    assert spans.sequence.layers[0].role in MLP_INPUT_ROLES
    positions = public.family.positions == "learned"
    scan = scan_tokens(
        spans.token, vocab, per_position=positions, max_length=64, tau=None, chunk_size=4096
    )
    tau2, _ = sequence_threshold(spans.sequence, scan, vocab, config)
    return spans.sequence, scan, tau2


def _exchanged(ids: list[int]) -> list[tuple[int, ...]]:
    out = []
    for i in range(1, len(ids) - 1):
        for j in range(i + 1, len(ids) - 1):
            if ids[i] != ids[j]:
                swapped = list(ids)
                swapped[i], swapped[j] = ids[j], ids[i]
                out.append(tuple(swapped))
    return out


def test_a_sentence_with_two_tokens_exchanged_is_refused_where_it_passes_the_threshold():
    """A 96-wide, 2-block BERT: exchanging two tokens of a true sentence moves its MLP rows less
    than the span's float tilt, so the threshold passes it; the true sentence, one exchange away,
    fits within a decade, so the neighbour check refuses it."""
    public, batch = _public("bert", 2, 1), _batch(1, 4)
    oracle, scan, tau2 = _gate(public, batch)
    truth = [public.tokenizer(text)["input_ids"] for text in batch.texts]
    truths = {tuple(ids) for ids in truth}
    passing = []
    for ids in truth:
        for wrong in _exchanged(ids):
            rows = oracle.residuals(oracle.probe(torch.tensor([wrong])))
            if wrong not in truths and float(rows.max()) < tau2:
                passing.append((wrong, float(rows.max())))
    assert passing, "no exchanged sentence passes the threshold: this test shows nothing"
    for wrong, own in passing:
        sets = tuple(
            scan.sets[p] if p < len(scan.sets) else scan.sets[-1] for p in range(len(wrong))
        )
        nearest = nearest_neighbour(
            oracle, wrong, sets, tokenizer=public.tokenizer, chunk_size=4096
        )
        assert nearest < own * 10**MIN_SPLIT_DECADES, public.tokenizer.decode(wrong)


def test_the_mlp_gate_threshold_passes_true_rows_and_no_out_of_bag_row():
    public, batch = _public("t5", 1, 1), _batch(1, 4)
    oracle, scan, tau2 = _gate(public, batch)
    truth = [public.tokenizer(text)["input_ids"] for text in batch.texts]
    for ids in truth:
        assert float(oracle.residuals(oracle.probe(torch.tensor([ids]))).max()) < tau2
    bag = torch.unique(torch.tensor([t for ids in truth for t in ids]))
    others = torch.arange(1000, 1400)
    others = others[~torch.isin(others, bag)]
    for ids in truth[:2]:
        wrong = torch.tensor([ids] * len(others))
        wrong[:, 1] = others
        assert bool((oracle.residuals(oracle.probe(wrong)).amax(dim=-1) > tau2).all())


@pytest.mark.slow
def test_t5_small_read_at_block_0s_mlp_input_certifies_nothing_wrong():
    """T5-small's shape at B = 16 with the sequence gate moved to block 0's MLP input (the
    sequence block set to the last): a threshold between the noise tilt and out-of-bag rows
    (0.026) certified three reorderings of true sentences there; at the tilt, none."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from conformance_bench import _MORE_TEXTS, REALISTIC

    public = load_model(spec_for("t5", REALISTIC["t5"]), task="seq_class")
    texts = (*MATRIX_TEXTS, *_MORE_TEXTS)[:16]
    batch = Batch(texts=texts, labels=tuple(i % 2 for i in range(16)))
    result = Dager(DagerConfig(sequence_block=5, time_budget=600)).reconstruct(
        public, simulate_update(public, batch)
    )
    assert result.diagnostics["tau2"] < 0.026
    truth = {tuple(public.tokenizer(text)["input_ids"]) for text in texts}
    assert [s.text for s in result.sequences if s.certified and s.token_ids not in truth] == []
