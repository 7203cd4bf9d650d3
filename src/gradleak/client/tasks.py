"""How a client turns texts into model inputs and a loss, for each task.

Padding follows what real clients do: right padding (with EOS as the pad token when the
tokenizer has none, as for GPT-2) and an attention mask, always.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.models.loading import PublicModel


def encode(
    public: PublicModel, texts: Sequence[str], *, max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Returns the tokenised, right-padded batch (input_ids, attention_mask, ...)."""
    if public.tokenizer is None:
        raise ValueError(
            f"model {public.spec!r} has no tokenizer; give random models a tokenizer=PATH option"
        )
    return dict(
        public.tokenizer(
            list(texts),
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
        )
    )


def task_loss(
    public: PublicModel, inputs: dict[str, torch.Tensor], labels: Sequence[int] | None
) -> torch.Tensor:
    """Returns the client's training loss on one encoded batch."""
    device = public.family.embedding().weight.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if public.task == "next_token":
        targets = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        return public.model(**inputs, labels=targets).loss
    n = inputs["input_ids"].shape[0]
    label_tensor = torch.tensor(list(labels) if labels is not None else [0] * n, device=device)
    if label_tensor.numel() != n:
        raise ValueError(f"got {label_tensor.numel()} labels for {n} texts")
    return public.model(**inputs, labels=label_tensor).loss


def example_losses(
    public: PublicModel, inputs: dict[str, torch.Tensor], labels: Sequence[int] | None
) -> torch.Tensor:
    """Returns each sequence's own loss, shape (B,); their mean is the per-example-mean batch loss.

    DP-SGD clips per-example gradients, so each example's loss must not depend on the others.
    For classification the mean equals :func:`task_loss`; for next-token prediction each sequence
    averages over its own tokens, where the transformers loss averages over all tokens of the batch.
    """
    device = public.family.embedding().weight.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    logits = public.model(**inputs).logits.float()
    if public.task == "next_token":
        targets, mask = inputs["input_ids"][:, 1:], inputs["attention_mask"][:, 1:].to(logits.dtype)
        token_losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, reduction="none"
        )
        return (token_losses * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    n = inputs["input_ids"].shape[0]
    label_tensor = torch.tensor(list(labels) if labels is not None else [0] * n, device=device)
    if label_tensor.numel() != n:
        raise ValueError(f"got {label_tensor.numel()} labels for {n} texts")
    return torch.nn.functional.cross_entropy(logits, label_tensor, reduction="none")
