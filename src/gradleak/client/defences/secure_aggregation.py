"""Secure aggregation: the server sees only the sum of K clients' updates, never one alone.

Cryptographic secure aggregation (Bonawitz et al., CCS 2017) reveals the exact sum of the
clients' vectors and nothing else, so simulating it needs no cryptography: the server's view is
the sum. An attack on that view must recover the union of the K batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from gradleak.client.defences.base import record_defence
from gradleak.errors import InvalidUpdateError
from gradleak.update import ClientUpdate

NAME = "secure-aggregation"
#: Metadata fields that must agree for the sum to mean anything.
_SAME = ("model", "revision", "family", "task", "num_labels", "seed", "dtype", "kind")


def sum_tensors(tensor_sets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Returns the entrywise sum of tensor sets that share names and shapes."""
    names = list(tensor_sets[0])
    for index, tensors in enumerate(tensor_sets[1:], start=1):
        if list(tensors) != names:
            raise InvalidUpdateError(
                f"update {index} shares other tensors than update 0; sum only like updates."
            )
        for name in names:
            if tensors[name].shape != tensor_sets[0][name].shape:
                raise InvalidUpdateError(
                    f"update {index} has {name} of another shape than update 0."
                )
    return {name: torch.stack([t[name] for t in tensor_sets]).sum(dim=0) for name in names}


def secure_aggregate(updates: Sequence[ClientUpdate]) -> ClientUpdate:
    """Returns what the server sees under secure aggregation: the sum of the clients' updates.

    Metadata fields the clients agree on are kept; batch sizes add up when all are disclosed;
    learning rate and local steps stay only if every client disclosed the same value.

    Raises:
        InvalidUpdateError: no updates, or updates for other models, kinds or tensors.
    """
    if not updates:
        raise InvalidUpdateError("secure aggregation needs at least one client update.")
    first = updates[0].metadata
    for index, update in enumerate(updates[1:], start=1):
        differ = [f for f in _SAME if getattr(update.metadata, f) != getattr(first, f)]
        if differ:
            raise InvalidUpdateError(
                f"update {index} differs from update 0 in {', '.join(differ)}; aggregate updates "
                "of one round only."
            )
    tensors = sum_tensors([u.tensors for u in updates])
    metas = [u.metadata for u in updates]
    entry: dict[str, Any] = {"name": NAME, "clients": len(updates)}
    client_defences = [m.defence for m in metas]
    if any(d is not None for d in client_defences):
        entry["client_defence"] = (
            client_defences[0] if _all_equal(client_defences) else client_defences
        )
    metadata = replace(
        first,
        batch_size=None
        if any(m.batch_size is None for m in metas)
        else sum(m.batch_size for m in metas),
        learning_rate=first.learning_rate if _all_equal([m.learning_rate for m in metas]) else None,
        local_steps=first.local_steps if _all_equal([m.local_steps for m in metas]) else None,
        exposure=first.exposure if _all_equal([m.exposure for m in metas]) else "mixed",
        defence=record_defence(None, entry),
        extra=dict(first.extra) if _all_equal([m.extra for m in metas]) else {},
    )
    return ClientUpdate(tensors=tensors, metadata=metadata)


def _all_equal(values: list[Any]) -> bool:
    return all(v == values[0] for v in values[1:])
