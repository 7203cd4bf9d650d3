"""BERT-like encoders: learned absolute positions, token types, post-LayerNorm.

The input of a block-0 projection is ``LayerNorm(word + position + token_type)``, so layer-1
candidates are (token, token type) pairs per position.
"""

from __future__ import annotations

from typing import cast

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
        return cast(nn.ModuleList, self.base.get_submodule("encoder.layer"))

    def block_linears(self, block: nn.Module) -> dict[str, ModuleSlot]:
        def at(path: str) -> ModuleSlot:
            return ModuleSlot(block.get_submodule(path))

        return {
            "q": at("attention.self.query"),
            "k": at("attention.self.key"),
            "v": at("attention.self.value"),
            "o": at("attention.output.dense"),
            "mlp_in": at("intermediate.dense"),
            "mlp_out": at("output.dense"),
        }

    def embedding(self) -> nn.Embedding:
        return cast(nn.Embedding, self.base.get_submodule("embeddings.word_embeddings"))

    def position_embedding(self) -> nn.Embedding:
        return cast(nn.Embedding, self.base.get_submodule("embeddings.position_embeddings"))

    def embedding_norm(self) -> nn.Module:
        return self.base.get_submodule("embeddings.LayerNorm")

    def constant_embedding(self) -> torch.Tensor:
        return self.base.get_parameter("embeddings.token_type_embeddings.weight").detach()[0]

    def _embedding_modules_params(self) -> list[nn.Parameter]:
        return list(self.base.get_submodule("embeddings").parameters())
