"""The training loss of each task, as both sides compute it.

The loss is public: the server knows the model and the task. The client trains on it, and the
attacks that recompute a sentence's own gradient (peeling, reading next-token targets) must
compute exactly the same thing, so both call this module. Inputs are right-padded with an
attention mask, as real clients do.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from gradleak.models.grad_scope import only_grad_for
from gradleak.models.loading import PublicModel

Inputs = dict[str, torch.Tensor]


def task_loss(public: PublicModel, inputs: Inputs, labels: Sequence[int] | None) -> torch.Tensor:
    """Returns the training loss on one encoded batch: the model's own loss for the task.

    Next-token prediction averages over every target of the batch (padding excluded);
    classification averages over the sequences, with ``labels`` (class 0 when None).
    """
    device = public.family.embedding().weight.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if public.task == "next_token":
        targets = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        return public.model(**inputs, labels=targets).loss
    return public.model(**inputs, labels=_class_labels(inputs, labels, device)).loss


def example_losses(
    public: PublicModel, inputs: Inputs, labels: Sequence[int] | None
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
    return torch.nn.functional.cross_entropy(
        logits, _class_labels(inputs, labels, device), reduction="none"
    )


def token_inputs(public: PublicModel, batch: Sequence[Sequence[int]]) -> Inputs:
    """Returns the right-padded model inputs of token-id sequences (``encode``'s, for ids)."""
    device = public.family.embedding().weight.device
    longest = max(len(ids) for ids in batch)
    pad = public.tokenizer.pad_token_id if public.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(batch), longest), pad, device=device)
    mask = torch.zeros_like(ids)
    for row, sentence in enumerate(batch):
        ids[row, : len(sentence)] = torch.tensor(list(sentence), device=device)
        mask[row, : len(sentence)] = 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in public.tokenizer.model_input_names:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def loss_gradient(
    public: PublicModel,
    batch: Sequence[Sequence[int]],
    label: int | None,
    names: Collection[str],
) -> dict[str, torch.Tensor]:
    """Returns the task loss's gradient on ``batch`` (every sequence with ``label``; None for
    next-token prediction) for the named parameters: what a client with these sentences shares."""
    inputs = token_inputs(public, batch)
    labels = None if label is None else [label] * len(batch)
    params = dict(public.model.named_parameters())
    names = list(names)
    with only_grad_for(public.model, set(names)), torch.enable_grad():
        loss = task_loss(public, inputs, labels)
        grads = torch.autograd.grad(loss, [params[name] for name in names], allow_unused=True)
    return {
        name: torch.zeros_like(params[name]) if g is None else g.detach()
        for name, g in zip(names, grads, strict=True)
    }


def _class_labels(
    inputs: Inputs, labels: Sequence[int] | None, device: torch.device
) -> torch.Tensor:
    n = inputs["input_ids"].shape[0]
    label_tensor = torch.tensor(list(labels) if labels is not None else [0] * n, device=device)
    if label_tensor.numel() != n:
        raise ValueError(f"got {label_tensor.numel()} labels for {n} texts")
    return label_tensor
