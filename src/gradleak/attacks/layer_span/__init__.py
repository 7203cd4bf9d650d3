"""Exact inversion from the gradient of any single exposed linear layer (decoders)."""

from gradleak.attacks.layer_span.attack import LayerSpan, LayerSpanConfig, choose_layer

__all__ = ["LayerSpan", "LayerSpanConfig", "choose_layer"]
