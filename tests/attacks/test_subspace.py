"""The continuous subspace attack: ranked sequences with a confidence, never certified."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import CauseKind, create_attack
from gradleak.attacks.subspace import Subspace, SubspaceConfig
from gradleak.attacks.subspace.confidence import confidence
from gradleak.client import ClientSettings, simulate_update
from gradleak.data import Batch
from gradleak.errors import UnknownSpecError
from gradleak.models import load_model
from gradleak.models.probe import LinearInputProbe
from tests.helpers import TINY

# A small vocabulary (the texts' ids lie below it) keeps every position's scan short.
GPT2 = "random:gpt2?n_layer=4&n_embd=128&n_head=4&n_positions=64&vocab_size=4000"
LLAMA = (
    "random:llama?num_hidden_layers=4&hidden_size=128&intermediate_size=256"
    "&num_attention_heads=4&num_key_value_heads=2&vocab_size=4000"
)
TEXT = "the story is so well made that you will want to see it again ."
FAST = SubspaceConfig(mixture=512, steps=2, max_length=20, time_budget=None)


def _update(public, texts=(TEXT,), **settings):
    batch = Batch(texts=texts, labels=(1,) * len(texts))
    return simulate_update(public, batch, settings=ClientSettings(noise_seed=3, **settings))


def _truth(public, text=TEXT):
    return tuple(public.tokenizer(text)["input_ids"])


@pytest.fixture(scope="module")
def gpt2():
    return load_model(GPT2)


@pytest.fixture(scope="module")
def llama():
    return load_model(LLAMA)


def test_recovers_a_noised_sentence_with_a_confidence_never_certified(gpt2):
    result = Subspace(FAST).reconstruct(gpt2, _update(gpt2, defence=("noise",), sigma=1e-6))
    best = result.sequences[0]
    assert best.token_ids == _truth(gpt2), result.texts
    assert not best.certified and not result.certified
    kinds = {c.kind for c in best.assurance.causes}
    assert {CauseKind.SUBSPACE, CauseKind.NOISE} <= kinds
    assert best.confidence is not None and 0.0 <= best.confidence <= 1.0
    assert best.to_dict()["confidence"] == best.confidence
    assert result.diagnostics["seconds_per_position"] > 0


def test_an_int8_update_starts_the_sentence_right_never_certified(gpt2):
    """int8 buries most of a 128-wide model's directions: only the opening survives."""
    update = _update(gpt2, defence=("quantize",), quant="int8")
    result = Subspace(FAST).reconstruct(gpt2, update)
    best = result.sequences[0]
    assert best.token_ids[:3] == _truth(gpt2)[:3], result.texts
    assert not result.certified and best.confidence is not None
    assert any(c.kind == CauseKind.LOSSY_UPDATE for c in best.assurance.causes)


def test_rotary_model_and_float32_update_never_certified(llama):
    result = Subspace(FAST).reconstruct(llama, _update(llama))
    assert result.sequences and not any(s.certified for s in result.sequences)
    assert result.sequences[0].token_ids[:4] == _truth(llama)[:4], result.texts
    assert result.diagnostics["batch_estimate"] >= 1


def test_encoders_are_unsupported_not_guessed():
    bert = load_model(TINY["bert"])
    result = Subspace(FAST).reconstruct(bert, _update(bert))
    assert not result.sequences
    assert any(c.kind == CauseKind.UNSUPPORTED for c in result.causes)


def test_confidence_grows_with_the_evidence():
    assert confidence([], 1000) == 0.0
    weak, strong = confidence([-3.0] * 5, 50_000), confidence([-9.0] * 5, 50_000)
    assert 0.0 <= weak < strong <= 1.0
    assert confidence([-9.0, -1.0], 50_000) < confidence([-9.0], 50_000)


def test_registered_with_every_knob_an_option():
    attack = create_attack("subspace", depth=2, steps=0, beam=1, prior=None)
    assert isinstance(attack, Subspace) and attack.config.depth == 2
    with pytest.raises(UnknownSpecError, match="valid options"):
        create_attack("subspace", widht=3)
    with pytest.raises(ValueError, match="beam"):
        SubspaceConfig(beam=0)


def test_embedded_rows_equal_token_rows_for_a_token_embedding(gpt2):
    family = gpt2.family
    layers = [family.linear_layer(0, "q"), family.linear_layer(2, "q")]
    probe = LinearInputProbe(family, layers)
    prefix, token = torch.tensor([[11, 12, 13]]), torch.tensor([14])
    _, state = probe.start(prefix)
    discrete = probe.branch(state, token)
    embedding = probe.embedding_weight[token].detach().clone().requires_grad_(True)
    continuous = probe.embedded_rows(state, embedding)
    for layer in layers:
        torch.testing.assert_close(continuous[layer], discrete[layer][:, 0], rtol=1e-4, atol=1e-5)
    # A random direction: a fresh LayerNorm's outputs sum to a constant.
    direction = torch.randn(continuous[layers[1]].shape, generator=torch.Generator().manual_seed(0))
    (continuous[layers[1]] * direction).sum().backward()
    assert embedding.grad is not None and float(embedding.grad.abs().sum()) > 0
    assert state.length == 3 and state.size == 1  # the prefixes are left as they were
