"""GPT-2: learned absolute positions, pre-LayerNorm, fused Q|K|V in one Conv1D.

GPT-2's Conv1D stores weights (in, out), the transpose of ``nn.Linear``; the fused ``c_attn``
holds Q, K and V side by side along the output axis, so each role is a slice of its columns.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, cast

import torch
from torch import nn

from gradleak.models.families.base import ArchitectureFamily, ModuleSlot, PreNormBlock


class GPT2Family(ArchitectureFamily):
    """GPT-2 and GPT-2-shaped decoders (``model_type`` gpt2)."""

    name = "gpt2"
    model_types = ("gpt2",)
    causal = True
    positions = "learned"
    transposed_weights = True

    def blocks(self) -> nn.ModuleList:
        return cast(nn.ModuleList, self.base.get_submodule("h"))

    def block_linears(self, block: nn.Module) -> dict[str, ModuleSlot]:
        c_attn = block.get_submodule("attn.c_attn")
        d = int(block.get_parameter("attn.c_attn.weight").shape[0])
        return {
            "q": ModuleSlot(c_attn, (0, d)),
            "k": ModuleSlot(c_attn, (d, 2 * d)),
            "v": ModuleSlot(c_attn, (2 * d, 3 * d)),
            "o": ModuleSlot(block.get_submodule("attn.c_proj")),
            "mlp_in": ModuleSlot(block.get_submodule("mlp.c_fc")),
            "mlp_out": ModuleSlot(block.get_submodule("mlp.c_proj")),
        }

    def embedding(self) -> nn.Embedding:
        return cast(nn.Embedding, self.base.get_submodule("wte"))

    def position_embedding(self) -> nn.Embedding:
        return cast(nn.Embedding, self.base.get_submodule("wpe"))

    def _embedding_modules_params(self) -> list[nn.Parameter]:
        return [*self.embedding().parameters(), *self.position_embedding().parameters()]

    def pre_norm_block(self, index: int) -> PreNormBlock | None:
        block = self.blocks()[index]
        attention: Any = block.get_submodule("attn")
        return PreNormBlock(
            attention_norm=cast(nn.LayerNorm, block.get_submodule("ln_1")),
            mlp_norm=cast(nn.LayerNorm, block.get_submodule("ln_2")),
            activation=_activation(block.get_submodule("mlp.act"), self.model.config),
            heads=int(attention.num_heads),
            scaling=float(attention.scaling),
        )


def _activation(module: nn.Module, config) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns the MLP's activation: GPT-2's ``gelu_new`` as torch's fused kernel of the same
    formula (one pass over the rows instead of eight), else the model's own module."""
    if getattr(config, "activation_function", None) == "gelu_new":
        return partial(nn.functional.gelu, approximate="tanh")
    return module
