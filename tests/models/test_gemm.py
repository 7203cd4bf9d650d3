"""``gemm.linear`` is ``rows @ weight.T`` whichever kernel computes it."""

from __future__ import annotations

import pytest
import torch

from gradleak.models import gemm


def _operands(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 70, 96, generator=generator, dtype=dtype)
    weight = torch.randn(40, 96, generator=generator, dtype=dtype)
    return rows, weight


def test_float32_product_matches_torch():
    rows, weight = _operands()
    ours = gemm.linear(rows, weight)
    expected = (rows.double() @ weight.double().T).float()
    assert ours.shape == (3, 70, 40)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_rows_do_not_depend_on_the_others_in_the_call():
    rows, weight = _operands()
    flat = rows.reshape(-1, 96)
    assert torch.equal(gemm.linear(flat[:17], weight), gemm.linear(flat, weight)[:17])


def test_transposed_weight_view_is_read_as_its_values():
    rows, weight = _operands()
    stored = weight.T.contiguous()  # (in, out): weight is a view of it
    assert torch.allclose(gemm.linear(rows, stored.T), rows @ weight.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_use_torch(dtype):
    rows, weight = _operands(dtype)
    assert torch.equal(gemm.linear(rows, weight), rows @ weight.T)


def test_autograd_is_kept():
    rows, weight = _operands()
    weight.requires_grad_(True)
    out = gemm.linear(rows, weight)
    out.sum().backward()
    assert weight.grad is not None
    assert torch.allclose(weight.grad, rows.reshape(-1, 96).sum(0).expand(40, -1), rtol=1e-5)


def test_a_failing_kernel_falls_back(monkeypatch):
    rows, weight = _operands()

    def broken(*args):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(gemm, "_onednn", broken)
    monkeypatch.setattr(gemm, "_available", True)
    assert torch.equal(gemm.linear(rows, weight), rows @ weight.T)
    assert gemm._available is False


def test_a_models_gradient_is_the_same_with_onednn_matmuls(tiny_models, monkeypatch):
    public = tiny_models("gpt2")
    ids = torch.randint(0, 1000, (3, 5), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 0])
    params = [p for p in public.model.parameters() if p.requires_grad]

    def gradient():
        loss = public.model(input_ids=ids, labels=labels).loss
        return torch.autograd.grad(loss, params)

    expected = gradient()
    routed = []
    product = gemm._OneDNNMatmuls._product

    def counted(*args):
        routed.append(args[0])
        return product(*args)

    monkeypatch.setattr(gemm._OneDNNMatmuls, "_product", staticmethod(counted))
    with gemm.onednn_matmuls():
        ours = gradient()
    assert routed  # forward and backward products went through oneDNN
    assert torch.ops.aten.mm.default in routed
    for mine, theirs in zip(ours, expected, strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-6)
