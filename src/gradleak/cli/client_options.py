"""The client options of ``gradleak attack`` and ``simulate``, generated from ClientSettings.

Every field of :class:`~gradleak.client.ClientSettings` becomes one option, ``--FIELD-NAME`` (or
the field's ``flag`` metadata), with the field's help, its default as the help shows it, and its
panel. :func:`with_client_options` adds them to a command's signature, which typer reads, and
hands the command one ``client`` mapping of the options given on the command line, keyed by field
name (options not given are left out, so a config file can set them).

Importing this module imports neither torch nor the client's training code.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import Field
from typing import Any

import typer

from gradleak.client.settings import setting_fields

__all__ = ["client_parameters", "option_help", "with_client_options"]

_CLI_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "tuple[str, ...]": str,  # comma-separated names
}


def option_help(f: Field) -> str:
    """Returns the help of a setting's option: the field's help and its default."""
    return f"{f.metadata['help']} (default: {f.metadata['shown']})"


def _option(f: Field) -> Any:
    """Returns the typer.Option of a setting, default None (not given)."""
    flag = f.metadata["flag"]
    declarations = (flag,) if flag else ()
    return typer.Option(
        None, *declarations, help=option_help(f), rich_help_panel=f.metadata["panel"]
    )


def _cli_type(f: Field) -> Any:
    if f.metadata["repeatable"]:
        return list[str]
    return _CLI_TYPES[str(f.type).removesuffix(" | None")]


def client_parameters() -> list[inspect.Parameter]:
    """Returns one keyword-only parameter per ClientSettings field, as typer reads them."""
    return [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=_option(f), annotation=_cli_type(f)
        )
        for f in setting_fields()
    ]


def with_client_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Returns ``command`` with every client option added; it receives them as ``client``.

    ``client`` is a dict of the options given (those left at None, and an empty ``--defence``,
    are left out), keyed by ClientSettings field name, as in a config file's ``client:``.
    """
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name != "client"]
    added = client_parameters()
    clash = {p.name for p in own} & {p.name for p in added}
    if clash:
        raise TypeError(f"{command.__name__} already has parameters {sorted(clash)}")

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {p.name: kwargs.pop(p.name, None) for p in added}
        client = {k: v for k, v in given.items() if v is not None and v != []}
        return command(*args, client=client, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    return wrapper
