"""ALBERT: a factorised embedding and one block shared across depth.

The embeddings are E wide and normalised there; ``embedding_hidden_mapping_in`` maps them to d
before block 0 (the map runs inside the model, so the probe's rows already have width d). Every
block runs the same module (one per group; ALBERT-base has one group), so the blocks listed here
repeat that module in the order the forward pass runs it, and each linear layer's gradient is the
sum over every depth: it spans the union of that layer's inputs at all depths.
"""

from __future__ import annotations

from typing import cast

from torch import nn

from gradleak.models.families.base import LinearLayer, ModuleSlot
from gradleak.models.families.derived import DerivedFamily


class AlbertFamily(DerivedFamily):
    """ALBERT: BERT's layout, E -> d embedding map, layer groups shared across depth."""

    name = "albert"
    model_types = ("albert",)
    causal = False
    positions = "learned"
    token_types = True

    def blocks(self) -> nn.ModuleList:
        if self._block_list is None:
            groups = cast(nn.ModuleList, self.base.get_submodule("encoder.albert_layer_groups"))
            depth = int(getattr(self.config, "num_hidden_layers", len(groups)))
            per_group = depth / len(groups)  # as AlbertTransformer picks a group per depth
            self._block_list = nn.ModuleList(
                layer
                for index in range(depth)
                for layer in cast(nn.ModuleList, groups[int(index / per_group)].albert_layers)
            )
        return self._block_list

    def embedding_projection(self) -> nn.Module:
        return self.base.get_submodule("encoder.embedding_hidden_mapping_in")

    def pooled_mlp(self) -> list[LinearLayer]:
        # The shared block's gradient sums every depth's rows; the pooler reads the [CLS] rows
        # of the last depth alone, one per sequence.
        pooler = getattr(self.base, "pooler", None)
        if not isinstance(pooler, nn.Linear):
            return []
        return [self._describe(self.num_blocks - 1, "head", ModuleSlot(pooler))]
