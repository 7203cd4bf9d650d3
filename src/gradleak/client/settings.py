"""ClientSettings: everything that decides what a simulated client computes and shares.

One frozen dataclass covers the training algorithm (FedSGD or FedAvg), what is trained and shared
(exposure, frozen embeddings, LoRA), and the defences. The command line and the experiment runner
build it; :func:`gradleak.client.simulate_update` reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gradleak.errors import GradleakError

__all__ = [
    "ALGOS",
    "DEFAULT_DISCLOSE",
    "DISCLOSABLE",
    "PRUNE_SCOPES",
    "QUANT_SCHEMES",
    "ClientSettings",
    "ClientSettingsError",
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


class ClientSettingsError(GradleakError, ValueError):
    """Client settings with invalid values or combinations (all listed in one message)."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class ClientSettings:
    """How one simulated client trains on its batch and what it shares.

    Attributes:
        algo: ``fedsgd`` (one gradient on the whole batch) or ``fedavg`` (local SGD, weight delta).
        local_epochs: FedAvg epochs over the batch (DAGER Table 4: 2 to 20, default 10).
        mini_batch: FedAvg mini-batch size; None uses the whole batch per step (DAGER: 4).
        lr: FedAvg learning rate (DAGER: 1e-4; 1e-5 to 5e-4 studied).
        disclose: Training facts written into the public metadata (see :data:`DISCLOSABLE`);
            the others are None there, so an attack must do without them.
        expose: Trained and shared parameters: ``all`` or e.g. ``blocks=0,1 roles=q,k,v``. With
            LoRA only ``blocks=`` may be given: it picks the blocks that get adapters.
        freeze_embeddings: Keep token and position embeddings frozen (not trained, not shared).
        train_mode: Compute with dropout on, as a client in ``model.train()``.
        max_length: Truncate texts to this many tokens; None keeps them whole.
        lora_rank: Train LoRA adapters of this rank instead of the weights (PEFT); None: no LoRA.
        lora_alpha: LoRA scaling numerator; None uses the rank (scaling 1).
        lora_targets: Roles that get adapters; None uses the family's default (q and v).
        lora_warmup_steps: Before the round, train the adapter this many SGD steps on seeded
            random tokens, so lora_B is non-zero and lora_A's gradient carries signal.
        lora_warmup_lr: Learning rate of those warm-up steps.
        lora_adapter: A saved PEFT adapter folder to start from (its own rank and targets).
        lora_seed: Seeds PEFT's adapter initialisation and the warm-up tokens. Public: the server
            sent the adapter. Kept apart from ``seed``, which must stay secret.
        defences: Defences in the order applied: ``dp-sgd`` (during training) then any of
            ``noise``, ``prune``, ``quantize`` on the update (see ``gradleak list defences``).
        noise_multiplier: DP-SGD noise multiplier sigma (noise std sigma*C on the clipped sum).
        clip: DP-SGD per-example clipping bound C (max_grad_norm).
        dp_delta: delta at which epsilon is reported.
        dp_sample_rate: Sampling rate stated to the accountant; None uses mini-batch / batch.
        dp_steps: Steps stated to the accountant; None uses the DP steps of this update.
        dp_accountant: Opacus accountant: ``rdp``, ``prv`` or ``gdp``.
        sigma: Std of the plain Gaussian noise added to the shared tensors (DAGER App. C.4).
        prune_ratio: Fraction of entries set to zero by magnitude pruning.
        prune_scope: Rank magnitudes per ``tensor`` or across all shared tensors (``global``).
        quant: Quantisation of the shared values: ``int8`` (per-tensor symmetric) or ``fp16``.
        seed: Seeds the defences' noise; secret (never written into the metadata), since a server
            that knew it could regenerate and subtract the noise.
    """

    algo: str = field(default="fedsgd", metadata=_help("fedsgd or fedavg."))
    local_epochs: int = field(default=1, metadata=_help("FedAvg local epochs (E)."))
    mini_batch: int | None = field(
        default=None, metadata=_help("FedAvg mini-batch size (b); none: whole batch.")
    )
    lr: float = field(default=1e-4, metadata=_help("FedAvg learning rate."))
    disclose: tuple[str, ...] = field(
        default=DEFAULT_DISCLOSE, metadata=_help("Facts the server is told.")
    )
    expose: str = field(default="all", metadata=_help("Trained and shared parameters."))
    freeze_embeddings: bool = field(
        default=False, metadata=_help("Freeze token and position embeddings.")
    )
    train_mode: bool = field(default=False, metadata=_help("Dropout on."))
    max_length: int | None = field(default=None, metadata=_help("Truncation in tokens."))
    lora_rank: int | None = field(
        default=None, metadata=_help("LoRA rank; none: full fine-tuning.")
    )
    lora_alpha: float | None = field(default=None, metadata=_help("LoRA alpha; none: the rank."))
    lora_targets: tuple[str, ...] | None = field(
        default=None, metadata=_help("Roles with adapters.")
    )
    lora_warmup_steps: int = field(
        default=0, metadata=_help("Adapter warm-up steps on random tokens.")
    )
    lora_warmup_lr: float = field(default=1e-2, metadata=_help("Adapter warm-up learning rate."))
    lora_adapter: str | None = field(
        default=None, metadata=_help("PEFT adapter folder to start from.")
    )
    lora_seed: int = field(default=0, metadata=_help("Seed of the adapter init (public)."))
    defences: tuple[str, ...] = field(default=(), metadata=_help("Defences, in order."))
    noise_multiplier: float = field(default=1.0, metadata=_help("DP-SGD noise multiplier."))
    clip: float = field(default=1.0, metadata=_help("DP-SGD clipping bound C."))
    dp_delta: float = field(default=1e-5, metadata=_help("DP delta."))
    dp_sample_rate: float | None = field(
        default=None, metadata=_help("Sampling rate for the accountant.")
    )
    dp_steps: int | None = field(default=None, metadata=_help("Steps for the accountant."))
    dp_accountant: str = field(default="rdp", metadata=_help("rdp, prv or gdp."))
    sigma: float = field(default=1e-4, metadata=_help("Plain Gaussian noise std."))
    prune_ratio: float = field(default=0.9, metadata=_help("Fraction pruned."))
    prune_scope: str = field(default="tensor", metadata=_help("tensor or global."))
    quant: str = field(default="int8", metadata=_help("int8 or fp16."))
    seed: int = field(default=0, metadata=_help("Seed of the defences' noise (secret)."))

    def __post_init__(self) -> None:
        for name in ("disclose", "defences", "lora_targets"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v for v in value.replace(" ", ",").split(",") if v)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        problems = _problems(self)
        if problems:
            raise ClientSettingsError("Invalid client settings: " + "; ".join(problems) + ".")

    @property
    def uses_lora(self) -> bool:
        """Returns whether the client trains LoRA adapters instead of the weights."""
        return self.lora_rank is not None or self.lora_adapter is not None

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as plain JSON values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _problems(s: ClientSettings) -> list[str]:
    """Returns every problem of ``s`` (empty when valid), each naming the field and value."""
    problems = _type_problems(s)
    if problems:  # the checks below need well-typed values
        return problems
    problems += _range_problems(s)
    problems += _combination_problems(s)
    return problems


