"""LLaMA-shaped decoders: rotary positions inside attention, RMSNorm, gated MLP.

Rotary embeddings act on queries and keys after the projections, so the input of a block-0
projection depends on the token alone, never on its position: layer 1 yields a bag of tokens.
What differs between these architectures never reaches a linear layer's input unseen: Gemma's
embedding scale and (1 + w) RMSNorm, Gemma2's extra norms and Qwen3's q/k norms run inside the
model's own modules, which the probe calls; Phi-3's fused ``qkv_proj`` and ``gate_up_proj`` are
sliced per role from the module tree.
"""

from __future__ import annotations

from gradleak.models.families.derived import DerivedFamily


class LlamaFamily(DerivedFamily):
    """LLaMA, SmolLM, Mistral, Qwen2/3, Gemma, Gemma2 and Phi-3."""

    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")
    causal = True
    positions = "rotary"
