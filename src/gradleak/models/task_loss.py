"""The training loss of each task, as both sides compute it.

The loss is public: the server knows the model and the task. The client trains on it, and the
attacks that recompute a sentence's own gradient (peeling, reading next-token targets) must
compute exactly the same thing, so both call this module. Inputs are right-padded with an
attention mask, as real clients do.

Sequence-to-sequence (``seq2seq``, encoder-decoders): the client trains the language-model head
on (source, target) pairs, as a Hugging Face seq2seq trainer does: the source goes to the
encoder, the target to ``labels`` (padding as -100), and the model feeds its decoder the target
shifted right (its start token, then every target token but the last). The loss averages over
every target token of the batch.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from gradleak.models.grad_scope import only_grad_for
from gradleak.models.loading import PublicModel

Inputs = dict[str, torch.Tensor]


def task_loss(public: PublicModel, inputs: Inputs, labels: Sequence[int] | None) -> torch.Tensor:
    """Returns the training loss on one encoded batch: the model's own loss for the task.

    Next-token prediction averages over every target of the batch (padding excluded), and so
    does sequence-to-sequence training (its targets are ``inputs["labels"]``); classification
    averages over the sequences, with ``labels`` (class 0 when None).
    """
    device = public.family.embedding().weight.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if public.task == "seq2seq":
        return public.model(**inputs).loss
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
    if public.task == "seq2seq":
        targets = inputs["labels"]
        token_losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, reduction="none", ignore_index=-100
        )
        counted = (targets != -100).to(logits.dtype)
        return token_losses.sum(1) / counted.sum(1).clamp_min(1.0)
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


def seq2seq_inputs(
    public: PublicModel, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
) -> Inputs:
    """Returns the model inputs of (source, target) token-id pairs: the sources right-padded for
    the encoder, the targets as ``labels`` (padding -100), as a sequence-to-sequence client
    feeds them."""
    if len(sources) != len(targets):
        raise ValueError(f"got {len(sources)} sources for {len(targets)} targets")
    inputs = token_inputs(public, sources)
    longest = max(len(ids) for ids in targets)
    labels = torch.full((len(targets), longest), -100, device=inputs["input_ids"].device)
    for row, target in enumerate(targets):
        labels[row, : len(target)] = torch.tensor(list(target), device=labels.device)
    inputs.pop("token_type_ids", None)
    return {**inputs, "labels": labels}


def loss_gradient(
    public: PublicModel,
    batch: Sequence[Sequence[int]],
    label: int | None,
    names: Collection[str],
    *,
    sources: Sequence[Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Returns the task loss's gradient on ``batch`` (every sequence with ``label``; None for
    next-token prediction) for the named parameters: what a client with these sentences shares.
    For sequence-to-sequence training ``batch`` holds the targets and ``sources`` their
    sources, pair by pair."""
    inputs = (
        token_inputs(public, batch) if sources is None else seq2seq_inputs(public, sources, batch)
    )
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
