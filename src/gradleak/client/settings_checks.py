"""ClientSettings' validation: canonical values, then every problem of the values and combinations.

Types and choices are read from the fields themselves (their annotations and ``choices``
metadata); ranges and combinations are listed here, one check per line of the error.
"""

from __future__ import annotations

from dataclasses import Field, fields
from typing import TYPE_CHECKING, Any

from gradleak.errors import GradleakError

if TYPE_CHECKING:
    from gradleak.client.settings import ClientSettings

__all__ = ["canonical_value", "problems"]

_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "tuple[str, ...]": "a list of names",
}


def _base_type(f: Field) -> str:
    """Returns the annotation without ``| None``: ``int``, ``float``, ``tuple[str, ...]``, ..."""
    return str(f.type).removesuffix(" | None")


def _optional(f: Field) -> bool:
    return str(f.type).endswith(" | None")


def canonical_value(f: Field, value: Any) -> Any:
    """Returns ``value`` as the field holds it: name lists as tuples, numbers of floats as floats.

    A name list may be given as ``"noise,prune"``, a list (whose items may hold commas too) or
    ``none``; YAML reads ``1e-5`` (no dot) as a string, which a float field reads as a number.
    Values of other types are returned unchanged, for :func:`problems` to name.
    """
    base = _base_type(f)
    if base == "tuple[str, ...]":
        return _names(value, optional=_optional(f))
    if base == "float" and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _names(value: Any, *, optional: bool) -> Any:
    if value is None:
        return None if optional else ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return value
    names = [p.strip() for v in value for p in str(v).replace(" ", ",").split(",")]
    names = [n for n in names if n and n.lower() != "none"]
    return tuple(names) if names or not optional else None


def problems(s: ClientSettings) -> list[str]:
    """Returns every problem of ``s`` (empty when valid), each naming the field and value."""
    found = _type_problems(s)
    if found:  # the checks below need well-typed values
        return found
    return _choice_problems(s) + _range_problems(s) + _combination_problems(s)


def _type_problems(s: ClientSettings) -> list[str]:
    found = []
    for f in fields(s):
        value = getattr(s, f.name)
        if value is None and _optional(f):
            continue
        base = _base_type(f)
        if not _has_type(value, base):
            found.append(f"{f.name} must be {_TYPE_WORDS[base]}, got {value!r}")
    return found


def _has_type(value: Any, base: str) -> bool:
    if base == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return {
        "int": isinstance(value, int),
        "float": isinstance(value, (int, float)),
        "str": isinstance(value, str),
        "tuple[str, ...]": isinstance(value, tuple),
    }[base]


def _choice_problems(s: ClientSettings) -> list[str]:
    from gradleak.client.defences.registry import defence_names

    found = []
    for f in fields(s):
        allowed = f.metadata["choices"]
        value = getattr(s, f.name)
        if allowed is None or value is None:
            continue
        if isinstance(value, str) and value not in allowed:
            found.append(f"{f.name} {value!r} is not one of {', '.join(allowed)}")
        if isinstance(value, tuple):
            found += _unknown_names(f.name, value, allowed)
    found += _unknown_names("defence", s.defence, tuple(defence_names()))
    if len(set(s.defence)) != len(s.defence):
        found.append(f"defence {', '.join(s.defence)} names one defence twice")
    return found


def _unknown_names(name: str, given: tuple[str, ...], allowed: tuple[str, ...]) -> list[str]:
    unknown = [v for v in given if v not in allowed]
    if not unknown:
        return []
    return [f"{name} {', '.join(unknown)} unknown; choose from {', '.join(allowed)}"]


def _range_problems(s: ClientSettings) -> list[str]:
    found = []
    for name in ("local_epochs", "mini_batch", "max_length", "lora_rank", "dp_steps", "clients"):
        value = getattr(s, name)
        if value is not None and value < 1:
            found.append(f"{name} must be at least 1, got {value}")
    if s.lora_warmup_steps < 0:
        found.append(f"lora_warmup_steps must be 0 or more, got {s.lora_warmup_steps}")
    for name in ("lr", "lora_warmup_lr", "clip", "sigma"):
        if not getattr(s, name) > 0:
            found.append(f"{name} must be positive, got {getattr(s, name)}")
    if s.lora_alpha is not None and not s.lora_alpha > 0:
        found.append(f"lora_alpha must be positive, got {s.lora_alpha}")
    if not s.noise_multiplier >= 0:
        found.append(f"noise_multiplier must be 0 or more, got {s.noise_multiplier}")
    if not 0 < s.dp_delta < 1:
        found.append(f"dp_delta must lie in (0, 1), got {s.dp_delta}")
    if s.dp_sample_rate is not None and not 0 < s.dp_sample_rate <= 1:
        found.append(f"dp_sample_rate must lie in (0, 1], got {s.dp_sample_rate}")
    if not 0 <= s.prune_ratio < 1:
        found.append(f"prune_ratio must lie in [0, 1), got {s.prune_ratio}")
    return found


def _combination_problems(s: ClientSettings) -> list[str]:
    from gradleak.client.exposure import Exposure

    found = []
    if s.algo == "fedsgd" and (s.local_epochs != 1 or s.mini_batch is not None):
        found.append("local_epochs and mini_batch apply to algo fedavg only; set algo=fedavg")
    if "dp-sgd" in s.defence and s.defence[0] != "dp-sgd":
        found.append("dp-sgd acts during training, so it must come first in defence")
    found += _sigma_problems(s)
    try:
        exposure = Exposure.parse(s.expose)
    except GradleakError as err:
        return found + [f"expose {s.expose!r}: {err}".rstrip(".")]
    return found + _lora_problems(s, has_roles=exposure.roles is not None)


def _sigma_problems(s: ClientSettings) -> list[str]:
    """Refuses a sigma that only DP-SGD would see: DP-SGD's noise is noise_multiplier."""
    default = next(f.default for f in fields(s) if f.name == "sigma")
    if "dp-sgd" in s.defence and "noise" not in s.defence and s.sigma != default:
        return [
            "sigma is the scale of the noise defence and DP-SGD ignores it; set DP-SGD's noise "
            "with noise_multiplier (--noise-multiplier), or add noise to defence"
        ]
    return []


def _lora_problems(s: ClientSettings, *, has_roles: bool) -> list[str]:
    from gradleak.models.families import LINEAR_ROLES

    found = []
    lora_only = [n for n in ("lora_alpha", "lora_targets") if getattr(s, n) is not None]
    lora_only += ["lora_seed"] if s.lora_seed else []
    lora_only += ["lora_warmup_steps"] if s.lora_warmup_steps else []
    if not s.uses_lora:
        return [f"{', '.join(lora_only)} need lora_rank or lora_adapter"] if lora_only else []
    if s.lora_adapter is not None and (s.lora_rank is not None or lora_only):
        found.append(
            "lora_adapter brings its own rank, targets and weights; drop the other lora_ options"
        )
    if has_roles:
        found.append("with LoRA choose roles with lora_targets, not expose roles=")
    if s.freeze_embeddings:
        found.append("freeze_embeddings has no effect with LoRA (only adapters train)")
    bad = sorted(set(s.lora_targets or ()) - set(LINEAR_ROLES))
    if bad:
        found.append(
            f"lora_targets {', '.join(bad)} are not linear roles ({', '.join(LINEAR_ROLES)})"
        )
    return found
