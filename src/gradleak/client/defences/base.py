"""The contract of a client-side defence, and how defences are recorded in an update's metadata.

Two stages exist. A *training* defence changes how the client computes its gradients (DP-SGD
clips and noises per-example gradients inside the optimiser); an *update* defence transforms the
tensors the client is about to share (noise, pruning, quantisation). Every defence writes its name
and parameters into ``UpdateMetadata.defence``, so the server knows what was done (Kerckhoffs: the
mechanism is public, only its randomness is secret).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from gradleak.update import ClientUpdate

if TYPE_CHECKING:
    from gradleak.client.settings import ClientSettings
    from gradleak.data.batch import Batch
    from gradleak.models.loading import PublicModel

#: The ``name`` of a metadata entry that lists several defences in the order applied.
CHAIN = "chain"


class Defence(ABC):
    """A defence a client applies; subclasses are frozen dataclasses of their parameters."""

    #: Registry name, e.g. ``"noise"``.
    name: ClassVar[str]
    #: ``"training"`` (acts while gradients are computed) or ``"update"`` (acts on the shared
    #: tensors).
    stage: ClassVar[str]
    #: Fields kept out of the metadata: a server that knew the noise seed could subtract the noise.
    secret_fields: ClassVar[tuple[str, ...]] = ("seed",)

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: ClientSettings) -> Defence:
        """Returns the defence configured from client settings."""

    def describe(self) -> dict[str, Any]:
        """Returns the name and parameters recorded in the update's metadata."""
        params = asdict(self)  # type: ignore[call-overload]
        return {
            "name": self.name,
            **{k: v for k, v in params.items() if k not in self.secret_fields},
        }


class TrainingDefence(Defence):
    """A defence that changes how the client computes gradients (e.g. DP-SGD)."""

    stage = "training"

    @abstractmethod
    def attach(
        self,
        public: PublicModel,
        names: Sequence[str],
        *,
        train_mode: bool = False,
        max_length: int | None = None,
    ) -> AbstractContextManager[Callable[[Batch], dict[str, torch.Tensor]]]:
        """Returns a context yielding a function batch -> defended gradients of ``names``."""

    @abstractmethod
    def record(self, *, steps: int, mini_batch: int, batch_size: int) -> dict[str, Any]:
        """Returns the metadata entry for an update made with ``steps`` defended steps."""


class UpdateDefence(Defence):
    """A defence that transforms the tensors of a finished update."""

    stage = "update"

    @abstractmethod
    def transform(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns the defended tensors (same names and shapes)."""

    def apply(self, update: ClientUpdate) -> ClientUpdate:
        """Returns the update with defended tensors and this defence recorded in its metadata."""
        return update.with_tensors(
            self.transform(update.tensors),
            defence=record_defence(update.metadata.defence, self.describe()),
        )


def record_defence(existing: Mapping[str, Any] | None, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the metadata entry after adding ``entry``: itself, or a chain in the order
    applied."""
    if existing is None:
        return dict(entry)
    if existing.get("name") == CHAIN:
        return {"name": CHAIN, "steps": [*existing["steps"], dict(entry)]}
    return {"name": CHAIN, "steps": [dict(existing), dict(entry)]}


def defence_seed(seed: int, name: str) -> int:
    """Returns a seed for one defence's noise, derived from the client seed and the defence name.

    Each defence draws from its own stream, so DP-SGD noise and plain noise never coincide.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """Returns a torch generator on ``device`` seeded with :func:`defence_seed`."""
    return torch.Generator(device=device).manual_seed(defence_seed(seed, name))
