"""How a client turns texts into model inputs; the loss itself is public
(:mod:`gradleak.models.task_loss`), so the attacks that recompute gradients use the same one.

Padding follows what real clients do: right padding (with EOS as the pad token when the
tokenizer has none, as for GPT-2) and an attention mask, always.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.models.loading import PublicModel
from gradleak.models.task_loss import example_losses, task_loss

__all__ = ["encode", "example_losses", "task_loss"]


def encode(
    public: PublicModel,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    targets: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Returns the tokenised, right-padded batch (input_ids, attention_mask, ...).

    For sequence-to-sequence training (task ``seq2seq``) the texts are the sources and
    ``labels`` holds the targets' ids (padding -100); each text is its own target where
    ``targets`` is None (reconstruction: BART's denoising objective, without the noise).
    """
    if public.tokenizer is None:
        raise ValueError(
            f"model {public.spec!r} has no tokenizer; give random models a tokenizer=PATH option"
        )
    inputs = dict(_tokenise(public, texts, max_length))
    if public.task == "seq2seq":
        encoded = _tokenise(public, texts if targets is None else targets, max_length)
        inputs.pop("token_type_ids", None)
        inputs["labels"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return inputs


def _tokenise(public: PublicModel, texts: Sequence[str], max_length: int | None):
    return public.tokenizer(
        list(texts),
        padding=True,
        truncation=max_length is not None,
        max_length=max_length,
        return_tensors="pt",
    )
