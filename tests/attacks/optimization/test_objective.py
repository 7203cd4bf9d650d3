"""The dummy batch reproduces the client's: at the true tokens the gradient distance is zero."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.optimization import GradientSelection, make_distance
from gradleak.attacks.optimization.decoding import NearestTokens, allowed_tokens
from gradleak.attacks.optimization.layout import DummyInputs, SequenceLayout, special_frame
from gradleak.attacks.optimization.objective import GradientObjective, attack_mode
from gradleak.attacks.optimization.selector import drop_null, select_targets

TEXTS = ("the cat sat on the mat", "a dog barked")
CASES = [
    ("bert", "seq_class"),
    ("gpt2", "seq_class"),
    ("llama", "seq_class"),
    ("gpt2", "next_token"),
    ("llama", "next_token"),
]


def build(public, update, texts, distance="cos", selection="exposed"):
    """Returns (objective, true free embeddings, classes, views); call it in attack mode."""
    gradients = update.gradients()
    views = GradientSelection.parse(selection).views(public.family, gradients.keys())
    views, targets, _ = drop_null(views, select_targets(views, gradients))
    prefix, suffix = special_frame(public.tokenizer)
    ids = [public.tokenizer(t)["input_ids"] for t in texts]
    layout = SequenceLayout(
        tuple(len(i) for i in ids),
        prefix,
        suffix,
        pad_id=public.tokenizer.pad_token_id,
        left_pad=public.family.causal,
    )
    embedding = public.family.embedding()
    decoder = NearestTokens(
        embedding.weight, allowed_tokens(public.tokenizer, embedding.num_embeddings)
    )
    inputs = DummyInputs(layout, embedding)
    objective = GradientObjective(
        public.model,
        views,
        targets,
        make_distance(distance),
        inputs,
        task=public.task,
        decoder=decoder,
    )
    free = torch.zeros(inputs.free_shape)
    for row, seq in enumerate(ids):
        core = seq[len(prefix) : len(seq) - len(suffix)]
        free[row, : len(core)] = embedding.weight[core].detach()
    return objective, free, torch.tensor([1, 0][: len(texts)]), views


@pytest.mark.parametrize(("family", "task"), CASES)
def test_distance_vanishes_at_the_true_batch(tiny_models, make_update, family, task):
    public = tiny_models(family, task)
    update = make_update(public, TEXTS, (1, 0) if task == "seq_class" else None)
    with attack_mode(public.model, [n for n in update.names]):
        objective, free, classes, _ = build(public, update, TEXTS)
        assert float(objective(free, classes).detach()) == pytest.approx(0.0, abs=1e-5)
        batched = objective.batch(torch.stack([free, free + 0.3 * torch.randn_like(free)]), classes)
        assert float(batched[0]) == pytest.approx(0.0, abs=1e-5)
        assert float(batched[1]) > 1e-3


@pytest.mark.parametrize("distance", ["cos", "tag", "l2", "global_cos"])
def test_batched_scoring_equals_the_single_path(tiny_models, make_update, distance):
    public = tiny_models("gpt2")
    update = make_update(public, TEXTS[:1])
    with attack_mode(public.model, update.names):
        objective, free, classes, _ = build(public, update, TEXTS[:1], distance=distance)
        candidates = free + 0.5 * torch.randn(
            (5, *free.shape), generator=torch.Generator().manual_seed(0)
        )
        single = torch.stack([objective(c, classes).detach() for c in candidates])
        vmapped = objective.batch(candidates, classes)
        objective.chunk = 1  # one by one, as for large selections
        looped = objective.batch(candidates, classes)
    torch.testing.assert_close(vmapped, single, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(looped, single, rtol=1e-4, atol=1e-9)


def test_attack_mode_restores_the_model(tiny_models):
    public = tiny_models("llama")
    model = public.model
    before = (
        {n: p.requires_grad for n, p in model.named_parameters()},
        model.config._attn_implementation,
    )
    with attack_mode(model, [public.family.linear_layer(0, "q").weight_name]):
        assert (
            model.config._attn_implementation == "eager"
        )  # fused CPU attention has no double backward
        assert sum(p.requires_grad for p in model.parameters()) == 1
    assert (
        {n: p.requires_grad for n, p in model.named_parameters()},
        model.config._attn_implementation,
    ) == before


def test_layout_places_special_tokens_and_padding(tiny_models):
    public = tiny_models("bert")
    prefix, suffix = special_frame(public.tokenizer)
    assert (prefix, suffix) == ((101,), (102,))
    assert special_frame(tiny_models("gpt2").tokenizer) == ((), ())
    layout = SequenceLayout((5, 3), prefix, suffix, pad_id=0)
    ids, slot, mask = layout.grid()
    assert ids.tolist() == [[101, -1, -1, -1, 102], [101, -1, 102, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert layout.free_lengths == (3, 1)
    left = SequenceLayout((4, 2), pad_id=7, left_pad=True)
    assert left.grid()[0].tolist() == [[-1, -1, -1, -1], [7, 7, -1, -1]]
    assert left.position_ids().tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
