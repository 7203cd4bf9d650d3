"""Gradient distances against the LAMP code's formulas, batched and single."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.optimization import (
    L2,
    CosinePerTensor,
    GlobalCosine,
    TagDistance,
    distance_names,
    make_distance,
)
from gradleak.errors import UnknownSpecError


def lamp_grad_dist(grads1, grads2, loss, tag_factor=0.01):
    """LAMP's utilities.grad_dist, transcribed."""
    ret, n_g = 0.0, 0
    for g1, g2 in zip(grads1, grads2, strict=False):
        if loss == "cos":
            ret += 1.0 - (g1 * g2).sum() / (g1.view(-1).norm(p=2) * g2.view(-1).norm(p=2))
        elif loss == "dlg":
            ret += (g1 - g2).square().sum()
        elif loss == "tag":
            ret += (g1 - g2).square().sum() + tag_factor * torch.abs(g1 - g2).sum()
        n_g += 1
    return ret / n_g if loss == "cos" else ret


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    targets = [
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.randn(5, generator=g, dtype=torch.float64),
    ]
    candidates = [
        torch.randn(6, 4, 3, generator=g, dtype=torch.float64),
        torch.randn(6, 5, generator=g, dtype=torch.float64),
    ]
    return candidates, targets


@pytest.mark.parametrize(
    ("distance", "loss"), [(L2(), "dlg"), (TagDistance(0.01), "tag"), (CosinePerTensor(), "cos")]
)
def test_distances_match_the_lamp_code(tensors, distance, loss):
    candidates, targets = tensors
    got = distance(candidates, targets)
    expected = torch.stack(
        [lamp_grad_dist([c[k] for c in candidates], targets, loss) for k in range(6)]
    )
    torch.testing.assert_close(got, expected)


def test_global_cosine_is_one_cosine_over_all_entries(tensors):
    candidates, targets = tensors
    flat_c = torch.cat([c.reshape(6, -1) for c in candidates], dim=1)
    flat_t = torch.cat([t.reshape(-1) for t in targets])
    expected = 1 - torch.nn.functional.cosine_similarity(flat_c, flat_t[None], dim=1)
    torch.testing.assert_close(GlobalCosine()(candidates, targets), expected)


def test_cosines_are_zero_at_the_target_and_ignore_scale(tensors):
    _, targets = tensors
    same = [3.0 * t[None] for t in targets]
    for distance in (CosinePerTensor(), GlobalCosine()):
        assert float(distance(same, targets)[0]) == pytest.approx(0.0, abs=1e-12)


def test_registry_builds_by_name_and_lists_the_choices():
    assert distance_names() == ["cos", "global_cos", "l2", "tag"]
    assert make_distance("tag", alpha=0.5) == TagDistance(0.5)
    assert make_distance("cos", alpha=0.5) == CosinePerTensor()
    with pytest.raises(UnknownSpecError, match="cos, global_cos, l2, tag"):
        make_distance("l3")


@pytest.mark.parametrize(
    ("distance", "loss"),
    [
        (L2(), "dlg"),
        (TagDistance(0.5), "tag"),
        (CosinePerTensor(), "cos"),
        (GlobalCosine(), None),
    ],
)
def test_fused_distances_have_the_plain_formulas_gradient(tensors, distance, loss):
    candidates, targets = tensors
    ours = [c[:1].clone().requires_grad_(True) for c in candidates]
    plain = [c[0].clone().requires_grad_(True) for c in candidates]
    (2.5 * distance(ours, targets)[0]).backward()  # an outer factor reaches the gradient too
    if loss is None:
        flat = torch.cat([p.reshape(-1) for p in plain])
        expected = 1 - torch.nn.functional.cosine_similarity(
            flat, torch.cat([t.reshape(-1) for t in targets]), dim=0
        )
    else:
        expected = lamp_grad_dist(plain, targets, loss, tag_factor=0.5)
    (2.5 * expected).backward()
    for got, want in zip(ours, plain, strict=True):
        torch.testing.assert_close(got.grad[0], want.grad)


def test_fused_distance_refuses_a_second_backward_pass(tensors):
    candidates, targets = tensors
    ours = [c[:1].clone().requires_grad_(True) for c in candidates]
    value = 3.0 * TagDistance(0.01)(ours, targets)[0]
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        value.backward()


@pytest.mark.parametrize("distance", [L2(), TagDistance(0.5), CosinePerTensor(), GlobalCosine()])
def test_fused_distances_differentiate_several_candidates_at_once(tensors, distance):
    candidates, targets = tensors
    batched = [c.clone().requires_grad_(True) for c in candidates]
    weights = torch.arange(1.0, 7.0, dtype=torch.float64)  # a different factor per candidate
    (weights * distance(batched, targets)).sum().backward()
    for k in range(6):
        single = [c[k : k + 1].clone().requires_grad_(True) for c in candidates]
        (weights[k] * distance(single, targets)[0]).backward()
        for got, want in zip(batched, single, strict=True):
            torch.testing.assert_close(got.grad[k], want.grad[0])
