"""DAGER: exact gradient inversion through the span of linear-layer gradients."""

from gradleak.attacks.dager.attack import Dager
from gradleak.attacks.dager.config import DagerConfig

__all__ = ["Dager", "DagerConfig"]
