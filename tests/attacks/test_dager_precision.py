"""DAGER on updates rounded coarser than float32: a bfloat16 client, fp16 and int8 quantisation.

True rows then sit at the rounding level off the span, not at 1e-7: the rank is read above the
rounding's noise floor, candidate rows are computed in float32, and nothing is certified.
"""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import CauseKind
from gradleak.attacks.dager import Dager, DagerConfig
from gradleak.attacks.dager.accounting import batch_size
from gradleak.attacks.dager.decoder import _sure_first
from gradleak.attacks.dager.ends import rounded_end_test
from gradleak.attacks.dager.rounded import rounded_gate
from gradleak.attacks.dager.spans import read_spans, sequence_threshold, vocabulary
from gradleak.attacks.dager.tokens import scan_tokens
from gradleak.attacks.rounding import read_rounding, rounding_floor
from gradleak.attacks.span import span_basis
from gradleak.client import ClientSettings, simulate_update
from gradleak.data import Batch
from gradleak.models import load_model
from gradleak.models.probe import LinearInputProbe

# Wide enough that two sentences' rows leave block 1's span room above a bfloat16 noise floor.
LLAMA = (
    "random:llama?num_hidden_layers=3&hidden_size=128&intermediate_size=256"
    "&num_attention_heads=4&num_key_value_heads=2"
)
TEXTS = ("Call Maria at 555-0147 before noon.", "The rent is due on Friday, not Monday.")


def _update(public, **settings):
    batch = Batch(texts=TEXTS, labels=(0, 1))
    return simulate_update(public, batch, settings=ClientSettings(**settings))


def _truth(public):
    return sorted(tuple(public.tokenizer(t)["input_ids"]) for t in TEXTS)


@pytest.fixture(scope="module")
def llama32():
    return load_model(LLAMA)


@pytest.fixture(scope="module")
def llama_bf16():
    return load_model(LLAMA, dtype=torch.bfloat16)


def test_read_rounding_finds_each_grid():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(64, 32, generator=generator)
    assert read_rounding(values) is None
    assert read_rounding(values.to(torch.bfloat16)).describe() == "bfloat16"
    assert read_rounding(values.half().float()).describe() == "float16"
    step = float(values.abs().max()) / 127
    quantised = torch.round(values / step) * step
    reading = read_rounding(quantised)
    assert reading.kind == "step" and reading.step == pytest.approx(step)


@pytest.mark.parametrize("scheme", ["bfloat16", "int8"])
def test_rounding_floor_bounds_the_noise_bulk(scheme):
    """A rank-4 gradient, rounded: the floor sits above the noise bulk and below the signal."""
    generator = torch.Generator().manual_seed(1)
    exact = torch.randn(96, 4, generator=generator) @ torch.randn(4, 48, generator=generator)
    if scheme == "bfloat16":
        rounded = exact.to(torch.bfloat16)
    else:
        step = float(exact.abs().max()) / 127
        rounded = torch.round(exact / step) * step
    basis = span_basis([rounded])
    s = basis.singular_values
    floor = basis.rounding_floor * float(s[0])
    assert float(s[4]) / 3 < floor < float(s[3])
    assert basis.rank == 4 and not basis.saturated
    assert rounding_floor([exact], torch.linalg.svd(exact.double(), full_matrices=False)) is None


def test_float16_floor_counts_the_uniform_step_below_its_normal_range():
    """A float16 update's small values are subnormal, on a uniform grid: the floor counts that
    step, and a rank-4 gradient of such values reads as rank 4, not as a saturated span."""
    generator = torch.Generator().manual_seed(2)
    exact = torch.randn(96, 4, generator=generator) @ torch.randn(4, 48, generator=generator)
    rounded = (exact * 1e-5).half().float()
    reading = read_rounding(rounded)
    subnormal = (rounded != 0) & (rounded.abs() < 2.0**-14)
    assert bool(subnormal.any())
    std = reading.element_std(rounded)[subnormal]
    assert torch.allclose(std, torch.full_like(std, 2.0**-24 / 12**0.5))
    basis = span_basis([rounded])
    assert basis.rank == 4 and not basis.saturated


