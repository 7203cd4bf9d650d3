"""ClientUpdate: the unit that crosses the trust boundary from a client to the server.

It holds named tensors (gradients, or weight deltas after local training) and public metadata.
Nothing in it identifies the client's texts: the batch never travels with the update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

KINDS: tuple[str, ...] = ("gradient", "weight_delta")


@dataclass(frozen=True)
class UpdateMetadata:
    """What the server knows about an update besides its tensors.

    Fields the threat model does not disclose are None.

    Attributes:
        model: the model specification both sides load (see :func:`gradleak.models.load_model`).
        revision: hub commit of the model, when loaded from the hub.
        family: architecture family name.
        task: "seq_class", "next_token" or "seq2seq".
        num_labels: classes of the classification head.
        seed: seed of random weights and of the head initialisation.
        head_init_std: std of the head initialisation.
        dtype: parameter dtype of the client's model.
        kind: "gradient" (one step, FedSGD) or "weight_delta" (new weights minus old).
        exposure: how the shared parameters were chosen, e.g. "all" or "blocks=0,1 roles=q,k,v".
        learning_rate: client learning rate, if disclosed.
        local_steps: local optimisation steps, if disclosed.
        batch_size: number of sequences, if disclosed.
        train_mode: dropout was on while computing the update.
        defence: name and parameters of a defence applied on the client, if any.
        gradleak_version: version that wrote the update.
        extra: anything else a custom client wants to record (JSON values).
    """

    model: str
    family: str
    task: str
    num_labels: int = 2
    seed: int = 0
    head_init_std: float | None = None
    dtype: str = "float32"
    revision: str | None = None
    kind: str = "gradient"
    exposure: str = "all"
    learning_rate: float | None = None
    local_steps: int | None = None
    batch_size: int | None = None
    train_mode: bool = False
    defence: dict[str, Any] | None = None
    gradleak_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns the metadata as plain JSON values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpdateMetadata:
        """Returns metadata from :meth:`to_dict` output; unknown keys go to ``extra``."""
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        unknown = {k: v for k, v in data.items() if k not in known}
        if unknown:
            values["extra"] = {**values.get("extra", {}), **unknown}
        return cls(**values)


@dataclass(frozen=True)
class ClientUpdate:
    """Named tensors a client shares, with their public metadata.

    Attributes:
        tensors: parameter name (as in ``model.named_parameters()``) -> gradient or weight delta.
        metadata: see :class:`UpdateMetadata`.
    """

    tensors: Mapping[str, torch.Tensor]
    metadata: UpdateMetadata

    @property
    def names(self) -> tuple[str, ...]:
        """Returns the names of the shared tensors."""
        return tuple(self.tensors)

    def with_tensors(
        self, tensors: Mapping[str, torch.Tensor], **metadata_changes: Any
    ) -> ClientUpdate:
        """Returns a copy with other tensors (and optionally changed metadata)."""
        return ClientUpdate(
            tensors=dict(tensors), metadata=replace(self.metadata, **metadata_changes)
        )

    def gradients(self) -> dict[str, torch.Tensor]:
        """Returns tensors as gradients: weight deltas are divided by -(learning rate x steps).

        For one local SGD step the result is the gradient exactly; for several steps it is the
        average gradient along the trajectory, which is what exact attacks on FedAvg rely on.
        """
        if self.metadata.kind == "gradient":
            return dict(self.tensors)
        lr, steps = self.metadata.learning_rate, self.metadata.local_steps or 1
        if not lr:
            # Span tests are scale-free, so an unknown learning rate only flips the sign.
            return {k: -v for k, v in self.tensors.items()}
        return {k: -v / (lr * steps) for k, v in self.tensors.items()}
