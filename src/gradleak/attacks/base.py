"""What every attack takes and returns.

An attack sees only what an honest-but-curious server sees: the public model and the
ClientUpdate. It never receives the client's batch; ground truth meets its output only in
:mod:`gradleak.scoring`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from gradleak.attacks.verdict import Assurance, Cause, render
from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate


@dataclass(frozen=True)
class RecoveredSequence:
    """One reconstructed sequence.

    Attributes:
        token_ids: the recovered token ids.
        text: their decoding.
        assurance: the verdict: certified (every token proved by a span test) or best-effort,
            with its causes.
        residuals: per position, the span residual that accepted the token (lower is surer).
        confidence: for a ranked (never certified) sequence, a number in [0, 1] derived from how
            far its tokens' scores stood above the noise (higher is surer; benchmarks calibrate
            it against exactness); None where the search gives none.
    """

    token_ids: tuple[int, ...]
    text: str
    assurance: Assurance
    residuals: tuple[float, ...] = ()
    confidence: float | None = None

    @property
    def certified(self) -> bool:
        """Returns whether every token was proved (no cause stands against the sequence)."""
        return self.assurance.certified

    def to_dict(self) -> dict[str, Any]:
        """Returns the sequence as plain JSON values."""
        return {
            "token_ids": list(self.token_ids),
            "text": self.text,
            "certified": self.certified,
            "causes": [c.to_dict() for c in self.assurance.causes],
            "residuals": [float(r) for r in self.residuals],
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class Reconstruction:
    """What an attack recovered from one update.

    Attributes:
        attack: the attack's name.
        sequences: recovered sequences, surest first.
        causes: what the attack states of the batch as a whole (sequences may be missing,
            nothing passed a test); each sequence's own causes live on its verdict.
        diagnostics: ranks, thresholds, candidate counts per position, seconds per stage,
            the family and the search taken.
        targets: for a sequence-to-sequence update, what was recovered of the decoder's
            targets (its own sequences, causes and diagnostics); ``sequences`` are then the
            encoder's sources. None for other tasks.
    """

    attack: str
    sequences: tuple[RecoveredSequence, ...]
    causes: tuple[Cause, ...] = ()
    diagnostics: dict[str, Any] = field(default_factory=dict)
    targets: Reconstruction | None = None

    @property
    def texts(self) -> list[str]:
        """Returns the recovered texts."""
        return [s.text for s in self.sequences]

    @property
    def certified(self) -> bool:
        """Returns whether something was recovered and every sequence is certified."""
        return bool(self.sequences) and all(s.certified for s in self.sequences)

    @property
    def all_causes(self) -> tuple[Cause, ...]:
        """Returns every cause stated, the batch's and each sequence's, each once."""
        own = (c for s in self.sequences for c in s.assurance.causes)
        return tuple(dict.fromkeys((*self.causes, *own)))

    @property
    def reason(self) -> str | None:
        """Returns why results are best-effort or missing, rendered from the causes, or None."""
        return render(self.all_causes)

    def to_dict(self) -> dict[str, Any]:
        """Returns the reconstruction as plain JSON values."""
        out = {
            "attack": self.attack,
            "sequences": [s.to_dict() for s in self.sequences],
            "certified": self.certified,
            "causes": [c.to_dict() for c in self.all_causes],
            "reason": self.reason,
            "diagnostics": self.diagnostics,
        }
        if self.targets is not None:
            out["targets"] = self.targets.to_dict()
        return out


class Attack(ABC):
    """A gradient-inversion attack: (public model, update) -> reconstruction."""

    #: The attack's name (a configurable attack may name itself per instance, e.g. its recipe).
    name: str

    @abstractmethod
    def reconstruct(self, public: PublicModel, update: ClientUpdate) -> Reconstruction:
        """Returns what the attack recovers from ``update`` of ``public``."""