@pytest.mark.parametrize(
    ("dtype", "settings"),
    [("bfloat16", {}), ("float32", {"defence": ("quantize",), "quant": "fp16"})],
)
def test_batch_size_is_read_above_the_rounding_floor(llama32, llama_bf16, dtype, settings):
    public = llama_bf16 if dtype == "bfloat16" else llama32
    update = _update(public, **settings)
    size = batch_size(public, update, update.gradients())
    assert size is not None and size.value == len(TEXTS)
    assert "rounding floor" in size.source


def test_int8_update_shows_no_batch_size(llama32):
    """An int8 step buries rows below it whole: no count is read that could cut true ones."""
    update = _update(llama32, defence=("quantize",), quant="int8")
    assert batch_size(llama32, update, update.gradients()) is None


def test_half_precision_models_are_probed_in_float32(llama_bf16):
    layer = llama_bf16.family.linear_layer(1, "q")
    rows = LinearInputProbe(llama_bf16.family, [layer])(torch.tensor([[5, 6, 7]]))[layer]
    assert rows.dtype == torch.float32
    assert llama_bf16.family.embedding().weight.dtype == torch.bfloat16


def test_float32_update_is_unchanged_and_certified(llama32):
    result = Dager().reconstruct(llama32, _update(llama32))
    assert sorted(s.token_ids for s in result.sequences) == _truth(llama32)
    assert result.certified


@pytest.mark.parametrize(
    ("dtype", "settings", "detail"),
    [
        ("bfloat16", {}, "bfloat16"),
        ("float32", {"defence": ("quantize",), "quant": "fp16"}, "fp16"),
    ],
)
def test_sixteen_bit_updates_recovered_exactly_never_certified(
    llama32, llama_bf16, dtype, settings, detail
):
    public = llama_bf16 if dtype == "bfloat16" else llama32
    result = Dager().reconstruct(public, _update(public, **settings))
    # Best-effort extras (a wrong digit that passed near the threshold) are cut to the batch size
    # read above the rounding floor.
    assert sorted(s.token_ids for s in result.sequences) == _truth(public), result.texts
    assert result.diagnostics["batch_size"]["value"] == len(TEXTS)
    assert result.diagnostics["gates"] == ["1.q"]  # the gate scored above the noise floors
    for sequence in result.sequences:
        assert not sequence.certified
        assert any(
            c.kind == CauseKind.LOSSY_UPDATE and c.detail == detail
            for c in sequence.assurance.causes
        )


@pytest.mark.parametrize(
    ("dtype", "settings"),
    [("bfloat16", {}), ("float32", {"defence": ("quantize",), "quant": "fp16"})],
)
def test_sixteen_bit_search_takes_every_token_of_the_bag(llama32, llama_bf16, dtype, settings):
    """Rounding lifts some true tokens' block-0 rows past the scan's threshold (SmolLM2, fp16,
    B = 16: sentences stopped where their next token was missing); the token table's gradient
    still holds every token of the batch. Here block 0's threshold is set to cut half the true
    tokens, and the search still returns both sentences."""
    public = llama_bf16 if dtype == "bfloat16" else llama32
    update = _update(public, **settings)
    _, _, _, scan = _spans_and_scan(public, update.gradients())
    tau = float(scan.residuals[0].median())
    kept = torch.cat(scan.sets)[torch.cat(scan.residuals) < tau]
    tokens = {t for ids in _truth(public) for t in ids}
    assert not tokens <= set(kept.tolist())  # the cut threshold misses true tokens
    result = Dager(DagerConfig(tau1=tau, time_budget=120)).reconstruct(public, update)
    assert sorted(s.token_ids for s in result.sequences) == _truth(public), result.texts
    assert result.diagnostics["tokens_per_position"] == [len(tokens)]


def test_int8_update_recovers_text_never_certified(llama32):
    """DAGER's own search, with the subspace search that int8 updates get by default turned off
    (tests/attacks/test_subspace.py covers that one)."""
    update = _update(llama32, defence=("quantize",), quant="int8")
    result = Dager(DagerConfig(subspace="off")).reconstruct(llama32, update)
    found = {s.token_ids for s in result.sequences}
    assert found & set(_truth(llama32)), result.texts
    assert not any(s.certified for s in result.sequences)


# Six sentences, 69 rows in 96 dimensions: in bfloat16 the batch's weakest directions sink into the
# rounding bulk, and later rows stand further off the span than the first ones.
WIDE = (
    "random:llama?num_hidden_layers=4&hidden_size=96&intermediate_size=192"
    "&num_attention_heads=4&num_key_value_heads=2"
)
CROWDED = (
    *TEXTS,
    "My password is hunter2, please keep it safe.",
    "Meet me at the old bridge after dark.",
    "The patient in room 12 was discharged on Tuesday.",
    "Wire the money to account 4417 today.",
)


