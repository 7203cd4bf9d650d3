"""The settings of one experiment run, from defaults, a YAML file and the command line.

:class:`RunConfig` holds everything that determines a run's results. It is built by
:func:`build_config` from three layers, later ones winning: the defaults, a YAML file with the
same keys as the command-line options (``batch_size`` or ``batch-size``), and the values given on
the command line. The resolved config is what a run directory's ``config.yaml`` holds; a run
refuses to resume in a directory whose config differs.

The client's training and defences are one :class:`~gradleak.client.ClientSettings`, written as
the mapping ``client`` keyed by its field names; its run-level fields (``expose``, ``train_mode``,
``max_length``, which scoring reads too) are written beside ``model:``. Any key of a mapping field
can also be given as a dotted top-level key, ``client.sigma: 1e-5`` or
``attack_options.max_frontier: 512``, which is how a sweep makes an axis of one client setting.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from gradleak.client.settings import (
    ClientSettings,
    ClientSettingsError,
    run_level_keys,
    setting_fields,
)
from gradleak.errors import GradleakError

__all__ = [
    "AUTO_SAMPLER",
    "DEVICES",
    "DTYPES",
    "ConfigError",
    "RunConfig",
    "build_config",
    "load_config_file",
    "normalise_keys",
    "parse_option_value",
    "parse_options",
]

AUTO_SAMPLER = "auto"
DTYPES = ("float32", "float64", "bfloat16", "float16")
DEVICES = ("cpu", "cuda", "auto")
#: Keys a config file may hold beside the RunConfig fields; they say where, not what, to run.
PLACEMENT_KEYS = ("out",)
#: The run-config field holding the client settings.
CLIENT_KEY = "client"
#: Fields holding a mapping; their keys may also be given as ``FIELD.KEY`` top-level keys.
MAPPING_FIELDS = ("attack_options", CLIENT_KEY)


class ConfigError(GradleakError, ValueError):
    """A run configuration with missing, unknown or invalid values (all listed in the message)."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines the results of one run of an attack over sampled batches.

    Attributes:
        model: Model specification (bundled alias, ``random:ARCH?...``, .gguf, folder or hub id).
        dataset: ``demo``, ``cola``, ``sst2``, ``rotten_tomatoes``, a local file or a hub id.
        split: Dataset split (the papers sample from ``train``).
        text_field: Text column of a local file or hub dataset; guessed when None.
        batch_size: Texts in each client batch (the papers' B).
        batches: Number of batches attacked (the papers use 100).
        sampler: ``dager``, ``lamp``, ``random``, or ``auto``: ``dager`` for the papers'
            datasets and ``random`` for anything else (resolved before the run starts).
        seed: Seeds the sampler (papers: 101) and the model's head initialisation.
        task: Client task, ``seq_class``, ``next_token`` (decoders) or ``seq2seq``
            (encoder-decoders; each text is its own target).
        attack: Attack name (``gradleak list attacks``).
        attack_options: Options of the attack's config, e.g. ``{"max_frontier": 512}``.
        client: How the client trains, what it shares and how it defends itself: FedAvg, LoRA,
            exposure, frozen parts, DP-SGD, noise, pruning, quantisation, secure aggregation
            (``clients``). A mapping of ClientSettings' fields is parsed into it; ``expose``,
            ``train_mode`` and ``max_length`` are read and written beside ``model:``.
        dtype: Parameter dtype of the model on both sides.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available; resolved before the run).
        matching: How reconstructions are matched to references: ``hungarian`` or ``dager``.
        keep_special_tokens: Score with special tokens kept, as the papers' code did.
    """

    model: str = field(
        metadata=_help("Model specification (bundled alias, random:ARCH, path, hub id).")
    )
    dataset: str = field(
        default="demo",
        metadata=_help("demo, cola, sst2, rotten_tomatoes, a local file or a hub id."),
    )
    split: str = field(default="train", metadata=_help("Dataset split."))
    text_field: str | None = field(
        default=None, metadata=_help("Text column (guessed when obvious).")
    )
    batch_size: int = field(default=1, metadata=_help("Texts per client batch (B)."))
    batches: int = field(default=1, metadata=_help("Number of batches to attack."))
    sampler: str = field(default=AUTO_SAMPLER, metadata=_help("dager, lamp, random or auto."))
    seed: int = field(default=101, metadata=_help("Seed of the sampler and of the model's head."))
    task: str = field(
        default="seq_class",
        metadata=_help(
            "seq_class, next_token (decoders) or seq2seq (encoder-decoders: the source to the "
            "encoder, the target to the decoder; each text is its own target)."
        ),
    )
    attack: str = field(default="dager", metadata=_help("Attack name (gradleak list attacks)."))
    attack_options: Mapping[str, Any] = field(
        default_factory=dict, metadata=_help("Attack settings.")
    )
    client: ClientSettings = field(
        default_factory=ClientSettings,
        metadata=_help("Client training and defences: ClientSettings' fields (algo, sigma, ...)."),
    )
    dtype: str = field(default="float32", metadata=_help("Model dtype: " + ", ".join(DTYPES) + "."))
    device: str = field(default="cpu", metadata=_help("cpu, cuda or auto."))
    matching: str = field(default="hungarian", metadata=_help("hungarian or dager."))
    keep_special_tokens: bool = field(
        default=False, metadata=_help("Score with special tokens kept.")
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "attack_options", dict(self.attack_options or {}))
        clients = _clients_given(self.client)
        client, client_problems = _parse_client(self.client)
        object.__setattr__(self, "client", client)
        problems = client_problems + _problems(self, clients=clients)
        if problems:
            raise ConfigError("Invalid run config: " + "; ".join(problems) + ".")

    def resolved(self) -> RunConfig:
        """Returns the config with ``auto`` sampler and device replaced by what will run."""
        changes: dict[str, Any] = {}
        if self.sampler == AUTO_SAMPLER:
            from gradleak.data.sources import known_name

            changes["sampler"] = "dager" if known_name(self.dataset) else "random"
        if self.device == "auto":
            import torch

            changes["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        return replace(self, **changes) if changes else self

    @property
    def clients(self) -> int:
        """Returns how many clients' summed update the server sees (secure aggregation)."""
        return self.client.clients

    @property
    def expose(self) -> str:
        """Returns the parameters the client shares (``client.expose``)."""
        return self.client.expose

    @property
    def train_mode(self) -> bool:
        """Returns whether the client computes with dropout on (``client.train_mode``)."""
        return self.client.train_mode

    @property
    def max_length(self) -> int | None:
        """Returns the client's truncation in tokens (``client.max_length``), for scoring too."""
        return self.client.max_length

    def client_settings(self) -> ClientSettings:
        """Returns the settings of one client of this run (``client``)."""
        return self.client

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as plain JSON values, keys in field order.

        The client's run-level fields come just before ``client``, which holds the others.
        """
        data: dict[str, Any] = {}
        for f in fields(self):
            if f.name == CLIENT_KEY:
                data.update(_run_level_values(self.client))
                data[CLIENT_KEY] = _client_block(self.client)
            else:
                data[f.name] = getattr(self, f.name)
        data["attack_options"] = dict(sorted(self.attack_options.items()))
        return data

    def fingerprint(self) -> str:
        """Returns a short hash of the config; equal configs give equal fingerprints.

        A default client is left out of the hash, so runs made before the ``client`` key existed
        keep their fingerprint (and their run directories resume).
        """
        data = self.to_dict()
        if data[CLIENT_KEY] == _client_block(ClientSettings()):
            del data[CLIENT_KEY]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

    def differences(self, other: RunConfig) -> list[str]:
        """Returns ``key: mine -> other`` for each field (or ``client.KEY``) where they differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        out = []
        for key in mine:
            if mine[key] == theirs[key]:
                continue
            if key in MAPPING_FIELDS:
                a, b = mine[key], theirs[key]
                out += [
                    f"{key}.{sub}: {a.get(sub)!r} -> {b.get(sub)!r}"
                    for sub in dict.fromkeys([*a, *b])
                    if a.get(sub) != b.get(sub)
                ]
            else:
                out.append(f"{key}: {mine[key]!r} -> {theirs[key]!r}")
        return out

    def to_yaml(self) -> str:
        """Returns the config as YAML that :func:`load_config_file` reads back."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Returns the config keys, in the order :meth:`to_dict` writes them."""
        names = [f.name for f in fields(cls)]
        at = names.index(CLIENT_KEY)
        return (*names[:at], *run_level_keys(), *names[at:])


