"""Exact recovery from one exposed linear layer at depth, without block 0's gradient."""

from __future__ import annotations

import pytest

from gradleak.attacks import create_attack
from gradleak.attacks.layer_span import choose_layer
from gradleak.client import Exposure, compute_update
from gradleak.data import Batch
from gradleak.errors import GradientNotExposedError, UnsupportedFamilyError
from gradleak.models import load_model

GPT2 = "random:gpt2?n_layer=4&n_embd=64&n_head=2&n_positions=32"
# The same shape with the first 4,000 tokens only: every step scans the whole vocabulary, so this
# keeps the default run quick; the full 50,257-token case runs under -m slow.
GPT2_SMALL_VOCAB = GPT2 + "&vocab_size=4000"
TEXT = ("Call Maria at noon.",)
COMMON_TEXT = ("the man is in the house.",)


@pytest.fixture(scope="module")
def gpt2():
    return load_model(GPT2)


def recovers_exactly(public, texts, exposure):
    update = compute_update(
        public, Batch(texts=texts, labels=(1,)), exposure=Exposure.parse(exposure)
    )
    result = create_attack("layer-span").reconstruct(public, update)
    return [s.token_ids for s in result.sequences] == [
        tuple(public.tokenizer(texts[0])["input_ids"])
    ] and result.certified


@pytest.mark.parametrize("exposure", ["blocks=2 roles=q", "blocks=1 roles=mlp_out"])
def test_one_deep_layer_recovers_the_sentence_exactly(exposure):
    public = load_model(GPT2_SMALL_VOCAB)
    assert max(public.tokenizer(COMMON_TEXT[0])["input_ids"]) < 4000
    assert recovers_exactly(public, COMMON_TEXT, exposure)


@pytest.mark.slow
@pytest.mark.parametrize("exposure", ["blocks=2 roles=q", "blocks=1 roles=mlp_out"])
def test_one_deep_layer_with_the_full_vocabulary(gpt2, exposure):
    assert recovers_exactly(gpt2, TEXT, exposure)


def test_layer_choice_prefers_attention_inputs_before_the_last_block(gpt2):
    family = gpt2.family
    names = {family.linear_layer(b, r).weight_name for b in (1, 3) for r in ("q", "mlp_out")}
    assert choose_layer(family, names) == (1, ("q", "k", "v"))  # fused c_attn: q, k and v at once
    only_last = {family.linear_layer(3, "mlp_out").weight_name}
    assert choose_layer(family, only_last) == (3, ("mlp_out",))
    with pytest.raises(GradientNotExposedError):
        choose_layer(family, set())


def test_encoders_are_refused(tiny_models):
    public = tiny_models("bert")
    update = compute_update(
        public, Batch(texts=TEXT, labels=(1,)), exposure=Exposure.parse("blocks=1")
    )
    with pytest.raises(UnsupportedFamilyError, match="use dager"):
        create_attack("layer-span").reconstruct(public, update)
