"""The ``gradleak`` command: one thin module per subcommand, each building on the library."""

from gradleak.cli.app import app, main

__all__ = ["app", "main"]