def _parse_client(value: Any) -> tuple[ClientSettings, list[str]]:
    """Returns the ClientSettings of a mapping of its fields (or of itself), and its problems."""
    if isinstance(value, ClientSettings):
        return value, []
    if not isinstance(value, Mapping):
        return ClientSettings(), [
            f"client must be a mapping of client settings to values, got {value!r}"
        ]
    try:
        return ClientSettings.from_dict(value), []
    except ClientSettingsError as err:
        detail = str(err).removeprefix("Invalid client settings: ").rstrip(".")
        return ClientSettings(), [f"client settings: {detail}"]


def _run_level_values(client: ClientSettings) -> dict[str, Any]:
    values = client.to_dict()
    return {key: values[key] for key in run_level_keys()}


def _client_block(client: ClientSettings) -> dict[str, Any]:
    """Returns the ``client:`` mapping of a config file: every field but the run-level ones."""
    run_level = run_level_keys()
    return {k: v for k, v in client.to_dict().items() if k not in run_level}


def client_keys() -> tuple[str, ...]:
    """Returns the keys of a config file's ``client:`` mapping, in field order."""
    return tuple(f.name for f in setting_fields() if not f.metadata["run_level"])


_INT_FIELDS = ("batch_size", "batches", "seed")
_STR_FIELDS = (
    "model",
    "dataset",
    "split",
    "sampler",
    "task",
    "attack",
    "dtype",
    "device",
    "matching",
)


