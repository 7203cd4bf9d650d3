"""Test helpers shared across test modules: tiny model specs and reference computations."""

from __future__ import annotations

import torch

TINY = {
    "gpt2": "random:gpt2?n_layer=4&n_embd=32&n_head=2&n_positions=64",
    "llama": "random:llama?num_hidden_layers=4&hidden_size=32&intermediate_size=64"
    "&num_attention_heads=4&num_key_value_heads=2",
    "bert": (
        "random:bert?num_hidden_layers=4&hidden_size=32&intermediate_size=64&num_attention_heads=2"
    ),
    "albert": "random:albert?num_hidden_layers=4&hidden_size=32&intermediate_size=64"
    "&num_attention_heads=2&embedding_size=12",
    "bart": "random:bart?encoder_layers=3&decoder_layers=2&d_model=32&encoder_ffn_dim=64"
    "&decoder_ffn_dim=64&encoder_attention_heads=2&decoder_attention_heads=2",
}


def hooked_inputs(model, layers, **inputs):
    """Returns each layer's input as seen by a plain forward hook on the full task model (the
    ``layer.call``-th call of a module shared across depth)."""
    seen, calls = {}, {}

    def hook(module, args, layer):
        calls[layer] = calls.get(layer, -1) + 1
        if calls[layer] == layer.call:
            seen[layer] = args[0]

    handles = [
        model.get_submodule(layer.module_name).register_forward_pre_hook(
            lambda module, args, layer=layer: hook(module, args, layer)
        )
        for layer in layers
    ]
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    return seen


def probed_layers(family):
    """Returns the linear layers of blocks 0, 1 and the deepest block."""
    deep = family.num_blocks - 1
    return [layer for layer in family.linear_layers() if layer.block in (0, 1, deep)]


def assert_rows_close(
    got: torch.Tensor, expected: torch.Tensor, *, rel: float = 1e-5, msg: str = ""
) -> None:
    """Asserts each row of ``got`` equals ``expected`` up to float error relative to the row's
    norm."""
    got, expected = got.double(), expected.double()
    error = (got - expected).norm(dim=-1) / expected.norm(dim=-1).clamp_min(1e-12)
    assert error.max().item() < rel, f"{msg}: relative row error {error.max().item():.2e}"
