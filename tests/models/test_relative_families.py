"""DeBERTa-v2 and T5: relative positions only, so block 0's rows are the tokens' alone."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.optimization.shape import estimate_batch_size
from gradleak.client import simulate_update
from gradleak.data import Batch
from gradleak.errors import UnsupportedFamilyError
from gradleak.models import LinearInputProbe, load_model

_SIZES = "num_hidden_layers=2&hidden_size=40&intermediate_size=56&num_attention_heads=4"
SPECS = {
    "deberta-v2": f"random:deberta-v2?{_SIZES}",
    "t5": "random:t5?num_layers=2&d_model=40&d_ff=56&num_heads=4",
    "t5-gated": "random:t5?num_layers=2&d_model=40&d_ff=56&num_heads=4"
    "&feed_forward_proj=gated-gelu",
}


@pytest.fixture(scope="module")
def models():
    return {name: load_model(spec) for name, spec in SPECS.items()}


def _first_inputs(model, layers, ids):
    """Returns each layer's input at its first call in a full forward pass (DeBERTa calls q and
    k again on its relative position table)."""
    seen = {}

    def keep_first(layer):
        def hook(module, args):
            seen.setdefault(layer, args[0])

        return hook

    handles = [
        model.get_submodule(layer.module_name).register_forward_pre_hook(keep_first(layer))
        for layer in layers
    ]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for handle in handles:
        handle.remove()
    return seen


def test_roles_come_from_the_module_tree(models):
    deberta, t5, gated = (models[n].family for n in ("deberta-v2", "t5", "t5-gated"))
    assert deberta.linear_layer(0, "q").module_name.endswith("attention.self.query_proj")
    assert deberta.linear_layer(0, "o").module_name.endswith("attention.output.dense")
    assert t5.linear_layer(1, "mlp_in").module_name.endswith(
        "encoder.block.1.layer.1.DenseReluDense.wi"
    )
    assert not t5.has_linear_layer(0, "mlp_gate")
    assert gated.linear_layer(0, "mlp_gate").module_name.endswith("DenseReluDense.wi_0")
    assert gated.linear_layer(0, "mlp_in").module_name.endswith("DenseReluDense.wi_1")
    assert (deberta.positions, t5.positions) == ("relative", "relative")
    assert deberta.table_reading_roles() == ("q", "k") and t5.table_reading_roles() == ()
    assert deberta.embedding_norm() is not None and deberta.position_embedding() is None


@pytest.mark.parametrize("name", list(SPECS))
def test_block0_rows_are_the_tokens_alone_at_every_position(models, name):
    public = models[name]
    family = public.family
    layers = [family.linear_layer(0, role) for role in ("q", "k", "v")]
    deeper = [family.linear_layer(1, "v")]
    ids = torch.randint(1000, 2000, (2, 7), generator=torch.Generator().manual_seed(0))
    ids[:, -1] = public.tokenizer.sep_token_id  # where T5's classifier pools
    expected = _first_inputs(public.model, layers + deeper, ids)
    rows = LinearInputProbe(family, layers).token_rows(ids.flatten(), position=3)
    for layer in layers:
        torch.testing.assert_close(rows[layer], expected[layer].flatten(0, 1))
    got = LinearInputProbe(family, deeper)(ids, attention_mask=torch.ones_like(ids))
    torch.testing.assert_close(got[deeper[0]], expected[deeper[0]])


def test_t5_batch_size_is_read_where_its_classifier_pools(models):
    public = models["t5"]
    batch = Batch(texts=("see you at six", "my pin is 4471", "call me"), labels=(0, 1, 0))
    update = simulate_update(public, batch)
    estimate = estimate_batch_size(public.family, update.gradients(), task="seq_class")
    assert estimate is not None and estimate.value == 3
    assert "decoder" in public.family.pooled_mlp()[0].module_name


def test_deberta_with_absolute_positions_in_its_rows_is_refused():
    with pytest.raises(UnsupportedFamilyError, match="position_biased_input"):
        load_model(f"random:deberta-v2?{_SIZES}&position_biased_input=true")
