"""The selector picks exactly the intended tensors, for every family and mode."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.optimization import GradientSelection
from gradleak.attacks.optimization.selector import drop_null, select_targets
from gradleak.errors import GradientNotExposedError, UnknownSpecError


def everything(public):
    return [n for n, _ in public.model.named_parameters()]


def labels(views):
    return [v.label for v in views]


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_each_role_of_a_block_is_its_own_tensor(tiny_models, family):
    public = tiny_models(family)
    views = GradientSelection.parse("blocks=1 roles=q,v,mlp_out biases=no").views(
        public.family, everything(public)
    )
    expected = [public.family.linear_layer(1, r) for r in ("q", "v", "mlp_out")]
    assert [v.name for v in views] == [layer.weight_name for layer in expected]
    for view, layer in zip(
        views, expected, strict=True
    ):  # the view is the layer's gradient, slice and layout included
        grad = torch.randn(dict(public.model.named_parameters())[view.name].shape)
        taken = view.take(grad)
        torch.testing.assert_close(
            taken.T if layer.transposed else taken, layer.weight_gradient({view.name: grad})
        )


def test_gpt2_fused_qkv_is_sliced_not_shared(tiny_models):
    public = tiny_models("gpt2")
    d = public.family.hidden_size()
    views = GradientSelection.parse("blocks=0 roles=q,k,v").views(public.family, everything(public))
    assert labels(views) == [
        f"transformer.h.0.attn.c_attn.{p}[{r}]" for p in ("weight", "bias") for r in "qkv"
    ]
    grad = torch.arange(d * 3 * d, dtype=torch.float32).reshape(d, 3 * d)
    weights = [v.take(grad) for v in views if v.name.endswith("weight")]
    assert [w.shape for w in weights] == [(d, d)] * 3
    torch.testing.assert_close(torch.cat(weights, dim=1), grad)
    batched = views[0].take(torch.stack([grad, -grad]))  # a leading candidate axis is kept
    torch.testing.assert_close(batched[1], -weights[0])


def test_roles_without_blocks_include_parameters_outside_blocks(tiny_models):
    public = tiny_models("bert")
    names = [
        v.name
        for v in GradientSelection.parse("roles=head,embedding").views(
            public.family, everything(public)
        )
    ]
    assert names == [
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.LayerNorm.bias",
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    ]
    norms = GradientSelection.parse("blocks=2 roles=norm").views(public.family, everything(public))
    assert all(".layer.2." in v.name and "LayerNorm" in v.name for v in norms) and len(norms) == 4


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_token_embeddings_are_never_matched(tiny_models, family):
    public = tiny_models(family)
    table = next(
        n for n, p in public.model.named_parameters() if p is public.family.embedding().weight
    )
    for text in ("exposed", "all", "roles=embedding"):
        if (
            family == "llama" and text == "roles=embedding"
        ):  # rotary positions: the table is all there is
            with pytest.raises(UnknownSpecError, match="picks no matchable tensor"):
                GradientSelection.parse(text).views(public.family, everything(public))
            continue
        names = [
            v.name for v in GradientSelection.parse(text).views(public.family, everything(public))
        ]
        assert table not in names


def test_paper_mode_reproduces_the_ffn_output_quirk(tiny_models):
    public = tiny_models("bert")
    faithful = GradientSelection.parse("paper=ffn_output blocks=0").views(
        public.family, everything(public)
    )
    assert labels(faithful) == [
        "bert.encoder.layer.0.attention.output.dense.weight",
        "bert.encoder.layer.0.output.dense.weight",
    ]
    corrected = GradientSelection.parse("blocks=0 roles=mlp_out biases=no").views(
        public.family, everything(public)
    )
    assert labels(corrected) == ["bert.encoder.layer.0.output.dense.weight"]
    query = GradientSelection.parse("paper=attn_query layers=1,2").views(
        public.family, everything(public)
    )
    assert labels(query) == [f"bert.encoder.layer.{i}.attention.self.query.weight" for i in (1, 2)]
    layer = GradientSelection.parse("paper=layer_encoder blocks=3").views(
        public.family, everything(public)
    )
    assert len(layer) == 16 and all(".layer.3." in v.name for v in layer)


def test_paper_mode_on_other_families_says_so(tiny_models):
    public = tiny_models("gpt2")
    with pytest.raises(UnknownSpecError, match="BERT parameter names"):
        GradientSelection.parse("paper=attn_query").views(public.family, everything(public))


def test_naming_an_unshared_tensor_is_a_clear_error(tiny_models):
    public = tiny_models("llama")
    shared = [public.family.linear_layer(0, "q").weight_name]
    with pytest.raises(
        GradientNotExposedError, match=r"does not share.*self_attn.k_proj.*select=exposed"
    ):
        GradientSelection.parse("blocks=0 roles=q,k").views(public.family, shared)
    assert [
        v.name for v in GradientSelection.parse("exposed").views(public.family, shared)
    ] == shared


@pytest.mark.parametrize("text", ["roles=qq", "paper=ffn", "blocks=0 colour=red", "names="])
def test_bad_selections_are_refused(text):
    with pytest.raises(UnknownSpecError):
        GradientSelection.parse(text)


def test_out_of_range_blocks_are_refused(tiny_models):
    public = tiny_models("gpt2")
    with pytest.raises(UnknownSpecError, match="out of range"):
        GradientSelection.parse("blocks=9").views(public.family, everything(public))


@pytest.mark.parametrize(
    "text",
    ["exposed", "all", "blocks=0,1 roles=q,k biases=no", "paper=ffn_output blocks=0", "names=a,b"],
)
def test_selections_print_as_they_parse(text):
    assert str(GradientSelection.parse(text)) == text


def test_null_tensors_are_dropped(tiny_models, make_update):
    public = tiny_models("bert")
    update = make_update(public, ["the cat sat on the mat"])
    views = GradientSelection.parse("blocks=0 roles=q,k").views(public.family, update.names)
    kept, _, dropped = drop_null(views, select_targets(views, update.gradients()))
    # A softmax ignores a common shift of the scores: the key bias gradient is exactly zero.
    assert dropped == ["bert.encoder.layer.0.attention.self.key.bias"]
    assert len(kept) == 3
