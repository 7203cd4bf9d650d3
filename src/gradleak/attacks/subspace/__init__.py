"""A continuous subspace attack (TIGER-style): ranked, never certified, with a confidence."""

from gradleak.attacks.subspace.attack import Subspace
from gradleak.attacks.subspace.config import SubspaceConfig

__all__ = ["Subspace", "SubspaceConfig"]
