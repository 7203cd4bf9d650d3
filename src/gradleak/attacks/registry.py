"""The attacks gradleak knows by name: one dict of the built-ins, plus plug-ins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradleak.attacks.base import Attack
from gradleak.errors import UnknownSpecError


def _dager(**options: Any) -> Attack:
    from gradleak.attacks.dager import Dager, DagerConfig

    return Dager(DagerConfig(**options))


def _layer_span(**options: Any) -> Attack:
    from gradleak.attacks.layer_span import LayerSpan, LayerSpanConfig

    return LayerSpan(LayerSpanConfig(**options))


def _optimization(recipe: str) -> Callable[..., Attack]:
    def factory(**options: Any) -> Attack:
        from gradleak.attacks.optimization import RECIPES, GradientInversion

        return GradientInversion(RECIPES[recipe](**options))

    return factory


_ATTACKS: dict[str, Callable[..., Attack]] = {
    "dager": _dager,
    "layer-span": _layer_span,
    "tag": _optimization("tag"),
    "lamp_cos": _optimization("lamp_cos"),
    "lamp_l1l2": _optimization("lamp_l1l2"),
    "partial": _optimization("partial"),
}


def register_attack(name: str, factory: Callable[..., Attack], *, force: bool = False) -> None:
    """Adds an attack factory under ``name``; refuses to replace one unless ``force``."""
    if name in _ATTACKS and not force:
        raise ValueError(
            f"an attack named {name!r} is already registered; pass force=True to replace it"
        )
    _ATTACKS[name] = factory


def attack_names() -> list[str]:
    """Returns the registered attack names."""
    return sorted(_ATTACKS)


def create_attack(name: str, **options: Any) -> Attack:
    """Returns a new attack by name, configured with ``options``.

    Raises:
        UnknownSpecError: no attack has that name, or an option is unknown.
    """
    if name not in _ATTACKS:
        raise UnknownSpecError(
            f"unknown attack {name!r}; choose one of {', '.join(attack_names())}."
        )
    try:
        return _ATTACKS[name](**options)
    except TypeError as err:
        raise UnknownSpecError(f"attack {name!r} does not take these options: {err}") from None
