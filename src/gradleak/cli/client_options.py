"""The client options of ``gradleak attack`` and ``gradleak simulate``, defined once.

Each option is one row of :data:`OPTIONS`: its name is the key of a config file's ``client:``
mapping (``--local-epochs`` is ``client: {local_epochs: ...}``), its default is ClientSettings'
(a test keeps the two equal). :func:`with_client_options` adds every option to a command's
signature, which typer reads, and hands the command one ``client`` mapping holding the options
given on the command line (options not given are left out, so a config file can set them).

Importing this module imports neither torch nor the client.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import typer

__all__ = ["CLIENT_PANEL", "DEFENCES_PANEL", "OPTIONS", "ClientOption", "with_client_options"]

CLIENT_PANEL = "Client training"
DEFENCES_PANEL = "Defences"


@dataclass(frozen=True)
class ClientOption:
    """One client option.

    Attributes:
        key: The ``client`` config key; the option is ``--KEY`` with dashes.
        type: The value type typer parses (``list[str]`` for a repeatable option).
        help: What it does.
        default: ClientSettings' default, shown in the help.
        shown: How the help shows the default, when ``str(default)`` would not do.
        panel: The help panel.
        decls: Explicit option declarations (a boolean's ``--x/--no-x``).
        extra: More typer.Option arguments (``min``).
    """

    key: str
    type: Any
    help: str
    default: Any
    shown: str | None = None
    panel: str = CLIENT_PANEL
    decls: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def option(self, help_text: str | None = None) -> Any:
        """Returns the typer.Option, default None (not given)."""
        shown = self.shown if self.shown is not None else str(self.default)
        text = f"{help_text or self.help} (default: {shown})"
        return typer.Option(None, *self.decls, help=text, rich_help_panel=self.panel, **self.extra)


_D = DEFENCES_PANEL
OPTIONS: tuple[ClientOption, ...] = (
    ClientOption(
        "algo", str, "fedsgd (one gradient) or fedavg (local SGD, weight delta).", "fedsgd"
    ),
    ClientOption("local_epochs", int, "FedAvg local epochs E.", 1),
    ClientOption("mini_batch", int, "FedAvg mini-batch size b.", None, "the whole batch"),
    ClientOption("lr", float, "FedAvg learning rate.", 1e-4),
    ClientOption(
        "disclose",
        str,
        "Facts the server is told, comma-separated ('none' for nothing): batch_size, "
        "learning_rate, local_epochs, local_steps, mini_batch.",
        ("learning_rate", "local_epochs", "local_steps", "mini_batch"),
        "all but batch_size",
    ),
    ClientOption(
        "freeze_embeddings",
        bool,
        "Keep the embeddings frozen (not trained, not shared).",
        False,
        decls=("--freeze-embeddings/--no-freeze-embeddings",),
    ),
    ClientOption(
        "lora_rank",
        int,
        "Train LoRA adapters of this rank (PEFT); only they are shared.",
        None,
        "no LoRA",
    ),
    ClientOption("lora_alpha", float, "LoRA alpha.", None, "the rank"),
    ClientOption("lora_targets", str, "Roles with adapters, e.g. q,v.", None, "the family's"),
    ClientOption(
        "lora_warmup_steps", int, "Warm the adapter up this many steps on seeded random tokens.", 0
    ),
    ClientOption("lora_warmup_lr", float, "Learning rate of the adapter warm-up.", 1e-2),
    ClientOption("lora_adapter", str, "A saved PEFT adapter folder to start from.", None, "none"),
    ClientOption(
        "lora_seed", int, "Seed of the adapter's initialisation (public: the server sent it).", 0
    ),
    ClientOption("clients", int, "Secure aggregation over this many clients.", 1, extra={"min": 1}),
    ClientOption(
        "defence",
        list[str],
        "dp-sgd, noise, prune or quantize; repeat or comma-separate to chain.",
        (),
        "none",
        panel=_D,
    ),
    ClientOption("noise_multiplier", float, "DP-SGD noise multiplier sigma.", 1.0, panel=_D),
    ClientOption("clip", float, "DP-SGD per-example clipping bound C.", 1.0, panel=_D),
    ClientOption("dp_delta", float, "DP delta for the reported epsilon.", 1e-5, panel=_D),
    ClientOption(
        "dp_sample_rate",
        float,
        "Sampling rate stated to the accountant.",
        None,
        "mini-batch / batch",
        panel=_D,
    ),
    ClientOption(
        "dp_steps", int, "Steps stated to the accountant.", None, "the update's steps", panel=_D
    ),
    ClientOption("dp_accountant", str, "Opacus accountant: rdp, prv or gdp.", "rdp", panel=_D),
    ClientOption("sigma", float, "Std of plain Gaussian noise (defence 'noise').", 1e-4, panel=_D),
    ClientOption(
        "prune_ratio", float, "Fraction of entries pruned (defence 'prune').", 0.9, panel=_D
    ),
    ClientOption(
        "prune_scope",
        str,
        "Rank magnitudes per tensor or global (defence 'prune').",
        "tensor",
        panel=_D,
    ),
    ClientOption("quant", str, "int8 or fp16 (defence 'quantize').", "int8", panel=_D),
    ClientOption(
        "noise_seed", int, "Seed of the defences' noise (kept out of the update).", 0, panel=_D
    ),
)


def with_client_options(
    *, help_overrides: dict[str, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Returns a decorator adding every client option to a typer command.

    The command takes a keyword ``client`` instead: a dict of the options given (those left at
    None, and an empty ``--defence``, are left out), keyed as in a config file.

    Args:
        help_overrides: Help texts replacing the shared one for this command, by key.
    """
    overrides = help_overrides or {}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != "client"]
        clash = {p.name for p in own} & {o.key for o in OPTIONS}
        if clash:
            raise TypeError(f"{command.__name__} already has parameters {sorted(clash)}")
        added = [
            inspect.Parameter(
                o.key,
                inspect.Parameter.KEYWORD_ONLY,
                default=o.option(overrides.get(o.key)),
                annotation=o.type,
            )
            for o in OPTIONS
        ]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {o.key: kwargs.pop(o.key, None) for o in OPTIONS}
            client = {k: v for k, v in given.items() if v is not None and v != []}
            return command(*args, client=client, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        return wrapper

    return decorate
