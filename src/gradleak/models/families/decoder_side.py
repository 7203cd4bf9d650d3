"""An encoder-decoder's decoder, seen as a causal family of its own.

A sequence-to-sequence client trains the decoder on its target shifted right: the decoder's start
token, then every target token but the last. Each decoder block runs causal self-attention over
those rows, then cross-attention (its query from the decoder's rows, its key and value from the
encoder's output), then its MLP. So block 0's self-attention q/k/v read one row per (token,
position) (BART: learned positions from the table's offset 2; T5: the token alone, offsets enter
as a bias), and block 0's cross-attention query reads the decoder's prefix after self-attention
and nothing of the encoder: the input a prefix search tests whole prefixes with (role
``cross_q``). Every later input (the MLP's, block 1's) also depends on the encoder's output.

The probe runs the decoder stack alone. Cross-attention runs only where encoder states are
given, so one zero row stands in for them: the probe stops at block 0's cross-attention query,
before they are read.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import nn

from gradleak.models.families.base import LinearLayer, ModuleSlot
from gradleak.models.families.derived import DerivedFamily
from gradleak.models.families.relative import T5Family

#: The role of a decoder block's cross-attention query (the decoder's rows; its key and value
#: read the encoder's).
CROSS_QUERY = "cross_q"


class DecoderSide(DerivedFamily):
    """The decoder of an encoder-decoder: causal blocks, plus each block's cross-attention query.

    A subclass names the decoder stack, its block list and the query inside a block.
    """

    causal = True
    #: The decoder stack inside the bare transformer, its blocks, and a block's cross-attention
    #: query (relative to the block).
    decoder_path: ClassVar[str] = "decoder"
    blocks_path: ClassVar[str]
    cross_query_path: ClassVar[str]

    def blocks(self) -> nn.ModuleList:
        return cast(
            nn.ModuleList, self.base.get_submodule(f"{self.decoder_path}.{self.blocks_path}")
        )

    def cross_query(self, block: int) -> LinearLayer:
        """Returns block ``block``'s cross-attention query (role ``cross_q``)."""
        return self.linear_layer(block, CROSS_QUERY)

    def start_token(self) -> int:
        """Returns the token every decoder input starts with (public: the model's config)."""
        start = getattr(self.config, "decoder_start_token_id", None)
        if start is None:
            raise ValueError(f"{self.name}'s config names no decoder_start_token_id")
        return int(start)

    def probe_forward(self, **inputs: Any) -> Any:
        inputs.pop("decoder_inputs_embeds", None)
        reference = inputs.get("input_ids")
        if reference is None:
            reference = inputs["inputs_embeds"]
        weight = self.embedding().weight
        memory = torch.zeros(reference.shape[0], 1, weight.shape[1], dtype=weight.dtype)
        decoder = self.base.get_submodule(self.decoder_path)
        return decoder(encoder_hidden_states=memory.to(weight.device), **inputs)

    def _collect_linear_layers(self) -> dict[tuple[int, str], LinearLayer]:
        layers = super()._collect_linear_layers()
        for index, block in enumerate(self.blocks()):
            slot = ModuleSlot(block.get_submodule(self.cross_query_path))
            layers[(index, CROSS_QUERY)] = self._describe(index, CROSS_QUERY, slot)
        return layers


class BartDecoderSide(DecoderSide):
    """BART's decoder: learned positions from the table's offset, a LayerNorm on the embedding
    sum; its position table computes positions from the input's shape (placed by the probe)."""

    name = "bart-decoder"
    model_types: ClassVar[tuple[str, ...]] = ()
    positions = "learned"
    takes_position_ids = False
    blocks_path = "layers"
    cross_query_path = "encoder_attn.q_proj"

    def position_embedding(self) -> nn.Embedding:
        return cast(nn.Embedding, self.base.get_submodule("decoder.embed_positions"))

    def position_offset(self) -> int:
        return int(getattr(self.position_embedding(), "offset", 0))


class T5DecoderSide(DecoderSide, T5Family):
    """T5's decoder: relative positions (a bias inside attention), RMSNorm inside each block."""

    name = "t5-decoder"
    model_types: ClassVar[tuple[str, ...]] = ()
    positions = "relative"
    blocks_path = "block"
    cross_query_path = "layer.1.EncDecAttention.q"

    def probe_forward(self, **inputs: Any) -> Any:
        # The decoder places relative positions itself, from its cache.
        inputs.pop("position_ids", None)
        return super().probe_forward(**inputs)
