"""The families' computed linear inputs equal what the real forward pass feeds those layers."""

from __future__ import annotations

import pytest
import torch
from helpers import hooked_inputs, probed_layers

from gradleak.attacks.optimization.shape import estimate_batch_size
from gradleak.client import simulate_update
from gradleak.data import Batch
from gradleak.errors import UnsupportedFamilyError
from gradleak.models import LinearInputProbe
from gradleak.models.families import LINEAR_ROLES, family_class_for

FAMILIES = ("gpt2", "llama", "bert", "albert", "bart")


def random_ids(public, batch=3, length=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, len(public.tokenizer) - 1, (batch, length), generator=generator)
    if public.model.config.is_encoder_decoder:  # BART's head reads the decoder at the EOS
        ids[:, -1] = public.model.config.eos_token_id
    return ids


@pytest.mark.parametrize("name", FAMILIES)
def test_every_role_is_found(tiny_models, name):
    family = tiny_models(name).family
    roles = {layer.role for layer in family.linear_layers()}
    assert {"q", "k", "v", "o", "mlp_in", "mlp_out"} <= roles <= set(LINEAR_ROLES)
    assert len(family.linear_layers()) == family.num_blocks * len(roles)


@pytest.mark.parametrize("name", FAMILIES)
def test_full_sequence_inputs_match_forward_hooks(tiny_models, name):
    public = tiny_models(name)
    layers = probed_layers(public.family)
    ids = random_ids(public)
    mask = torch.ones_like(ids)
    expected = hooked_inputs(public.model, layers, input_ids=ids, attention_mask=mask)
    got = LinearInputProbe(public.family, layers)(ids, attention_mask=mask)
    for layer in layers:
        torch.testing.assert_close(got[layer], expected[layer], msg=layer.key)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_incremental_extension_matches_full_forward(tiny_models, name):
    public = tiny_models(name, "next_token")
    layers = probed_layers(public.family)
    ids = random_ids(public, length=8)
    expected = hooked_inputs(public.model, layers, input_ids=ids)
    probe = LinearInputProbe(public.family, layers)
    rows, state = probe.start(ids[:, :3])
    for layer in layers:
        torch.testing.assert_close(rows[layer], expected[layer][:, :3])
    for t in range(3, ids.shape[1]):
        rows, state = probe.extend(state, ids[:, t])
        for layer in layers:
            torch.testing.assert_close(
                rows[layer], expected[layer][:, t], msg=f"{layer.key} at {t}"
            )
    assert state.length == ids.shape[1]


