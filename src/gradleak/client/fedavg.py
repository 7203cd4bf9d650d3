"""FedAvg: the client runs local SGD over its batch and shares the weight delta.

As in DAGER's ``compute_grads_fed_avg``: E epochs over the mini-batches of size b, in order
(no shuffling), plain SGD without momentum, with the model in eval mode unless ``train_mode``.
The shared tensors are ``W_final - W_start``; :meth:`ClientUpdate.gradients` turns them into the
average gradient ``-delta / (lr * steps)`` when lr and the steps are disclosed.
The model's weights are restored afterwards, so one PublicModel serves many clients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gradleak.client._metadata import training_metadata
from gradleak.client.exposure import Exposure
from gradleak.client.fedsgd import batch_gradient
from gradleak.client.frozen import describe_frozen, trainable_names
from gradleak.client.settings import DEFAULT_DISCLOSE
from gradleak.data.batch import Batch
from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate

#: batch -> gradients of the trained parameters at the current weights.
GradientFn = Callable[[Batch], dict[str, torch.Tensor]]


def minibatch_slices(n: int, size: int | None) -> list[slice]:
    """Returns the in-order slices of ``n`` items in mini-batches of ``size`` (None: one batch).

    The last mini-batch is smaller when ``size`` does not divide ``n``.
    """
    size = n if size is None else size
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def sub_batch(batch: Batch, part: slice) -> Batch:
    """Returns the texts (and labels, indices, targets) of ``batch`` in ``part``."""
    return Batch(
        texts=batch.texts[part],
        labels=batch.labels[part] if batch.labels is not None else None,
        source=batch.source,
        indices=batch.indices[part] if batch.indices is not None else None,
        targets=batch.targets[part] if batch.targets is not None else None,
    )


def local_sgd(
    public: PublicModel,
    batch: Batch,
    *,
    names: Sequence[str],
    gradient_fn: GradientFn,
    lr: float,
    epochs: int = 1,
    mini_batch: int | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Returns the weight delta of ``names`` after local SGD, and the number of steps taken.

    Each step is ``W <- W - lr * gradient_fn(mini_batch)``. The weights are restored on return.
    """
    params = dict(public.model.named_parameters())
    start = {n: params[n].detach().clone() for n in names}
    steps = 0
    try:
        for _ in range(epochs):
            for part in minibatch_slices(len(batch), mini_batch):
                grads = gradient_fn(sub_batch(batch, part))
                with torch.no_grad():
                    for n in names:
                        params[n].add_(grads[n].to(params[n].dtype), alpha=-lr)
                steps += 1
        with torch.no_grad():
            delta = {n: params[n].detach() - start[n] for n in names}
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(start[n])
    return delta, steps


def plain_gradient_fn(
    public: PublicModel,
    names: Sequence[str],
    *,
    train_mode: bool = False,
    max_length: int | None = None,
) -> GradientFn:
    """Returns the non-private gradient function: the loss gradient of each mini-batch."""
    names = list(names)
    return lambda part: batch_gradient(
        public, part, names=names, train_mode=train_mode, max_length=max_length
    )


def compute_fedavg_update(
    public: PublicModel,
    batch: Batch,
    *,
    lr: float = 1e-4,
    epochs: int = 1,
    mini_batch: int | None = None,
    exposure: Exposure | None = None,
    freeze_embeddings: bool = False,
    train_mode: bool = False,
    max_length: int | None = None,
    disclose: Sequence[str] = DEFAULT_DISCLOSE,
) -> ClientUpdate:
    """Returns the FedAvg update of one client: the weight delta after local SGD on ``batch``.

    Args:
        public: the model the server sent (its weights are unchanged on return).
        batch: the client's private texts.
        lr: the local learning rate.
        epochs: local epochs E over the batch.
        mini_batch: mini-batch size b; None takes the whole batch per step.
        exposure: which parameters are trained and shared (default: all).
        freeze_embeddings: keep the embeddings frozen (not trained, not shared).
        train_mode: dropout on during local training.
        max_length: truncate sequences to this many tokens.
        disclose: facts written into the metadata (see
            :data:`gradleak.client.settings.DISCLOSABLE`).
    """
    exposure = exposure or Exposure()
    names = trainable_names(public.family, exposure=exposure, freeze_embeddings=freeze_embeddings)
    gradient_fn = plain_gradient_fn(public, names, train_mode=train_mode, max_length=max_length)
    delta, steps = local_sgd(
        public,
        batch,
        names=names,
        gradient_fn=gradient_fn,
        lr=lr,
        epochs=epochs,
        mini_batch=mini_batch,
    )
    metadata = training_metadata(
        public,
        kind="weight_delta",
        exposure=str(exposure),
        batch_size=len(batch),
        train_mode=train_mode,
        disclose=disclose,
        facts={
            "learning_rate": lr,
            "local_steps": steps,
            "local_epochs": epochs,
            "mini_batch": mini_batch,
        },
        extra={"algo": "fedavg", "frozen": describe_frozen(freeze_embeddings)},
    )
    return ClientUpdate(tensors=delta, metadata=metadata)
