"""LLaMA-like decoders: RMSNorm, rotary positions inside attention, grouped-query attention.

Rotary embeddings act on queries and keys after the projections, so the input of a block-0
projection depends on the token alone, never on its position: layer 1 yields a bag of tokens.
"""

from __future__ import annotations

from torch import nn

from gradleak.models.families.base import ArchitectureFamily, ModuleSlot


class LlamaFamily(ArchitectureFamily):
    """LLaMA, Mistral, Qwen2/3 and SmolLM (separate q/k/v/o and gated MLP projections)."""

    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    causal = True
    positions = "rotary"

    def blocks(self) -> nn.ModuleList:
        return self.base.layers

    def block_linears(self, block: nn.Module) -> dict[str, ModuleSlot]:
        attn, mlp = block.self_attn, block.mlp
        return {
            "q": ModuleSlot(attn.q_proj),
            "k": ModuleSlot(attn.k_proj),
            "v": ModuleSlot(attn.v_proj),
            "o": ModuleSlot(attn.o_proj),
            "mlp_gate": ModuleSlot(mlp.gate_proj),
            "mlp_in": ModuleSlot(mlp.up_proj),
            "mlp_out": ModuleSlot(mlp.down_proj),
        }

    def embedding(self) -> nn.Embedding:
        return self.base.embed_tokens