def _problems(config: RunConfig, *, clients: int | None) -> list[str]:
    """Returns every problem of ``config`` (empty when valid), each naming the field and value."""
    problems = []
    for name in _STR_FIELDS:
        value = getattr(config, name)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{name} must be a non-empty string, got {value!r}")
    if config.text_field is not None and not isinstance(config.text_field, str):
        problems.append(f"text_field must be a string, got {config.text_field!r}")
    for name in _INT_FIELDS:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{name} must be an integer, got {value!r}")
        elif name != "seed" and value < 1:
            problems.append(f"{name} must be at least 1, got {value}")
    if not isinstance(config.keep_special_tokens, bool):
        problems.append(
            f"keep_special_tokens must be true or false, got {config.keep_special_tokens!r}"
        )
    if problems:  # the name checks below need well-typed values
        return problems
    problems += _choice_problems(config)
    if clients is not None:
        problems += _clients_problems(config.batch_size, clients)
    return problems


def _clients_given(client: Any) -> int | None:
    """Returns the ``clients`` of a client (settings or mapping), None when it is no integer.

    Read before the client is parsed, so that the check against the batch size is reported
    together with the client's own problems.
    """
    if isinstance(client, ClientSettings):
        return client.clients
    value = client.get("clients", 1) if isinstance(client, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _clients_problems(batch_size: int, clients: int) -> list[str]:
    """Returns the problem of more secure-aggregation clients than texts in a batch."""
    if clients > batch_size:
        return [
            f"client.clients {clients} exceeds batch_size {batch_size}: secure aggregation "
            "splits each batch among the clients, so each needs a text"
        ]
    return []


def _choice_problems(config: RunConfig) -> list[str]:
    """Returns the problems of fields that must name one of a registry's entries."""
    from gradleak.attacks import attack_names
    from gradleak.data import SAMPLERS
    from gradleak.models import TASKS
    from gradleak.scoring import MATCHINGS

    choices = {
        "sampler": (AUTO_SAMPLER, *sorted(SAMPLERS)),
        "task": TASKS,
        "attack": tuple(attack_names()),
        "dtype": DTYPES,
        "device": DEVICES,
        "matching": tuple(sorted(MATCHINGS)),
    }
    problems = []
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed and not (name == "device" and re.fullmatch(r"cuda:\d+", value)):
            problems.append(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return problems


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Returns the key -> value mapping of a YAML config file, keys normalised to underscores.

    Raises:
        ConfigError: The file is missing, is not YAML, or does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping of keys to values.")
    return normalise_keys(data, source=str(path))


def normalise_keys(values: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Returns ``values`` with ``batch-size`` style keys spelled ``batch_size``.

    Raises:
        ConfigError: A key is not a string.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: config keys must be strings, got {key!r}.")
        out[key.strip().replace("-", "_")] = value
    return out


def build_config(
    file_values: Mapping[str, Any] | None = None,
    cli_values: Mapping[str, Any] | None = None,
    *,
    source: str = "the config file",
) -> RunConfig:
    """Returns the RunConfig from file values overridden by command-line values.

    Command-line values that are None were not given and leave the file's value in place.
    ``attack_options`` and ``client`` are merged key by key, later ones winning: the file's
    client run-level keys (``expose``), its mapping, its dotted keys (``client.sigma``), then the
    same three of the command line.

    Raises:
        ConfigError: A key is unknown, ``model`` is missing, or a value is invalid (all
            problems are listed together).
    """
    file_values = normalise_keys(file_values or {}, source=source)
    cli = {
        k: v
        for k, v in normalise_keys(cli_values or {}, source="the command line").items()
        if v is not None
    }
    known = set(RunConfig.field_names())
    _check_keys(file_values, known, source)
    merged = {k: v for k, v in file_values.items() if k in known}
    for name in MAPPING_FIELDS:
        layers = (
            _run_level(merged) if name == CLIENT_KEY else None,
            merged.get(name),
            _dotted(file_values, name),
            _run_level(cli) if name == CLIENT_KEY else None,
            cli.pop(name, None),
            _dotted(cli, name),
        )
        combined: dict[str, Any] = {}
        for layer in layers:
            if layer is None:
                continue
            if not isinstance(layer, Mapping):
                raise ConfigError(f"{name} must be a mapping of names to values, got {layer!r}.")
            combined.update(normalise_keys(layer, source=name) if name == CLIENT_KEY else layer)
        merged[name] = combined
    merged.update({k: v for k, v in cli.items() if "." not in k})
    if not merged.get("model"):
        raise ConfigError(
            "No model given: pass --model (e.g. --model smollm2-135m) or set model: in the "
            "config file."
        )
    return RunConfig(**merged)


def _run_level(values: dict[str, Any]) -> dict[str, Any]:
    """Removes the client's run-level keys (``expose``, ...) from ``values`` and returns them."""
    return {key: values.pop(key) for key in run_level_keys() if key in values}


def _dotted(values: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Returns ``{"sigma": v}`` for every key ``NAME.sigma`` of ``values``."""
    prefix = name + "."
    return {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}


def _check_keys(values: Mapping[str, Any], known: set[str], source: str) -> None:
    """Raises ConfigError naming every unknown key; a client key at the top level gets a hint."""
    dotted = tuple(f"{name}." for name in MAPPING_FIELDS)
    unknown = sorted(
        k for k in values if k not in known and k not in PLACEMENT_KEYS and not k.startswith(dotted)
    )
    if not unknown:
        return
    misplaced = [k for k in unknown if k in client_keys()]
    hint = (
        f" ({', '.join(misplaced)}: client settings go under client:, e.g. "
        f"client: {{{misplaced[0]}: ...}}, or as client.{misplaced[0]})"
        if misplaced
        else ""
    )
    raise ConfigError(
        f"{source} has unknown key(s) {', '.join(unknown)}{hint}; "
        f"known keys: {', '.join(sorted(known))}."
    )


def parse_option_value(text: str) -> Any:
    """Returns a command-line ``KEY=VALUE`` value as YAML reads it (``1e-5`` is a number)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_options(pairs: list[str] | None) -> dict[str, Any] | None:
    """Returns ``{"key": value}`` from ``["key=value", ...]``, or None when there are none.

    Raises:
        ConfigError: An item has no ``=``.
    """
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"Attack option {pair!r} must look like KEY=VALUE, e.g. max_frontier=512."
            )
        out[key.strip()] = parse_option_value(value.strip())
    return out
