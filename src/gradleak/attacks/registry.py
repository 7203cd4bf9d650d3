"""The attacks gradleak knows by name: one dict of the built-ins, plus plug-ins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

from gradleak.attacks.base import Attack
from gradleak.errors import UnknownSpecError

Config = TypeVar("Config")


class _UnknownOptions(TypeError):
    """Options that are no field of an attack's config dataclass."""

    def __init__(self, unknown: list[str], valid: list[str]) -> None:
        super().__init__(unknown, valid)
        self.unknown, self.valid = unknown, valid


def _configured(config_class: type[Config], options: Mapping[str, Any]) -> Config:
    """Returns ``config_class(**options)``, refusing options that are none of its fields."""
    valid = [f.name for f in fields(config_class) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise _UnknownOptions(unknown, valid)
    return config_class(**options)


def _dager(**options: Any) -> Attack:
    from gradleak.attacks.dager import Dager, DagerConfig

    return Dager(_configured(DagerConfig, options))


def _layer_span(**options: Any) -> Attack:
    from gradleak.attacks.layer_span import LayerSpan, LayerSpanConfig

    return LayerSpan(_configured(LayerSpanConfig, options))


def _subspace(**options: Any) -> Attack:
    from gradleak.attacks.subspace import Subspace, SubspaceConfig

    return Subspace(_configured(SubspaceConfig, options))


def _optimization(recipe: str) -> Callable[..., Attack]:
    def factory(**options: Any) -> Attack:
        from gradleak.attacks.optimization import RECIPES, GradientInversion

        return GradientInversion(_configured(RECIPES[recipe], options))

    return factory


_ATTACKS: dict[str, Callable[..., Attack]] = {
    "dager": _dager,
    "layer-span": _layer_span,
    "subspace": _subspace,
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
    except _UnknownOptions as err:
        words = "options" if len(err.unknown) > 1 else "option"
        raise UnknownSpecError(
            f"attack {name!r} has no {words} {', '.join(map(repr, err.unknown))}; "
            f"valid options: {', '.join(err.valid)}."
        ) from None
    except TypeError as err:
        raise UnknownSpecError(f"attack {name!r} does not take these options: {err}") from None
