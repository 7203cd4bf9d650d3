"""Attacks: what an honest-but-curious server can reconstruct from a ClientUpdate.

Nothing under this package imports the victim side (``gradleak.data``, ``gradleak.client``) or
scoring; a test parses the imports to keep it so.
"""

from gradleak.attacks.base import Attack, Reconstruction, RecoveredSequence
from gradleak.attacks.registry import attack_names, create_attack, register_attack
from gradleak.attacks.span import SpanBasis, estimate_rank, span_basis

__all__ = [
    "Attack",
    "Reconstruction",
    "RecoveredSequence",
    "SpanBasis",
    "attack_names",
    "create_attack",
    "estimate_rank",
    "register_attack",
    "span_basis",
]
