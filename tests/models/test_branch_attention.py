"""The probe's branch (its attention kernel, block 0's projections run once, GPT-2's GELU in one
kernel) gives the rows the model's own masked attention gives."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conformance import DECODERS, TINY_SHAPES, spec_for

from gradleak.models import LinearInputProbe, load_model
from gradleak.models import probe as probe_module
from gradleak.models.branch_attention import branch_attention, projected_once


def _block_zero_probe(public) -> LinearInputProbe:
    family = public.family
    roles = [r for r in ("o", "mlp_in", "mlp_out") if family.has_linear_layer(0, r)]
    return LinearInputProbe(family, [family.linear_layer(0, role) for role in roles])


@pytest.mark.parametrize("model_type", DECODERS)
def test_branch_rows_equal_the_models_masked_attention(model_type, monkeypatch):
    public = load_model(spec_for(model_type, TINY_SHAPES[0]), task="seq_class")
    probe = _block_zero_probe(public)
    generator = torch.Generator().manual_seed(7)
    _, state = probe.start(torch.randint(0, 5000, (5, 3), generator=generator))
    candidates = torch.randint(0, 5000, (11,), generator=generator)
    with branch_attention(public.family.model) as switched:
        pass
    ours = probe.branch(state, candidates)
    _plain_branch(monkeypatch)
    theirs = probe.branch(state, candidates)
    for layer, rows in theirs.items():
        assert ours[layer].shape == rows.shape == (5, 11, layer.in_features)
        gap = (ours[layer] - rows).norm(dim=-1) / rows.norm(dim=-1)
        assert float(gap.max()) < 1e-5, layer.key
    # Falcon computes its own attention: the switch is not taken there.
    assert switched == (model_type != "falcon")


def _plain_branch(monkeypatch) -> None:
    """Makes the probe's branch run the model as it is: masked attention, every projection, the
    model's own activation."""
    monkeypatch.setattr(probe_module, "branch_attention", lambda model: _kept(False))
    monkeypatch.setattr(probe_module, "projected_once", lambda modules: contextlib.nullcontext())
    monkeypatch.setattr(probe_module, "fused_activations", lambda model: _kept(0))


@contextlib.contextmanager
def _kept(value: bool):
    yield value


def test_a_window_shorter_than_the_prefix_goes_to_the_models_own_kernel(monkeypatch):
    spec = spec_for("mistral", TINY_SHAPES[0], extra="&sliding_window=2")
    public = load_model(spec, task="seq_class")
    probe = _block_zero_probe(public)
    generator = torch.Generator().manual_seed(3)
    _, state = probe.start(torch.randint(0, 5000, (2, 4), generator=generator))
    candidates = torch.randint(0, 5000, (5,), generator=generator)
    ours = probe.branch(state, candidates)
    _plain_branch(monkeypatch)
    theirs = probe.branch(state, candidates)
    for layer, rows in theirs.items():
        torch.testing.assert_close(ours[layer], rows)


class _CountingLinear(torch.nn.Linear):
    def __init__(self) -> None:
        super().__init__(4, 3)
        self.rows: list[int] = []

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        self.rows.append(len(rows))
        return super().forward(rows)


def test_a_projection_runs_once_only_on_equal_rows_and_is_restored():
    layer = _CountingLinear()
    equal = torch.randn(1, 5, 4).expand(6, 5, 4)
    different = torch.randn(6, 5, 4)
    with projected_once([layer]):
        for rows in (equal, different):
            expected = torch.nn.functional.linear(rows, layer.weight, layer.bias)
            torch.testing.assert_close(layer(rows), expected)
    assert "forward" not in layer.__dict__
    layer(different)
    assert layer.rows == [1, 6, 6]
