"""From the weights a client returns to the ClientUpdate an attack needs.

A Flower server never sees gradients: it sends the global weights and gets back the weights after
local training. Their difference is a weight delta. For one local SGD step it is exactly
``-lr x gradient`` (``ClientUpdate.gradients`` divides it back out); for several steps it is a
FedAvg update, whose attacks are best-effort past the first block.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gradleak import __version__
from gradleak.errors import InvalidUpdateError
from gradleak.models import PublicModel
from gradleak.update import ClientUpdate, UpdateMetadata, check_finite

__all__ = ["rounding_noise", "update_from_weights"]


def update_from_weights(
    public: PublicModel,
    global_state: Mapping[str, torch.Tensor],
    client_state: Mapping[str, torch.Tensor],
    *,
    learning_rate: float | None = None,
    local_steps: int | None = None,
    batch_size: int | None = None,
) -> ClientUpdate:
    """Returns the weight delta ``client - global`` over the public model's trained parameters.

    Only parameters whose weights changed are kept: what a client froze, the server sees unchanged,
    and an all-zero tensor carries no gradient. Buffers and other non-parameter arrays are ignored.
    The difference is taken in float64, so no rounding is added to what the client's dtype
    already lost.

    Args:
        public: The server's model, holding the global weights the client started from.
        global_state: The weights the server sent, by ``state_dict`` name.
        client_state: The weights the client returned, by the same names.
        learning_rate: The client's learning rate, when the server set it (it usually does).
        local_steps: The client's local optimisation steps, when known (1 for FedSGD).
        batch_size: The examples the client reports having trained on.

    Raises:
        InvalidUpdateError: The returned weights name no parameter of the public model, miss one of
            the global arrays, differ in shape, are not finite, or equal the global weights.
    """
    parameters = dict(public.model.named_parameters())
    returned = [name for name in client_state if name in parameters]
    if not returned:
        raise InvalidUpdateError(
            f"none of the client's {len(client_state)} arrays (e.g. {_first(client_state)}) names "
            f"a parameter of the public model {public.spec!r}; audit with the model the clients "
            "train."
        )
    dtype = next(iter(parameters.values())).dtype
    tensors = {}
    for name in returned:
        delta = _delta(name, global_state, client_state[name], parameters[name])
        if torch.any(delta != 0):
            tensors[name] = delta.to(dtype)
    if not tensors:
        raise InvalidUpdateError(
            "the client returned the global weights unchanged, so there is nothing to attack; "
            "check that its ClientApp trains and returns its new weights."
        )
    update = ClientUpdate(
        tensors=tensors,
        metadata=_metadata(
            public, len(tensors), len(parameters), learning_rate, local_steps, batch_size
        ),
    )
    check_finite(update)
    return update


def rounding_noise(client_state: Mapping[str, torch.Tensor], update: ClientUpdate) -> float | None:
    """Returns the median over tensors of (rounding error of the returned weights) / |delta|.

    A client that stores its weights in float32 rounds every new weight to a relative 6e-8, and
    the server's ``client - global`` inherits that error. With a small learning rate the delta
    is hardly larger than the rounding, and the span of the gradient drowns in it: this ratio
    (root-mean-square rounding of the client's dtype over the delta's norm) says how close that
    is. None for float64 weights, whose rounding is negligible.
    """
    ratios = []
    for name, delta in update.tensors.items():
        weights = client_state[name]
        if not weights.is_floating_point() or weights.dtype == torch.float64:
            continue
        eps = torch.finfo(weights.dtype).eps
        error = eps * float(weights.detach().double().norm()) / 12**0.5
        ratios.append(error / max(float(delta.double().norm()), 1e-300))
    return float(torch.tensor(ratios).median()) if ratios else None


def _delta(name: str, global_state, new: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    if name not in global_state:
        raise InvalidUpdateError(
            f"the client returned {name!r}, which the server never sent; give the auditor the "
            "arrays of this round's training messages."
        )
    old = global_state[name]
    if new.shape != old.shape or new.shape != parameter.shape:
        raise InvalidUpdateError(
            f"{name!r} has shape {tuple(new.shape)} in the client's reply, {tuple(old.shape)} in "
            f"the global weights and {tuple(parameter.shape)} in the public model; they must agree."
        )
    return new.detach().to(torch.float64) - old.detach().to(torch.float64)


def _metadata(
    public: PublicModel,
    changed: int,
    total: int,
    learning_rate: float | None,
    local_steps: int | None,
    batch_size: int | None,
) -> UpdateMetadata:
    return UpdateMetadata(
        **public.describe(),
        kind="weight_delta",
        exposure="all" if changed == total else f"changed tensors ({changed} of {total})",
        learning_rate=learning_rate,
        local_steps=local_steps,
        batch_size=batch_size,
        gradleak_version=__version__,
        extra={"source": "flower"},
    )


def _first(state: Mapping[str, torch.Tensor]) -> str:
    return repr(next(iter(state), ""))
