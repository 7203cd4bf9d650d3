"""The one place that imports flwr, so a missing install gives one clear sentence."""

from __future__ import annotations

from gradleak.errors import MissingDependencyError

INSTALL_HINT = "run `pip install 'gradleak[flower]'`"


def require_flwr() -> None:
    """Raises MissingDependencyError unless Flower's message API (``flwr.app``) is importable."""
    try:
        import flwr.app
        import flwr.serverapp  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            f"the Flower integration needs flwr >= 1.21 with its message API ({err}): "
            f"{INSTALL_HINT}."
        ) from None
