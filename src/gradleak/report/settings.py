"""A run's settings as the report shows them: what was chosen, not every default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradleak.report.load import RunResult

__all__ = ["flat_config", "settings_rows"]

#: Always shown first: what was attacked.
_ALWAYS = ("model", "dataset")


def settings_rows(run: RunResult) -> list[tuple[str, str]]:
    """Returns ``(setting, value)`` rows: the model and dataset, then what differs from defaults.

    Summaries written before ``settings_changed`` existed show every set value of the config.
    """
    config = run.config
    changed = run.summary.get("settings_changed")
    if changed is None:
        changed = {k: v for k, v in flat_config(config).items() if v not in (None, "", [], {})}
    rows = [(key, _text(config.get(key))) for key in _ALWAYS if key in config]
    rows += [(key, _text(value)) for key, value in changed.items() if key not in _ALWAYS]
    return rows


def flat_config(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Returns a config with its mappings' keys made flat: ``client.sigma``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)
