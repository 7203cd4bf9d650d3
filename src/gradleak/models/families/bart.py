"""BART: an encoder-decoder whose encoder is attacked as a BERT-like encoder.

The encoder's block-0 rows are ``layernorm_embedding(scale * token + position)``: (token,
position) rows as BERT's, with learned positions from offset 2 (the table's own ``offset``) and no
token types. The encoder computes its positions from the input's shape, so the probe places them
at the position table. The classification head reads the decoder's last block at the EOS
position, so the encoder's last block is not pooled. The token table is shared with the decoder,
whose gradient it also holds. For classification the decoder's block 0 confirms what the
encoder certified (:mod:`gradleak.attacks.dager.decoder_check`); a sequence-to-sequence client
trains the decoder on its own target, which is searched on the decoder's side
(:mod:`gradleak.models.families.decoder_side`, :mod:`gradleak.attacks.dager.seq2seq`).
"""

from __future__ import annotations

from typing import cast

from torch import nn

from gradleak.errors import UnsupportedFamilyError
from gradleak.models.families.base import ArchitectureFamily, LinearLayer, ModuleSlot
from gradleak.models.families.derived import DerivedFamily


class BartFamily(DerivedFamily):
    """BART (``model_type`` bart): the encoder's blocks; the decoder's block 0 confirms."""

    name = "bart"
    model_types = ("bart",)
    causal = False
    encoder_decoder = True
    positions = "learned"
    takes_position_ids = False
    last_block_pooled = False
    head_names = ("classification_head",)

    def blocks(self) -> nn.ModuleList:
        if not hasattr(self.base, "encoder"):
            raise UnsupportedFamilyError(
                f"{type(self.model).__name__} is BART's decoder alone; gradleak attacks BART "
                "as an encoder-decoder, for classification (seq_class) or sequence-to-sequence "
                "training (seq2seq)."
            )
        return cast(nn.ModuleList, self.base.get_submodule("encoder.layers"))

    def position_embedding(self) -> nn.Embedding:
        return cast(nn.Embedding, self.base.get_submodule("encoder.embed_positions"))

    def position_offset(self) -> int:
        return int(getattr(self.position_embedding(), "offset", 0))

    def embedding_norm(self) -> nn.Module:
        return self.base.get_submodule("encoder.layernorm_embedding")

    def decoder_side(self) -> ArchitectureFamily:
        from gradleak.models.families.decoder_side import BartDecoderSide

        return BartDecoderSide(self.model)

    def decoder_token_layers(self) -> tuple[LinearLayer, ...]:
        attention = self.base.get_submodule("decoder.layers.0.self_attn")
        return tuple(
            self._describe(0, role, ModuleSlot(attention.get_submodule(f"{role}_proj")))
            for role in ("q", "k", "v")
        )
