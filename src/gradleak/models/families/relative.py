"""Encoders whose block-0 rows carry no position: relative positions inside attention only.

DeBERTa-v2/v3 and T5 add no position embedding to the token rows; attention reads offsets
between positions (DeBERTa's disentangled position terms, T5's bucketed bias). The input of a
block-0 projection is a function of the token alone (DeBERTa: LayerNorm of its embedding; T5:
RMSNorm, without centring, of it), so block 0 yields the batch's bag of tokens and positions
come from the search (:mod:`gradleak.attacks.dager.unordered`).

T5 is an encoder-decoder. Its encoder is attacked like DeBERTa: its blocks are this family's
blocks, and the probe runs the model only until the encoder's hooked layers have their inputs.
For classification the decoder reads the shifted sentence, whose last token never enters it,
and its blocks past the first mix the encoder's output in through cross-attention, so the
encoder's input is where whole sentences are tested. A sequence-to-sequence client trains the
decoder on its own target, searched on the decoder's side
(:mod:`gradleak.models.families.decoder_side`).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from torch import nn

from gradleak.errors import UnsupportedFamilyError
from gradleak.models.families.base import ArchitectureFamily, LinearLayer, ModuleSlot
from gradleak.models.families.deberta_bias import ShortAttentionBias
from gradleak.models.families.derived import DerivedFamily


class DebertaV2Family(DerivedFamily):
    """DeBERTa-v2 and v3: relative attention, LayerNorm over the (token, token-type) embedding."""

    name = "deberta-v2"
    model_types = ("deberta-v2",)
    causal = False
    positions = "relative"
    token_types = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if getattr(self.config, "position_biased_input", False):
            raise UnsupportedFamilyError(
                "deberta-v2 with position_biased_input (absolute positions added to the input "
                "rows, as the library's default config does) is not supported: DeBERTa-v2 and "
                "v3 checkpoints set it false, and their relative positions are what the "
                "deberta-v2 family attacks"
            )
        self.short_bias = ShortAttentionBias(model)

    def probe_forward(self, **inputs: Any) -> Any:
        # The probe's candidates are short: their position terms need a few table rows of 512.
        with self.short_bias.active():
            return super().probe_forward(**inputs)

    def table_reading_roles(self) -> tuple[str, ...]:
        shared = getattr(self.config, "share_att_key", False)
        return ("q", "k") if shared and getattr(self.config, "relative_attention", False) else ()

    def block_linears(self, block: nn.Module) -> dict[str, ModuleSlot]:
        slots = super().block_linears(block)
        # Without shared attention keys, pos_key_proj and pos_query_proj project the relative
        # position table inside attention: no token row reaches them, so "o" is named here.
        slots["o"] = ModuleSlot(block.get_submodule("attention.output.dense"))
        return slots


class T5Family(DerivedFamily):
    """T5 (v1.0 ReLU and v1.1 gated-GELU MLPs): the encoder's blocks; RMSNorm inside each."""

    name = "t5"
    model_types: ClassVar[tuple[str, ...]] = ("t5",)
    causal = False
    encoder_decoder = True
    positions = "relative"
    head_names = ("classification_head",)

    def blocks(self) -> nn.ModuleList:
        return cast(nn.ModuleList, self.base.get_submodule("encoder.block"))

    def block_linears(self, block: nn.Module) -> dict[str, ModuleSlot]:
        slots = super().block_linears(block)
        # Gated variants name the gate's branch wi_0 (activated) and the linear branch wi_1.
        for path, module in block.named_modules():
            if path.endswith(".wi_0"):
                slots["mlp_gate"] = ModuleSlot(module)
                slots["mlp_in"] = ModuleSlot(block.get_submodule(path[: -len("0")] + "1"))
        return slots

    def decoder_side(self) -> ArchitectureFamily:
        from gradleak.models.families.decoder_side import T5DecoderSide

        return T5DecoderSide(self.model)

    def pooled_mlp(self) -> list[LinearLayer]:
        # The classifier pools the decoder's last state at the end-of-sequence token.
        decoder = cast(nn.ModuleList, self.base.get_submodule("decoder.block"))
        last = len(decoder) - 1
        slots = self.block_linears(decoder[last])
        roles = ("mlp_in", "mlp_gate", "mlp_out")
        return [self._describe(last, role, slots[role]) for role in roles if role in slots]
