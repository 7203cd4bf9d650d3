"""Decoders that are not LLaMA-shaped: the facts each declares beyond its module tree.

GPT-NeoX (Pythia) rotates part of each head and runs attention and MLP in parallel from the
same block input; OPT adds learned positions (the model shifts its ids by 2 itself) and uses a
plain fc1/fc2 MLP; Falcon runs in parallel too, with multi-query attention.
"""

from __future__ import annotations

from gradleak.models.families.derived import DerivedFamily


class GPTNeoXFamily(DerivedFamily):
    """GPT-NeoX and Pythia: ``query_key_value`` holds q, k and v per head, interleaved."""

    name = "gpt_neox"
    model_types = ("gpt_neox",)
    causal = True
    positions = "rotary"
    fused_qkv_layout = "interleaved"


class OPTFamily(DerivedFamily):
    """OPT: learned positions, ReLU fc1/fc2 MLP."""

    name = "opt"
    model_types = ("opt",)
    causal = True
    positions = "learned"


class FalconFamily(DerivedFamily):
    """Falcon: multi-query attention (all queries, then one key and one value head); the newer
    grouped layout interleaves each group's queries, key and value."""

    name = "falcon"
    model_types = ("falcon",)
    causal = True
    positions = "rotary"

    def qkv_layout(self) -> str:
        multi_query = bool(getattr(self.config, "multi_query", False))
        grouped = bool(getattr(self.config, "new_decoder_architecture", False))
        return "contiguous" if multi_query and not grouped else "interleaved"
