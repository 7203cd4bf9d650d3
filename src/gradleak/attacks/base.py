"""What every attack takes and returns.

An attack sees only what an honest-but-curious server sees: the public model and the
ClientUpdate. It never receives the client's batch; ground truth meets its output only in
:mod:`gradleak.scoring`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate


@dataclass(frozen=True)
class RecoveredSequence:
    """One reconstructed sequence.

    Attributes:
        token_ids: the recovered token ids.
        text: their decoding.
        certified: every position passed an exact span test (as opposed to a best-effort guess).
        residuals: per position, the span residual that accepted the token (lower is surer).
    """

    token_ids: tuple[int, ...]
    text: str
    certified: bool
    residuals: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Returns the sequence as plain JSON values."""
        return {
            "token_ids": list(self.token_ids),
            "text": self.text,
            "certified": self.certified,
            "residuals": [float(r) for r in self.residuals],
        }


@dataclass(frozen=True)
class Reconstruction:
    """What an attack recovered from one update.

    Attributes:
        attack: the attack's name.
        sequences: recovered sequences, surest first.
        reason: why results are best-effort or empty, in one sentence; None when all certified.
        diagnostics: ranks, thresholds, candidate counts per position, seconds per stage.
    """

    attack: str
    sequences: tuple[RecoveredSequence, ...]
    reason: str | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        """Returns the recovered texts."""
        return [s.text for s in self.sequences]

    @property
    def certified(self) -> bool:
        """Returns whether something was recovered and every sequence is certified."""
        return bool(self.sequences) and all(s.certified for s in self.sequences)

    def to_dict(self) -> dict[str, Any]:
        """Returns the reconstruction as plain JSON values."""
        return {
            "attack": self.attack,
            "sequences": [s.to_dict() for s in self.sequences],
            "certified": self.certified,
            "reason": self.reason,
            "diagnostics": self.diagnostics,
        }


class Attack(ABC):
    """A gradient-inversion attack: (public model, update) -> reconstruction."""

    name: ClassVar[str]

    @abstractmethod
    def reconstruct(self, public: PublicModel, update: ClientUpdate) -> Reconstruction:
        """Returns what the attack recovers from ``update`` of ``public``."""
