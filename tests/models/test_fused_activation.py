"""GPT-2's ``gelu_new`` in one kernel: the same values to float rounding, switched back after."""

from __future__ import annotations

import torch
from transformers.activations import NewGELUActivation

from gradleak.models import load_model
from gradleak.models.fused_activation import fused_activations

GPT2 = "random:gpt2?n_layer=2&n_embd=64&n_head=4&n_positions=32&vocab_size=500"


def test_fused_gelu_equals_the_models_and_is_restored():
    model = load_model(GPT2).family.model
    activations = [m for m in model.modules() if isinstance(m, NewGELUActivation)]
    x = torch.linspace(-8, 8, 4001)
    before = activations[0](x)
    with fused_activations(model) as switched:
        fused = activations[0](x)
        assert switched == len(activations) == 2
        assert all("forward" in m.__dict__ for m in activations)
    torch.testing.assert_close(fused, before, rtol=1e-6, atol=1e-6)
    assert not any("forward" in m.__dict__ for m in activations)
    assert torch.equal(activations[0](x), before)