def test_prefix_state_select_branches_without_touching_the_original(tiny_models):
    public = tiny_models("gpt2", "next_token")
    layer = public.family.linear_layer(1, "q")
    probe = LinearInputProbe(public.family, [layer])
    ids = random_ids(public, batch=2, length=5)
    _, state = probe.start(ids[:, :4])
    branched = state.select([1, 1, 0])
    assert (branched.size, state.size) == (3, 2)
    rows, _ = probe.extend(branched, torch.stack([ids[1, 4], ids[0, 4], ids[0, 4]]))
    expected = hooked_inputs(public.model, [layer], input_ids=ids)[layer][:, 4]
    torch.testing.assert_close(rows[layer][0], expected[1])
    torch.testing.assert_close(rows[layer][2], expected[0])
    rows, _ = probe.extend(state, ids[:, 4])  # the original state still extends correctly
    torch.testing.assert_close(rows[layer], expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_token_rows_equal_block0_inputs_in_context(tiny_models, name):
    public = tiny_models(name)
    layers = [public.family.linear_layer(0, role) for role in ("q", "k", "v")]
    ids = random_ids(public)
    expected = hooked_inputs(
        public.model, layers, input_ids=ids, attention_mask=torch.ones_like(ids)
    )
    probe = LinearInputProbe(public.family, layers)
    for position in (0, 4):
        rows = probe.token_rows(ids[:, position], position=position)
        for layer in layers:
            torch.testing.assert_close(rows[layer], expected[layer][:, position])


def test_token_rows_refuse_context_dependent_layers(tiny_models):
    family = tiny_models("gpt2").family
    with pytest.raises(ValueError, match="block-0"):
        LinearInputProbe(family, [family.linear_layer(1, "q")]).token_rows(
            torch.tensor([5]), position=0
        )


def test_gpt2_fused_qkv_is_sliced_and_transposed(tiny_models):
    family = tiny_models("gpt2").family
    d = family.hidden_size()
    q, v = family.linear_layer(0, "q"), family.linear_layer(0, "v")
    assert q.weight_name == v.weight_name and q.transposed
    fused = torch.arange(d * 3 * d, dtype=torch.float32).reshape(
        d, 3 * d
    )  # Conv1D layout (in, out)
    torch.testing.assert_close(v.weight_gradient({v.weight_name: fused}), fused[:, 2 * d :].T)
    assert q.weight_gradient({q.weight_name: fused}).shape == (d, d)


def test_parameter_roles_cover_every_parameter(tiny_models):
    for name in FAMILIES:
        family = tiny_models(name).family
        roles = family.parameter_roles()
        assert set(roles) == {n for n, _ in family.model.named_parameters()}
        assert any("embedding" in r for _, r in roles.values())
        assert any("head" in r for _, r in roles.values())


def test_unsupported_model_type_names_the_supported_families():
    with pytest.raises(UnsupportedFamilyError, match="gpt2.*llama.*bert"):
        family_class_for("mamba")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_branch_equals_extending_each_candidate(tiny_models, name):
    public = tiny_models(name, "next_token")
    layers = probed_layers(public.family)
    probe = LinearInputProbe(public.family, layers)
    _, state = probe.start(random_ids(public, batch=2, length=5))
    candidates = torch.tensor([101, 202, 303])
    rows = probe.branch(state, candidates)
    assert state.cache.get_seq_length() == 5  # cropped back
    for j, token in enumerate(candidates):
        expected, _ = probe.extend(state.select([0, 1]), token.repeat(2))
        for layer in layers:
            torch.testing.assert_close(rows[layer][:, j], expected[layer], rtol=1e-4, atol=1e-5)


def test_albert_blocks_share_one_module_each_call_its_own_input(tiny_models):
    family = tiny_models("albert").family
    first, third = family.linear_layer(0, "q"), family.linear_layer(2, "q")
    assert first.weight_name == third.weight_name and (first.call, third.call) == (0, 2)
    assert first.shared_by == family.num_blocks == 4
    rows = LinearInputProbe(family, [first, third])(random_ids(tiny_models("albert")))
    assert not torch.allclose(rows[first], rows[third])


def test_albert_tests_tokens_on_its_embedding_projection(tiny_models):
    family = tiny_models("albert").family
    layer = family.token_layer()
    assert layer is not None and layer.in_features == 12 and layer.role == "embedding"
    assert family.token_layer() is not None and tiny_models("bert").family.token_layer() is None


def test_albert_counts_its_batch_from_the_pooler(tiny_models):
    """The shared block's gradient sums every depth's rows; the pooler reads one row each."""
    public = tiny_models("albert")
    texts = ("the cat sat on the mat", "a dog barked at night", "rain again today")
    batch = Batch(texts=texts, labels=(0, 1, 0))
    gradients = simulate_update(public, batch).gradients()
    estimate = estimate_batch_size(public.family, gradients, task="seq_class")
    assert estimate is not None and estimate.value == 3
    assert public.family.pooled_mlp()[0].module_name.endswith("pooler")


def test_bart_positions_start_at_the_tables_offset(tiny_models):
    family = tiny_models("bart").family
    assert family.position_offset() == 2 and not family.takes_position_ids
    assert family.embedding_norm() is family.base.get_submodule("encoder.layernorm_embedding")


def test_bart_rows_from_embeddings_equal_rows_from_ids(tiny_models):
    public = tiny_models("bart")
    layer = public.family.linear_layer(1, "q")
    probe = LinearInputProbe(public.family, [layer])
    ids = random_ids(public)
    embeds = public.family.embedding()(ids)  # BART's table applies its own embed scale
    torch.testing.assert_close(probe.embedded_sequences(embeds)[layer], probe(ids)[layer])
