"""BERT-like encoders: learned absolute positions, token types, post-LayerNorm.

The input of a block-0 projection is ``LayerNorm(word + position + token_type)``, so layer-1
candidates are (token, token type) pairs per position.
"""

from __future__ import annotations

import torch
from torch import nn

from gradleak.models.families.base import ArchitectureFamily, ModuleSlot


class BertFamily(ArchitectureFamily):
    """BERT and MiniLM (``model_type`` bert)."""

    name = "bert"
    model_types = ("bert",)
    causal = False
    positions = "learned"
    token_types = True

    def blocks(self) -> nn.ModuleList:
        return self.base.encoder.layer

    def block_linears(self, block: nn.Module) -> dict[str, ModuleSlot]:
        attn = block.attention
        return {
            "q": ModuleSlot(attn.self.query),
            "k": ModuleSlot(attn.self.key),
            "v": ModuleSlot(attn.self.value),
            "o": ModuleSlot(attn.output.dense),
            "mlp_in": ModuleSlot(block.intermediate.dense),
            "mlp_out": ModuleSlot(block.output.dense),
        }

    def embedding(self) -> nn.Embedding:
        return self.base.embeddings.word_embeddings

    def position_embedding(self) -> nn.Embedding:
        return self.base.embeddings.position_embeddings

    def embedding_norm(self) -> nn.Module:
        return self.base.embeddings.LayerNorm

    def constant_embedding(self) -> torch.Tensor:
        return self.base.embeddings.token_type_embeddings.weight.detach()[0]

    def _embedding_modules_params(self) -> list[nn.Parameter]:
        return list(self.base.embeddings.parameters())
