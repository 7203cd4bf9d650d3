"""The ``client:`` keys of a run config: :class:`~gradleak.client.ClientSettings` by option name.

A run config keeps the client's training and defences in one mapping, ``client``, whose keys are
the names of the command-line options (``gradleak attack --sigma`` is ``client: {sigma: ...}``, or
``client.sigma`` as a top-level key). They are ClientSettings' fields, except that

- ``defence`` is the field ``defences`` and ``noise_seed`` the field ``seed`` (as the options say);
- ``expose``, ``train_mode`` and ``max_length`` stay top-level run-config keys, as before there was
  a ``client`` mapping (scoring truncates with ``max_length`` too);
- ``clients`` is the runner's own: secure aggregation over that many simulated clients.

A config holds the whole mapping, every key with its value (defaults filled in), in canonical form
(lists, floats), so ``config.yaml`` says exactly what the client did and equal settings always
fingerprint equally. Importing this module imports no torch; validation imports the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradleak.client import ClientSettings

__all__ = [
    "CLIENT_KEY",
    "RENAMED",
    "RUNNER_KEYS",
    "TOP_LEVEL",
    "client_keys",
    "client_settings",
    "default_client",
    "normalise_client",
]

#: The run-config field holding the client mapping.
CLIENT_KEY = "client"
#: Client keys whose ClientSettings field has another name (the keys follow the options).
RENAMED = {"defence": "defences", "noise_seed": "seed"}
#: ClientSettings fields that are top-level run-config keys rather than ``client`` keys.
TOP_LEVEL = ("expose", "train_mode", "max_length")
#: Client keys the runner handles itself, with their defaults.
RUNNER_KEYS: dict[str, Any] = {"clients": 1}
#: Keys holding lists of names; a comma-separated string or ``none`` is accepted too.
_LIST_KEYS = ("defence", "disclose", "lora_targets")
_FIELD_OF = {v: k for k, v in RENAMED.items()}


def _settings_fields() -> list[Any]:
    from gradleak.client import ClientSettings

    return [f for f in fields(ClientSettings) if f.name not in TOP_LEVEL]


def _key(field_name: str) -> str:
    return _FIELD_OF.get(field_name, field_name)


def client_keys() -> tuple[str, ...]:
    """Returns the keys of the ``client`` mapping, in ClientSettings' order, ``clients`` last."""
    return (*(_key(f.name) for f in _settings_fields()), *RUNNER_KEYS)


def default_client() -> dict[str, Any]:
    """Returns the ``client`` mapping of a default client (FedSGD, everything shared, no defence)."""
    out = {}
    for f in _settings_fields():
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out[_key(f.name)] = list(default) if isinstance(default, tuple) else default
    return {**out, **RUNNER_KEYS}


def _float_keys() -> set[str]:
    return {_key(f.name) for f in _settings_fields() if "float" in str(f.type)}


def _canonical(key: str, value: Any, floats: set[str]) -> Any:
    """Returns ``value`` as the config stores it: name lists as lists, numbers of float keys as floats."""
    if key in _LIST_KEYS:
        if value is None:
            return None if key == "lora_targets" else []
        if isinstance(value, str):
            value = [] if value.strip().lower() == "none" else value.replace(" ", ",").split(",")
        if isinstance(value, (list, tuple)):
            names = [p.strip() for v in value for p in str(v).split(",")]
            return [n for n in names if n and n.lower() != "none"]
        return value
    if key in floats and not isinstance(value, bool):
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return value
        if isinstance(value, int):
            return float(value)
    return value


def normalise_client(values: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Returns the whole ``client`` mapping (defaults filled in, canonical values) and its problems.

    Problems name unknown keys and top-level keys given here; the values themselves are checked
    by :func:`client_settings`. Keys may be spelled with dashes.
    """
    given = {str(k).strip().replace("-", "_"): v for k, v in (values or {}).items()}
    problems = []
    misplaced = [k for k in given if k in TOP_LEVEL]
    if misplaced:
        problems.append(
            f"{', '.join(misplaced)} are top-level keys, not client keys; write them beside model:"
        )
    known = client_keys()
    unknown = sorted(set(given) - set(known) - set(TOP_LEVEL))
    if unknown:
        problems.append(f"unknown client key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    floats = _float_keys()
    out = default_client()
    out.update({k: _canonical(k, v, floats) for k, v in given.items() if k in out})
    return out, problems


def client_settings(
    client: Mapping[str, Any] | None,
    *,
    expose: str = "all",
    train_mode: bool = False,
    max_length: int | None = None,
) -> ClientSettings:
    """Returns the ClientSettings of a ``client`` mapping (runner keys such as ``clients`` aside).

    Raises:
        ClientSettingsError: a key is unknown or misplaced, or a value or combination is invalid.
    """
    from gradleak.client import ClientSettings, ClientSettingsError

    values, problems = normalise_client(client)
    if problems:
        raise ClientSettingsError("Invalid client settings: " + "; ".join(problems) + ".")
    kwargs = {RENAMED.get(k, k): v for k, v in values.items() if k not in RUNNER_KEYS}
    return ClientSettings(**kwargs, expose=expose, train_mode=train_mode, max_length=max_length)
