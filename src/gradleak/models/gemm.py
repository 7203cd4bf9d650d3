"""Float32 products ``rows @ weight.T`` through oneDNN where torch has it.

torch's CPU matmul calls MKL's sgemm, and MKL runs its AVX2 code on AMD processors: on the
project's AMD EPYC (Zen 5, AVX-512) a (4096 x 3072) by (3072 x 767) product took 240 ms of CPU
there against 93 ms through oneDNN's own AVX-512 kernels, which torch also ships (its
``mkldnn._linear_pointwise`` op, the one inductor's CPU code calls). Both accumulate in float32;
the results differ in the order of the sums only (7e-7 relative on that product), and oneDNN
gives the same rows whatever other rows share the call. Where the op is missing (a build without
oneDNN, another device, autograd needed) the product is torch's own.

:func:`onednn_matmuls` sends a model's own float32 products the same way, forward and backward,
for as long as it is entered: a random GPT-2's forward and backward pass on 32 sentences of 10
tokens took 2.32 s of CPU through MKL and 1.39 s so (gradients 1.5e-6 apart, relative).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_available: bool | None = None


def linear(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Returns ``rows @ weight.T``: rows (..., in), weight (out, in), both float32 on the CPU
    for the oneDNN path, any dtype and device otherwise."""
    if not _onednn_applies(rows, weight):
        return rows @ weight.T
    flat = rows.reshape(-1, rows.shape[-1]).contiguous()
    try:
        out = _onednn(flat, weight.contiguous())
    except (RuntimeError, AttributeError):
        _disable()
        return rows @ weight.T
    return out.reshape(*rows.shape[:-1], weight.shape[0])


def _onednn(flat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(flat, weight, None, "none", [], "")


def _onednn_applies(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    global _available
    if _available is None:
        _available = torch.backends.mkldnn.is_available() and hasattr(
            torch.ops.mkldnn, "_linear_pointwise"
        )
    return (
        _available
        and rows.device.type == "cpu"
        and weight.device.type == "cpu"
        and rows.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and rows.shape[-1] == weight.shape[1]
        and rows.numel() > 0
        and not (torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad))
    )


def _disable() -> None:
    global _available
    _available = False


@contextmanager
def onednn_matmuls() -> Iterator[None]:
    """Within it, float32 CPU ``mm`` and ``addmm`` (a 1-D bias, no scaling) run through oneDNN,
    in the forward pass and in every backward pass run inside; other ops are left alone."""
    with _OneDNNMatmuls() if _onednn_applies_anywhere() else nullcontext():
        yield


def _onednn_applies_anywhere() -> bool:
    probe = torch.empty(1, 1)
    return _onednn_applies(probe, probe)


class _OneDNNMatmuls(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.mm.default and _plain(*args):
            return self._product(func, args, kwargs, args[0], args[1], None)
        if func is torch.ops.aten.addmm.default and not kwargs and _plain(*args[:3]):
            bias, rows, other = args[:3]
            if bias.dim() == 1 and bias.shape[0] == other.shape[1]:
                return self._product(func, args, kwargs, rows, other, bias.contiguous())
        return func(*args, **kwargs)

    @staticmethod
    def _product(func, args, kwargs, rows, other, bias):
        weight = other.T if other.T.is_contiguous() else other.T.contiguous()
        try:
            return torch.ops.mkldnn._linear_pointwise(
                rows.contiguous(), weight, bias, "none", [], ""
            )
        except RuntimeError:
            return func(*args, **kwargs)


def _plain(*tensors) -> bool:
    return all(
        isinstance(t, torch.Tensor)
        and t.dtype == torch.float32
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and t.dim() == 2
        for t in tensors
    )
