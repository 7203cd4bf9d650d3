"""FedSGD: the client computes one gradient on its batch and shares (part of) it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

import gradleak
from gradleak.client.exposure import Exposure
from gradleak.client.tasks import encode, task_loss
from gradleak.models.grad_scope import only_grad_for
from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate, UpdateMetadata

if TYPE_CHECKING:
    from gradleak.data.batch import Batch


def compute_update(
    public: PublicModel,
    batch: Batch,
    *,
    exposure: Exposure | None = None,
    train_mode: bool = False,
    max_length: int | None = None,
    disclose_batch_size: bool = False,
) -> ClientUpdate:
    """Returns the FedSGD update of one client: the loss gradient on ``batch``, for exposed
    parameters.

    Args:
        public: the model the server sent.
        batch: the client's private texts (and labels for classification).
        exposure: which parameters are shared (default: all).
        train_mode: compute with dropout on, as a client in ``model.train()`` would.
        max_length: truncate sequences to this many tokens.
        disclose_batch_size: record the number of sequences in the public metadata.
    """
    exposure = exposure or Exposure()
    names = exposure.select(public.family)
    grads = batch_gradient(public, batch, names=names, train_mode=train_mode, max_length=max_length)
    metadata = UpdateMetadata(
        **public.describe(),
        kind="gradient",
        exposure=str(exposure),
        batch_size=len(batch) if disclose_batch_size else None,
        train_mode=train_mode,
        gradleak_version=gradleak.__version__,
    )
    return ClientUpdate(tensors=grads, metadata=metadata)


def batch_gradient(
    public: PublicModel,
    batch: Batch,
    *,
    names: list[str],
    train_mode: bool = False,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Returns d(loss)/d(parameter) on ``batch`` for the named parameters (zeros where unused)."""
    params = dict(public.model.named_parameters())
    inputs = encode(public, batch.texts, max_length=max_length, targets=batch.targets)
    with only_grad_for(public.model, set(names)), _mode(public.model, train=train_mode):
        public.model.zero_grad(set_to_none=True)
        task_loss(public, inputs, batch.labels).backward()
        grads = {n: _grad_or_zeros(params[n]) for n in names}
        public.model.zero_grad(set_to_none=True)
    return grads


def _grad_or_zeros(param: torch.nn.Parameter) -> torch.Tensor:
    return param.grad.detach().clone() if param.grad is not None else torch.zeros_like(param)


@contextmanager
def _mode(model: torch.nn.Module, *, train: bool):
    was_training = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was_training)