@pytest.fixture(scope="module")
def crowded_bf16():
    public = load_model(WIDE, dtype=torch.bfloat16)
    batch = Batch(texts=CROWDED, labels=tuple(i % 2 for i in range(len(CROWDED))))
    return public, simulate_update(public, batch, settings=ClientSettings())


def _spans_and_scan(public, gradients):
    config = DagerConfig()
    vocab = vocabulary(public)
    spans = read_spans(public, gradients, vocab, config, min_gap=1.0)
    scan = scan_tokens(
        spans.token,
        vocab,
        per_position=False,
        max_length=64,
        tau=None,
        chunk_size=config.chunk_size,
        fallback_count=spans.token.basis.rank,
    )
    return config, vocab, spans, scan


def test_precision_aware_gate_keeps_true_rows_the_exact_test_cuts(crowded_bf16):
    """The exact-arithmetic test (block 1's span, its threshold read at position 0) cuts true
    sentences of a bfloat16 update; the gate scored above the spans' noise floors passes every
    true row and still refuses nearly every wrong extension of a true prefix."""
    public, update = crowded_bf16
    gradients = update.gradients()
    config, vocab, spans, scan = _spans_and_scan(public, gradients)
    exact_tau, _ = sequence_threshold(spans.sequence, scan, vocab, config)
    gate = rounded_gate(public, gradients, vocab, scan, spans.sequence, config, min_gap=1.0)
    assert len(gate.oracles) == 3 and gate.first < gate.sure <= gate.threshold
    floors = [o.basis.rounding_floor for o in gate.oracles]
    assert list(gate.floors) == pytest.approx(floors)
    cut_exactly, wrong_passed, wrong_tried = 0, 0, 0
    for ids in (public.tokenizer(t)["input_ids"] for t in CROWDED):
        rows = gate.probe(torch.tensor([ids]))
        exact = spans.sequence.basis.residuals(rows[spans.sequence.layer])[0]
        cut_exactly += bool((exact > exact_tau).any())
        scores = gate.residuals(rows)[0]
        assert scores[0] < gate.first and bool((scores[1:] < gate.threshold).all())
        for length in range(1, len(ids)):
            _, state = gate.probe.start(torch.tensor([ids[:length]]))
            # Wrong: every token of block 0's set but the true one and a repeat of the last.
            true = torch.tensor(ids[length - 1 : length + 1])
            wrong = scan.sets[0][~torch.isin(scan.sets[0], true)]
            passed = gate.residuals(gate.probe.branch(state, wrong))[0] < gate.sure
            wrong_passed += int(passed.sum())
            wrong_tried += len(wrong)
    assert cut_exactly >= 1
    assert wrong_passed <= 0.002 * wrong_tried


def test_rounded_end_test_cuts_a_wrong_extension_back_to_the_sentence(llama_bf16):
    """The pooled rows of a bfloat16 classifier's last block hold each sentence's final row: a
    sentence ends there, a wrong token past it or a prefix short of it does not."""
    update = _update(llama_bf16)
    truth = _truth(llama_bf16)
    extended = [ids + (ids[1],) for ids in truth]
    test = rounded_end_test(llama_bf16, update.gradients(), [*truth, *extended])
    assert test is not None
    for ids, longer in zip(truth, extended, strict=True):
        assert test.whole(llama_bf16, longer) == len(ids)
        assert test.whole(llama_bf16, ids[:-2]) is None


def test_a_prefix_without_a_sure_extension_keeps_its_best_one_and_ends():
    """A prefix with sure extensions keeps them all; one with none keeps only its best unsure
    extension (the wrong branches after a finished sentence no longer multiply) and ends."""
    parent = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    token = torch.tensor([10, 11, 12, 13, 14, 15, 16])
    score = torch.tensor([5.0, 50.0, 40.0, 30.0, 60.0, 70.0, 8.0])
    keep, extended = _sure_first(parent, score, sure=10.0)
    assert sorted(zip(parent[keep].tolist(), token[keep].tolist(), strict=True)) == [
        (0, 10),
        (0, 16),
        (1, 13),
        (2, 15),
    ]
    assert extended == {0}
