"""Attacks: what an honest-but-curious server can reconstruct from a ClientUpdate.

Nothing under this package imports the victim side (``gradleak.data``, ``gradleak.client``) or
scoring; a test imports every submodule and parses the imports to keep it so. Every recovered
sequence carries an :class:`Assurance`: certified, or best-effort with typed causes.
"""

from gradleak.attacks.base import Attack, Reconstruction, RecoveredSequence
from gradleak.attacks.registry import attack_names, create_attack, register_attack
from gradleak.attacks.span import SpanBasis, estimate_rank, span_basis
from gradleak.attacks.verdict import CERTIFIED, Assurance, Cause, CauseKind, best_effort

__all__ = [
    "CERTIFIED",
    "Assurance",
    "Attack",
    "Cause",
    "CauseKind",
    "Reconstruction",
    "RecoveredSequence",
    "SpanBasis",
    "attack_names",
    "best_effort",
    "create_attack",
    "estimate_rank",
    "register_attack",
    "span_basis",
]
