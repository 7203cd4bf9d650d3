"""Lazy imports of the optional extras the client needs (Opacus for DP-SGD, PEFT for LoRA)."""

from __future__ import annotations

import importlib
from types import ModuleType

from gradleak.errors import MissingDependencyError

#: module -> (pip extra, what it is needed for)
_EXTRAS = {"opacus": ("dp", "DP-SGD"), "peft": ("lora", "LoRA")}


def require(module: str) -> ModuleType:
    """Returns the imported optional module, or raises MissingDependencyError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra, purpose = _EXTRAS[module.split(".")[0]]
        raise MissingDependencyError(
            f"{purpose} needs the {module.split('.')[0]} package; install it with pip install "
            f"'gradleak[{extra}]'."
        ) from None
