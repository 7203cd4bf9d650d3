"""The span machinery against brute-force linear algebra."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.span import (
    drops_at,
    estimate_rank,
    rank_above_bulk,
    span_basis,
    stacked_svd,
)
from gradleak.attacks.thresholds import largest_gap_split


def low_rank_gradient(rows: int, d: int, out: int, *, noise: float = 1e-9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=g, dtype=torch.float64)
    dy = torch.randn(rows, out, generator=g, dtype=torch.float64)
    grad = dy.T @ x + noise * torch.randn(out, d, generator=g, dtype=torch.float64)
    return x, grad


def test_rank_is_the_number_of_input_rows():
    x, grad = low_rank_gradient(17, 64, 48)
    basis = span_basis([grad])
    assert basis.rank == 17 == torch.linalg.matrix_rank(x).item()
    assert basis.gap_decades > 5 and not basis.saturated


def test_true_rows_have_zero_residual_and_random_rows_do_not():
    x, grad = low_rank_gradient(10, 64, 64)
    basis = span_basis([grad])
    assert basis.residuals(x).max() < 1e-5
    random = torch.randn(200, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = (1 - 10 / 64) ** 0.5  # a random direction keeps this share of its norm off the span
    assert abs(basis.residuals(random).median().item() - expected) < 0.1
    combo = torch.tensor([0.3, -2.0] + [0.0] * 8, dtype=torch.float64) @ x
    assert basis.residuals(combo[None]).item() < 1e-5


def test_stacking_sees_rows_one_gradient_misses():
    x, grad = low_rank_gradient(8, 32, 32)
    blind = grad - grad @ x[:1].T @ x[:1] / x[0].dot(x[0])  # remove the first row's direction
    assert span_basis([blind]).residuals(x[:1]).item() > 1e-3
    assert span_basis([blind, grad]).residuals(x[:1]).item() < 1e-5


def test_full_rank_spectrum_is_saturated():
    _, grad = low_rank_gradient(100, 32, 64, noise=0.0)
    basis = span_basis([grad])
    assert basis.saturated and basis.rank == 32


def fading_gradient(rows: int, d: int, out: int, *, weakest: float, seed: int = 0):
    """A float32 gradient whose rows reach the layer with gradients fading from 1 to
    ``weakest``, as a shallow model's last block sees most positions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=g)
    weights = torch.logspace(0, torch.log10(torch.tensor(weakest)).item(), rows)
    dy = torch.randn(rows, out, generator=g) * weights[:, None]
    return x, dy.T @ x  # float32 products: the tail is float32's own rounding bulk


def test_a_signal_fading_into_float32_noise_is_not_read_as_saturated():
    x, grad = fading_gradient(60, 128, 96, weakest=3e-7)
    assert estimate_rank(torch.linalg.svdvals(grad.double()))[1] == 0.0  # no clean drop
    basis = span_basis([grad])
    assert not basis.saturated
    assert 54 <= basis.rank <= 60
    strong = x[:40]  # rows well above the bulk lie in the span
    assert basis.residuals(strong).max() < 1e-2
    assert basis.residuals(torch.randn(50, 128)).min() > 0.3


def test_a_full_rank_spectrum_has_no_bulk():
    _, grad = fading_gradient(200, 64, 96, weakest=1e-2)
    assert rank_above_bulk(torch.linalg.svdvals(grad.double())) is None
    assert span_basis([grad]).saturated


def test_zero_gradient_has_rank_zero():
    assert estimate_rank(torch.zeros(5)) == (0, 0.0)
    basis = span_basis([torch.zeros(8, 16)])
    assert basis.rank == 0 and basis.residuals(torch.randn(3, 16)).allclose(torch.ones(3))


def test_overrides():
    _, grad = low_rank_gradient(12, 64, 64)
    assert span_basis([grad], rank=5).rank == 5
    assert span_basis([grad], rank_tol=1e-3).rank == 12


def test_largest_gap_split():
    residuals = torch.tensor([3e-7, 5e-7, 1e-6, 0.02, 0.3, 0.5])
    split = largest_gap_split(residuals)
    assert split.count == 3
    assert split.low == pytest.approx(1e-6) and split.high == pytest.approx(0.02)
    assert 1e-6 < split.threshold() <= 1e-4
    assert largest_gap_split(torch.tensor([0.1, 0.2, 0.3])) is None


def test_a_bounded_residual_is_exact_where_it_may_pass_and_a_lower_bound_above_it_elsewhere():
    x, grad = low_rank_gradient(40, 192, 192)
    basis = span_basis([grad])
    g = torch.Generator().manual_seed(3)
    # True rows, rows barely off the span, and rows spread over the whole complement.
    near = x[:20] + 1e-3 * torch.randn(20, 192, generator=g, dtype=torch.float64)
    rows = torch.cat([x, near, torch.randn(300, 192, generator=g, dtype=torch.float64)])
    full = basis.residuals(rows)
    for below in (1e-4, 2e-3, 0.3):
        bounded = basis.residuals(rows, below=below)
        may_pass = full < below * 1.01
        assert torch.allclose(bounded[may_pass], full[may_pass], rtol=1e-5, atol=0)
        assert (bounded[~may_pass] >= below).all()
        assert (bounded <= full * (1 + 1e-5)).all()
    # The wrong rows are settled by the sketch alone: most keep only their lower bound.
    assert (basis.residuals(rows, below=1e-3)[60:] < full[60:] * 0.9).float().mean() > 0.5


def test_off_span_parts_have_the_residuals_as_norms():
    x, grad = low_rank_gradient(6, 16, 20)
    basis = span_basis([grad])
    rows = torch.cat([x, torch.randn(4, 16, dtype=torch.float64)])
    torch.testing.assert_close(basis.off_span(rows).norm(dim=-1), basis.residuals(rows))


def test_a_stack_is_decomposed_once_until_a_tensor_changes():
    fused = torch.randn(96, 32)
    first = stacked_svd([fused[:48], fused[48:]])
    # Views sliced again from the same weight hit the cache.
    assert stacked_svd([fused[:48], fused[48:]])[1] is first[1]
    fused.mul_(2.0)
    fused[0].add_(1.0)
    again = stacked_svd([fused[:48], fused[48:]])
    assert again[1] is not first[1]
    assert not torch.allclose(again[1], first[1])


def test_drops_at_reads_a_clear_drop_that_is_not_the_largest():
    # A weak true direction sits between the bulk and float noise: the largest drop is above it,
    # but the drop right after it is clear too (a peeled T5 span, B = 16).
    spectrum = torch.tensor([1.0, 0.5, 10**-2.8, 10**-4.9, 10**-5.0], dtype=torch.float64)
    assert estimate_rank(spectrum)[0] == 2
    assert drops_at(spectrum, 3) and drops_at(spectrum, 2)
    assert not drops_at(spectrum, 4) and not drops_at(spectrum, 1)
    assert not drops_at(spectrum, 0) and not drops_at(spectrum, len(spectrum))
