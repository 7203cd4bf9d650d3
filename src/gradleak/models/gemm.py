"""Float32 products ``rows @ weight.T`` through oneDNN where torch has it.

torch's CPU matmul calls MKL's sgemm, and MKL runs its AVX2 code on AMD processors: on the
project's AMD EPYC (Zen 5, AVX-512) a (4096 x 3072) by (3072 x 767) product took 240 ms of CPU
there against 93 ms through oneDNN's own AVX-512 kernels, which torch also ships (its
``mkldnn._linear_pointwise`` op, the one inductor's CPU code calls). Both accumulate in float32;
the results differ in the order of the sums only (7e-7 relative on that product), and oneDNN
gives the same rows whatever other rows share the call. Where the op is missing (a build without
oneDNN, another device, autograd needed) the product is torch's own.
"""

from __future__ import annotations

import torch

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