def _type_problems(s: ClientSettings) -> list[str]:
    problems = []
    ints = ("local_epochs", "lora_warmup_steps", "lora_seed", "seed")
    optional_ints = ("mini_batch", "max_length", "lora_rank", "dp_steps")
    floats = (
        "lr",
        "lora_warmup_lr",
        "noise_multiplier",
        "clip",
        "dp_delta",
        "sigma",
        "prune_ratio",
    )
    for name in ints + optional_ints:
        value = getattr(s, name)
        if value is None and name in optional_ints:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{name} must be an integer, got {value!r}")
    for name in floats + ("lora_alpha", "dp_sample_rate"):
        value = getattr(s, name)
        if value is None and name in ("lora_alpha", "dp_sample_rate"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{name} must be a number, got {value!r}")
    for name in ("freeze_embeddings", "train_mode"):
        if not isinstance(getattr(s, name), bool):
            problems.append(f"{name} must be true or false, got {getattr(s, name)!r}")
    for name in ("algo", "expose", "prune_scope", "quant", "dp_accountant"):
        if not isinstance(getattr(s, name), str):
            problems.append(f"{name} must be a string, got {getattr(s, name)!r}")
    return problems


def _range_problems(s: ClientSettings) -> list[str]:
    from gradleak.client.defences.registry import defence_names

    problems = []
    choices = {
        "algo": ALGOS,
        "quant": QUANT_SCHEMES,
        "prune_scope": PRUNE_SCOPES,
        "dp_accountant": ("rdp", "prv", "gdp"),
    }
    for name, allowed in choices.items():
        if getattr(s, name) not in allowed:
            problems.append(f"{name} {getattr(s, name)!r} is not one of {', '.join(allowed)}")
    for name in ("local_epochs", "mini_batch", "max_length", "lora_rank", "dp_steps"):
        value = getattr(s, name)
        if value is not None and value < 1:
            problems.append(f"{name} must be at least 1, got {value}")
    if s.lora_warmup_steps < 0:
        problems.append(f"lora_warmup_steps must be 0 or more, got {s.lora_warmup_steps}")
    for name in ("lr", "lora_warmup_lr", "clip", "sigma"):
        if not getattr(s, name) > 0:
            problems.append(f"{name} must be positive, got {getattr(s, name)}")
    if s.lora_alpha is not None and not s.lora_alpha > 0:
        problems.append(f"lora_alpha must be positive, got {s.lora_alpha}")
    if not s.noise_multiplier >= 0:
        problems.append(f"noise_multiplier must be 0 or more, got {s.noise_multiplier}")
    if not 0 < s.dp_delta < 1:
        problems.append(f"dp_delta must lie in (0, 1), got {s.dp_delta}")
    if s.dp_sample_rate is not None and not 0 < s.dp_sample_rate <= 1:
        problems.append(f"dp_sample_rate must lie in (0, 1], got {s.dp_sample_rate}")
    if not 0 <= s.prune_ratio < 1:
        problems.append(f"prune_ratio must lie in [0, 1), got {s.prune_ratio}")
    unknown = [d for d in s.disclose if d not in DISCLOSABLE]
    if unknown:
        problems.append(
            f"disclose {', '.join(unknown)} unknown; choose from {', '.join(DISCLOSABLE)}"
        )
    unknown = [d for d in s.defences if d not in defence_names()]
    if unknown:
        problems.append(
            f"defences {', '.join(unknown)} unknown; choose from {', '.join(defence_names())}"
        )
    if len(set(s.defences)) != len(s.defences):
        problems.append(f"defences {', '.join(s.defences)} name one defence twice")
    return problems


def _combination_problems(s: ClientSettings) -> list[str]:
    from gradleak.client.exposure import Exposure
    from gradleak.models.families import LINEAR_ROLES

    problems = []
    if s.algo == "fedsgd" and (s.local_epochs != 1 or s.mini_batch is not None):
        problems.append("local_epochs and mini_batch apply to algo fedavg only; set algo=fedavg")
    if "dp-sgd" in s.defences and s.defences[0] != "dp-sgd":
        problems.append("dp-sgd acts during training, so it must come first in defences")
    try:
        exposure = Exposure.parse(s.expose)
    except GradleakError as err:
        return problems + [f"expose {s.expose!r}: {err}".rstrip(".")]
    lora_only = [n for n in ("lora_alpha", "lora_targets") if getattr(s, n) is not None]
    lora_only += ["lora_seed"] if s.lora_seed else []
    lora_only += ["lora_warmup_steps"] if s.lora_warmup_steps else []
    if not s.uses_lora and lora_only:
        problems.append(f"{', '.join(lora_only)} need lora_rank or lora_adapter")
    if s.uses_lora:
        if s.lora_adapter is not None and (s.lora_rank is not None or lora_only):
            problems.append(
                "lora_adapter brings its own rank, targets and weights; drop the other lora_ options"
            )
        if exposure.roles is not None:
            problems.append("with LoRA choose roles with lora_targets, not expose roles=")
        if s.freeze_embeddings:
            problems.append("freeze_embeddings has no effect with LoRA (only adapters train)")
        bad = sorted(set(s.lora_targets or ()) - set(LINEAR_ROLES))
        if bad:
            problems.append(
                f"lora_targets {', '.join(bad)} are not linear roles ({', '.join(LINEAR_ROLES)})"
            )
    return problems
