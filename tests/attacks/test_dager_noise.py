"""DAGER under Gaussian noise: the paper's statistical filter and the beam recover text, never
certified."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.dager import Dager, DagerConfig
from gradleak.attacks.dager.noisy import (
    TokenCandidates,
    _branch_scores,
    _screened_zscores,
    edge_rank,
    logit,
    logit_residuals,
    noisy_oracles,
    policy_for,
)
from gradleak.attacks.dager.plan import noisy_defence
from gradleak.attacks.span import SpanBasis
from gradleak.client import ClientSettings, simulate_update
from gradleak.data import Batch
from gradleak.models import load_model

# The first 4,000 tokens only (the text's ids all lie below), so each position scans 4,000 tokens
# and keeps 200 candidates; the full vocabulary runs under -m slow.
GPT2 = "random:gpt2?n_layer=6&n_embd=128&n_head=4&n_positions=64&vocab_size=4000"
GPT2_FULL_VOCAB = "random:gpt2?n_layer=6&n_embd=128&n_head=4&n_positions=64"
TEXT = "the story is so well made that you will want to see it again ."


@pytest.fixture(scope="module")
def gpt2():
    return load_model(GPT2)


def noised(public, *, sigma: float, defence: str = "noise", texts=(TEXT,)):
    scale = "sigma" if defence == "noise" else "noise_multiplier"
    settings = ClientSettings(defence=(defence,), **{scale: sigma}, noise_seed=3)
    return simulate_update(public, Batch(texts=texts, labels=(1,) * len(texts)), settings=settings)


def truth(public, text=TEXT):
    return tuple(public.tokenizer(text)["input_ids"])


@pytest.mark.parametrize(("mode", "sigma"), [("filter", 1e-6), ("beam", 1e-6), ("beam", 5e-6)])
def test_noise_search_recovers_one_sentence_uncertified(gpt2, mode, sigma):
    result = Dager(DagerConfig(noise=mode, noise_rank=None)).reconstruct(
        gpt2, noised(gpt2, sigma=sigma)
    )
    assert truth(gpt2) in {s.token_ids for s in result.sequences}
    assert not any(s.certified for s in result.sequences)
    assert "Gaussian noise (noise defence)" in result.reason and result.diagnostics["noise"] == mode


def test_the_beam_goes_on_where_the_filter_stops(gpt2):
    update = noised(gpt2, sigma=5e-6)
    paper = Dager(DagerConfig(noise="filter", noise_rank=None)).reconstruct(gpt2, update)
    assert truth(gpt2) not in {
        s.token_ids for s in paper.sequences
    }  # stops after a few tokens here


@pytest.mark.slow
def test_filter_with_the_full_vocabulary():
    public = load_model(GPT2_FULL_VOCAB)
    result = Dager(DagerConfig(noise="filter", noise_rank=None)).reconstruct(
        public, noised(public, sigma=1e-6)
    )
    assert truth(public) in {s.token_ids for s in result.sequences} and not result.certified


def test_noised_update_is_never_certified_even_by_the_exact_test(gpt2):
    update = noised(gpt2, sigma=1e-6)
    for mode in ("off", "auto"):
        result = Dager(DagerConfig(noise=mode, noise_rank=None)).reconstruct(gpt2, update)
        assert not any(s.certified for s in result.sequences) and "noise" in result.reason


def test_auto_uses_the_beam_on_dp_sgd_and_the_exact_test_on_a_clean_update(gpt2):
    dp = Dager(DagerConfig(noise_rank=None)).reconstruct(
        gpt2, noised(gpt2, sigma=1e-6, defence="dp-sgd")
    )
    assert dp.diagnostics["noise"] == "beam" and not any(s.certified for s in dp.sequences)
    assert "dp-sgd defence" in dp.reason
    clean = simulate_update(gpt2, Batch(texts=(TEXT,), labels=(1,)))
    result = Dager().reconstruct(gpt2, clean)
    assert result.certified and [s.token_ids for s in result.sequences] == [truth(gpt2)]


def test_noisy_defence_is_found_in_chains_and_aggregates():
    assert noisy_defence({"name": "noise", "sigma": 1e-4}) == "noise"
    assert (
        noisy_defence({"name": "chain", "steps": [{"name": "prune"}, {"name": "dp-sgd"}]})
        == "dp-sgd"
    )
    assert (
        noisy_defence({"name": "secure-aggregation", "client_defence": {"name": "noise"}})
        == "noise"
    )
    assert noisy_defence({"name": "quantize"}) is None and noisy_defence(None) is None


def test_edge_rank_finds_the_signal_above_the_noise_bulk():
    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(300, 12, generator=generator, dtype=torch.float64) @ torch.randn(
        12, 200, generator=generator, dtype=torch.float64
    )
    noisy = signal + 0.05 * torch.randn(300, 200, generator=generator, dtype=torch.float64)
    assert edge_rank(torch.linalg.svdvals(noisy), 300) == 12


def test_unknown_noise_mode_is_refused():
    with pytest.raises(ValueError, match="noise must be one of"):
        DagerConfig(noise="exact")


def test_logit_residuals_are_the_spans_residuals():
    generator = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(64, 10, generator=generator)).Q.T.contiguous()
    span = SpanBasis(
        basis=basis,
        rank=10,
        in_features=64,
        singular_values=torch.ones(10),
        gap_decades=0.0,
        saturated=False,
    )
    rows = torch.randn(3, 50, 64, generator=generator)
    rows[0, :5] = torch.randn(5, 10, generator=generator) @ basis + 0.05 * rows[0, :5]
    expected = logit(span.residuals(rows))
    torch.testing.assert_close(logit_residuals(span, rows), expected, rtol=1e-4, atol=1e-4)


def test_the_screened_step_keeps_what_scoring_every_extension_keeps(gpt2):
    update = noised(gpt2, sigma=5e-6)
    config = DagerConfig(noise="beam", noise_rank=None)
    oracles = noisy_oracles(gpt2.family, update.gradients(), config)
    vocab = torch.arange(gpt2.family.embedding().weight.shape[0])
    candidates = TokenCandidates(oracles.token, vocab, k=800, per_position=True, chunk_size=4096)
    ids = truth(gpt2)
    _, state = oracles.probe.start(torch.tensor([ids[:4]]))
    tokens, token_scores = candidates.at(4)
    policy = policy_for(config, "beam", 1)
    screened = _screened_zscores(oracles, policy, state, tokens, token_scores, 4, 4096)
    full = _branch_scores(oracles.probe, oracles.layers, state, tokens, 4096)
    assert int(torch.isfinite(screened).sum()) == policy.screen < len(tokens)
    assert int(screened.argmin()) == int(full.argmin()) and int(tokens[full.argmin()]) == ids[4]
