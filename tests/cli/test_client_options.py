"""The client options are generated from ClientSettings: one per field, its help and its default."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
import typer
from typer.testing import CliRunner

from gradleak.cli.attack import attack_command
from gradleak.cli.client_options import option_help, with_client_options
from gradleak.cli.simulate import simulate
from gradleak.client import ClientSettings


@pytest.mark.parametrize("command", [attack_command, simulate])
def test_every_setting_has_an_option_with_its_help_and_default(command):
    parameters = inspect.signature(command).parameters
    for f in fields(ClientSettings):
        option = parameters[f.name].default
        assert (
            option.help
            == option_help(f)
            == f"{f.metadata['help']} (default: {f.metadata['shown']})"
        )
        assert option.default is None  # not given: a config file's value stays
        if f.metadata["shown"] != str(f.default):  # only defaults that read badly are described
            assert f.default is None or isinstance(f.default, (bool, tuple)), f.name


def _given(*args: str) -> dict:
    """Returns the ``client`` mapping a command decorated with the options receives."""
    app, seen = typer.Typer(), {}

    @app.command()
    @with_client_options
    def run(client: dict | None = None) -> None:
        seen["client"] = client

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return seen["client"]


def _flag_and_value(f) -> tuple[list[str], object]:
    """Returns command-line words setting field ``f`` to a non-default value, and that value."""
    flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
    kind = str(f.type).removesuffix(" | None")
    if kind == "bool":
        return [flag.split("/")[0]], True
    if f.metadata["repeatable"]:
        return [flag, "noise", flag, "prune"], ["noise", "prune"]
    value = {"int": 7, "float": 0.5, "str": "x", "tuple[str, ...]": "a,b"}[kind]
    return [flag, str(value)], value


def test_each_option_sets_its_field_by_name_and_nothing_given_is_the_default():
    assert _given() == {} and ClientSettings.from_dict(_given()) == ClientSettings()
    for f in fields(ClientSettings):
        words, value = _flag_and_value(f)
        assert _given(*words) == {f.name: value}, f.name
