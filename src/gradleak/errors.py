"""The errors gradleak raises: each says what is wrong and what to do, in one sentence.

The command line turns any :class:`GradleakError` into its message and a non-zero exit status,
never a traceback.
"""

from __future__ import annotations

__all__ = [
    "CapacityExceededError",
    "GradientNotExposedError",
    "GradleakError",
    "InvalidUpdateError",
    "MissingDependencyError",
    "UnknownSpecError",
    "UnsupportedFamilyError",
]


class GradleakError(Exception):
    """Base class of every error gradleak raises on purpose."""


class UnknownSpecError(GradleakError, ValueError):
    """A model, dataset or component name that gradleak cannot resolve."""


class MissingDependencyError(GradleakError, ImportError):
    """An optional package is needed; the message names the pip command that installs it."""


class UnsupportedFamilyError(GradleakError, ValueError):
    """A model whose architecture (``config.model_type``) has no gradleak family."""


class InvalidUpdateError(GradleakError, ValueError):
    """A ClientUpdate file or object that is damaged, non-finite or made for another model."""


class GradientNotExposedError(GradleakError, KeyError):
    """An attack needs a gradient that the update does not share."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CapacityExceededError(GradleakError, ValueError):
    """An exact method's assumption fails (e.g. more distinct rows than a layer's input size)."""
