"""The defences a client can apply, by name: one dict of the built-ins, plus plug-ins."""

from __future__ import annotations

from gradleak.client.defences.base import Defence
from gradleak.client.defences.dp_sgd import DPSGD
from gradleak.client.defences.noise import GaussianNoise
from gradleak.client.defences.pruning import TopKPruning
from gradleak.client.defences.quantization import Quantization
from gradleak.errors import UnknownSpecError

_DEFENCES: dict[str, type[Defence]] = {
    "dp-sgd": DPSGD,
    "noise": GaussianNoise,
    "prune": TopKPruning,
    "quantize": Quantization,
}


def register_defence(name: str, cls: type[Defence], *, force: bool = False) -> None:
    """Adds a defence class under ``name``; refuses to replace one unless ``force``."""
    if name in _DEFENCES and not force:
        raise ValueError(
            f"a defence named {name!r} is already registered; pass force=True to replace it"
        )
    _DEFENCES[name] = cls


def defence_names() -> list[str]:
    """Returns the registered defence names."""
    return sorted(_DEFENCES)


def defence_class(name: str) -> type[Defence]:
    """Returns the defence class registered under ``name``.

    Raises:
        UnknownSpecError: no defence has that name.
    """
    if name not in _DEFENCES:
        raise UnknownSpecError(
            f"unknown defence {name!r}; choose one of {', '.join(defence_names())}."
        )
    return _DEFENCES[name]
