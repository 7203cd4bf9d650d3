"""LLaMA-like decoders: RMSNorm, rotary positions inside attention, grouped-query attention.

Rotary embeddings act on queries and keys after the projections, so the input of a block-0
projection depends on the token alone, never on its position: layer 1 yields a bag of tokens.
"""

from __future__ import annotations

from typing import cast

from torch import nn

from gradleak.models.families.base import ArchitectureFamily, ModuleSlot


class LlamaFamily(ArchitectureFamily):
    """LLaMA, Mistral, Qwen2/3 and SmolLM (separate q/k/v/o and gated MLP projections)."""

    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    causal = True
    positions = "rotary"

    def blocks(self) -> nn.ModuleList:
        return cast(nn.ModuleList, self.base.get_submodule("layers"))

    def block_linears(self, block: nn.Module) -> dict[str, ModuleSlot]:
        def at(path: str) -> ModuleSlot:
            return ModuleSlot(block.get_submodule(path))

        return {
            "q": at("self_attn.q_proj"),
            "k": at("self_attn.k_proj"),
            "v": at("self_attn.v_proj"),
            "o": at("self_attn.o_proj"),
            "mlp_gate": at("mlp.gate_proj"),
            "mlp_in": at("mlp.up_proj"),
            "mlp_out": at("mlp.down_proj"),
        }

    def embedding(self) -> nn.Embedding:
        return cast(nn.Embedding, self.base.get_submodule("embed_tokens"))
