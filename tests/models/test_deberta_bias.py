"""DeBERTa's position terms from the offsets a sentence uses equal the library's, and the probe
uses them only where they passed their check."""

from __future__ import annotations

import pytest
import torch
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

from gradleak.models import LinearInputProbe
from gradleak.models.families.deberta_bias import ShortAttentionBias, short_attention_bias
from gradleak.models.families.relative import DebertaV2Family

#: DeBERTa-v3's layout (relative attention only), tiny, and variants of its position terms.
_V3 = {
    "vocab_size": 30522,
    "num_hidden_layers": 2,
    "hidden_size": 48,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "relative_attention": True,
    "position_biased_input": False,
    "pos_att_type": ["p2c", "c2p"],
    "max_relative_positions": -1,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
}
VARIANTS = {
    "shared keys, both terms": {},
    "own position projections": {"share_att_key": False},
    "content to position only": {"pos_att_type": ["c2p"]},
    "few buckets": {"position_buckets": 8, "max_relative_positions": 64},
}


class _Public:
    """What these tests need of a public model: the model and its family."""

    def __init__(self, variant: dict) -> None:
        torch.manual_seed(0)
        config = DebertaV2Config(**{**_V3, **variant})
        self.model = DebertaV2ForSequenceClassification(config).eval()
        self.family = DebertaV2Family(self.model)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def public(request):
    return _Public(VARIANTS[request.param])


def _hidden(public, ids: torch.Tensor, short: bool) -> torch.Tensor:
    family = public.family
    with torch.no_grad():
        if not short:
            return family.base(input_ids=ids).last_hidden_state
        with family.short_bias.active():
            return family.base(input_ids=ids).last_hidden_state


@pytest.mark.parametrize("length", [2, 9, 40])
def test_short_terms_equal_the_librarys(public, length):
    assert all(public.family.short_bias.matches())
    ids = torch.randint(1000, 20000, (3, length), generator=torch.Generator().manual_seed(length))
    reference, short = _hidden(public, ids, False), _hidden(public, ids, True)
    assert torch.allclose(short, reference, rtol=0, atol=1e-5 * float(reference.abs().max()))


def test_short_terms_carry_gradients_as_the_librarys(public):
    attention = next(
        m for m in public.model.modules() if type(m).__name__ == "DisentangledSelfAttention"
    )
    table = public.model.deberta.encoder.get_rel_embedding().detach()
    heads, size = attention.num_attention_heads, attention.attention_head_size
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(2 * heads, 7, size, generator=generator, requires_grad=True)
    key = torch.randn(2 * heads, 7, size, generator=generator)
    factor = 1 + len(attention.pos_att_type)
    grads = []
    for compute in (attention.disentangled_attention_bias, None):
        value = (
            compute(query, key, None, table, factor)
            if compute is not None
            else short_attention_bias(attention, query, key, None, table, factor)
        )
        (grad,) = torch.autograd.grad((value**2).sum(), query)
        grads.append(grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5 * float(grads[0].abs().max()))


def test_the_probe_reads_the_same_rows_with_the_short_terms(public):
    family = public.family
    probe = LinearInputProbe(family, [family.linear_layer(1, "q")])
    ids = torch.randint(1000, 20000, (4, 9), generator=torch.Generator().manual_seed(2))
    with_short = probe(ids)[family.linear_layer(1, "q")]
    passed, family.short_bias._passed = family.short_bias._passed, []
    try:
        without = probe(ids)[family.linear_layer(1, "q")]
    finally:
        family.short_bias._passed = passed
    assert torch.allclose(with_short, without, atol=1e-5 * float(without.abs().max()))


def test_a_module_whose_check_fails_keeps_the_librarys_terms():
    public = _Public({})
    attention = next(
        m for m in public.model.modules() if type(m).__name__ == "DisentangledSelfAttention"
    )
    library = attention.disentangled_attention_bias
    attention.disentangled_attention_bias = lambda *args: library(*args) * 1.01
    guard = ShortAttentionBias(public.model)
    assert guard.matches()[0] is False
    assert all(guard.matches()[1:])
    with guard.active():
        assert attention.disentangled_attention_bias.__name__ == "<lambda>"
    del attention.disentangled_attention_bias
