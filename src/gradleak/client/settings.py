"""ClientSettings: everything that decides what a simulated client computes and shares.

One frozen dataclass covers the training algorithm (FedSGD or FedAvg), what is trained and shared
(exposure, frozen embeddings, LoRA), the defences and secure aggregation. It is the one form of the
client's settings: each field's metadata (:func:`setting_help` and friends) gives its help text,
how the help shows its default, its command-line flag where that is not ``--FIELD-NAME``, its
choices and its help panel, and the command-line options of ``gradleak attack`` and ``gradleak
simulate`` are generated from it. A run config's ``client:`` mapping holds the fields by name
(:meth:`ClientSettings.from_dict`); records and ``summary.json`` hold
:meth:`ClientSettings.to_dict`.

Adding a setting is adding a field here, with :func:`_setting`; validation of anything beyond its
type and choices goes in :mod:`gradleak.client.settings_checks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any

from gradleak.errors import GradleakError

__all__ = [
    "ALGOS",
    "CLIENT_PANEL",
    "DEFAULT_DISCLOSE",
    "DEFENCES_PANEL",
    "DISCLOSABLE",
    "PRUNE_SCOPES",
    "QUANT_SCHEMES",
    "ClientSettings",
    "ClientSettingsError",
    "run_level_keys",
    "setting_default",
    "setting_fields",
]

ALGOS: tuple[str, ...] = ("fedsgd", "fedavg")
#: Training facts the server may be told (the metadata field, or the ``extra`` key).
DISCLOSABLE: tuple[str, ...] = (
    "batch_size",
    "learning_rate",
    "local_epochs",
    "local_steps",
    "mini_batch",
)
#: DAGER's FedAvg setting: the server knows the client's hyper-parameters but not its batch size.
DEFAULT_DISCLOSE: tuple[str, ...] = ("learning_rate", "local_epochs", "local_steps", "mini_batch")
QUANT_SCHEMES: tuple[str, ...] = ("int8", "fp16")
PRUNE_SCOPES: tuple[str, ...] = ("tensor", "global")
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "gdp")
#: The help panels of the generated command-line options.
CLIENT_PANEL = "Client training"
DEFENCES_PANEL = "Defences"


class ClientSettingsError(GradleakError, ValueError):
    """Client settings with invalid values or combinations (all listed in one message)."""


def _setting(
    default: Any,
    help: str,
    *,
    shown: str | None = None,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    panel: str = CLIENT_PANEL,
    repeatable: bool = False,
    run_level: bool = False,
) -> Any:
    """Returns a dataclass field with the metadata the command line and run configs read.

    Args:
        default: The default value.
        help: What the setting does, as the option's help shows it.
        shown: How the help shows the default, when ``str(default)`` would not do.
        flag: The option's declaration when it is not ``--FIELD-NAME`` (``--a/--no-a``).
        choices: The values allowed (checked by the settings, listed by the help).
        panel: The help panel.
        repeatable: The option may be given several times (a list of names).
        run_level: A run config keeps the key beside ``model:`` rather than under ``client:``
            (scoring reads it too).
    """
    metadata = {
        "help": help,
        "shown": shown if shown is not None else str(default),
        "flag": flag,
        "choices": choices,
        "panel": panel,
        "repeatable": repeatable,
        "run_level": run_level,
    }
    return field(default=default, metadata=metadata)


_D = DEFENCES_PANEL


@dataclass(frozen=True)
class ClientSettings:
    """How one simulated client trains on its batch and what it shares.

    Each field's help is its metadata (``fields(ClientSettings)[i].metadata["help"]``); notes the
    help has no room for:

    - ``disclose``: the facts left out are None in the update's metadata, so an attack must do
      without them (DAGER's FedAvg setting hides the batch size).
    - ``expose``: with LoRA only ``blocks=`` may be given: it picks the blocks with adapters.
    - ``lora_seed`` is public (the server sent the adapter) and kept apart from ``noise_seed``,
      which must stay secret: a server that knew it could regenerate and subtract the noise.
    - ``clients``: :func:`gradleak.client.simulate_update` makes one client's update; the runner
      and ``gradleak simulate`` sum ``clients`` of them (secure aggregation).
    - String values of name lists are split at commas (``"noise,prune"``); ``none`` is empty.
    """

    algo: str = _setting(
        "fedsgd", "fedsgd (one gradient) or fedavg (local SGD, weight delta).", choices=ALGOS
    )
    local_epochs: int = _setting(1, "FedAvg local epochs E.")
    mini_batch: int | None = _setting(None, "FedAvg mini-batch size b.", shown="the whole batch")
    lr: float = _setting(1e-4, "FedAvg learning rate.")
    disclose: tuple[str, ...] = _setting(
        DEFAULT_DISCLOSE,
        "Facts the server is told, comma-separated ('none' for nothing): "
        + ", ".join(DISCLOSABLE)
        + ".",
        shown="all but batch_size",
        choices=DISCLOSABLE,
    )
    expose: str = _setting(
        "all", "Shared parameters: 'all' or e.g. 'blocks=0,1 roles=q,k,v'.", run_level=True
    )
    freeze_embeddings: bool = _setting(
        False,
        "Keep the embeddings frozen (not trained, not shared).",
        flag="--freeze-embeddings/--no-freeze-embeddings",
    )
    train_mode: bool = _setting(
        False,
        "Client computes with dropout on.",
        shown="eval",
        flag="--train-mode/--eval-mode",
        run_level=True,
    )
    max_length: int | None = _setting(
        None, "Client truncates texts to this many tokens.", shown="whole texts", run_level=True
    )
    lora_rank: int | None = _setting(
        None, "Train LoRA adapters of this rank (PEFT); only they are shared.", shown="no LoRA"
    )
    lora_alpha: float | None = _setting(None, "LoRA alpha.", shown="the rank")
    lora_targets: tuple[str, ...] | None = _setting(
        None, "Roles with adapters, e.g. q,v.", shown="the family's"
    )
    lora_warmup_steps: int = _setting(
        0, "Warm the adapter up this many steps on seeded random tokens."
    )
    lora_warmup_lr: float = _setting(1e-2, "Learning rate of the adapter warm-up.")
    lora_adapter: str | None = _setting(
        None, "A saved PEFT adapter folder to start from.", shown="none"
    )
    lora_seed: int = _setting(
        0, "Seed of the adapter's initialisation (public: the server sent it)."
    )
    clients: int = _setting(
        1, "Secure aggregation: the server sees only the sum of this many clients' updates."
    )
    defence: tuple[str, ...] = _setting(
        (),
        "dp-sgd, noise, prune or quantize; repeat or comma-separate to chain.",
        shown="none",
        panel=_D,
        repeatable=True,
    )
    noise_multiplier: float = _setting(1.0, "DP-SGD noise multiplier sigma.", panel=_D)
    clip: float = _setting(1.0, "DP-SGD per-example clipping bound C.", panel=_D)
    dp_delta: float = _setting(1e-5, "DP delta for the reported epsilon.", panel=_D)
    dp_sample_rate: float | None = _setting(
        None, "Sampling rate stated to the accountant.", shown="mini-batch / batch", panel=_D
    )
    dp_steps: int | None = _setting(
        None, "Steps stated to the accountant.", shown="the update's steps", panel=_D
    )
    dp_accountant: str = _setting(
        "rdp", "Opacus accountant: rdp, prv or gdp.", choices=ACCOUNTANTS, panel=_D
    )
    sigma: float = _setting(1e-4, "Std of plain Gaussian noise (defence 'noise').", panel=_D)
    prune_ratio: float = _setting(0.9, "Fraction of entries pruned (defence 'prune').", panel=_D)
    prune_scope: str = _setting(
        "tensor",
        "Rank magnitudes per tensor or global (defence 'prune').",
        choices=PRUNE_SCOPES,
        panel=_D,
    )
    quant: str = _setting(
        "int8", "int8 or fp16 (defence 'quantize').", choices=QUANT_SCHEMES, panel=_D
    )
    noise_seed: int = _setting(0, "Seed of the defences' noise (kept out of the update).", panel=_D)

    def __post_init__(self) -> None:
        from gradleak.client.settings_checks import canonical_value, problems

        for f in fields(self):
            object.__setattr__(self, f.name, canonical_value(f, getattr(self, f.name)))
        found = problems(self)
        if found:
            raise ClientSettingsError("Invalid client settings: " + "; ".join(found) + ".")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ClientSettings:
        """Returns the settings of a mapping keyed by field name (``local-epochs`` works too).

        Raises:
            ClientSettingsError: a key is not a field (the message lists the valid keys), or a
                value or combination is invalid.
        """
        given = {str(k).strip().replace("-", "_"): v for k, v in (values or {}).items()}
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ClientSettingsError(
                f"Invalid client settings: unknown key(s) {', '.join(unknown)}; the valid keys "
                f"are {', '.join(names)}."
            )
        return cls(**given)

    @property
    def uses_lora(self) -> bool:
        """Returns whether the client trains LoRA adapters instead of the weights."""
        return self.lora_rank is not None or self.lora_adapter is not None

    def to_dict(self) -> dict[str, Any]:
        """Returns every field as plain JSON values (tuples become lists), in field order."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def setting_fields() -> tuple[Field, ...]:
    """Returns ClientSettings' fields, in declaration order (the options' order in the help)."""
    return fields(ClientSettings)


def setting_default(f: Field) -> Any:
    """Returns the default of a ClientSettings field."""
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def run_level_keys() -> tuple[str, ...]:
    """Returns the fields a run config keeps beside ``model:`` instead of under ``client:``."""
    return tuple(f.name for f in setting_fields() if f.metadata["run_level"])
