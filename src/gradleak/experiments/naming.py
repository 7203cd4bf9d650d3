"""Folder names for runs: readable, filesystem-safe, and stable for a given config."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradleak.experiments.config import RunConfig

__all__ = ["DEFAULT_ROOT", "default_run_dir", "run_name", "slug"]

DEFAULT_ROOT = Path("runs")
_MAX = 48


def slug(value: Any, *, max_length: int = _MAX) -> str:
    """Returns ``value`` as a filesystem-safe word; long values keep a head and a hash of the
    rest."""
    text = json.dumps(value, sort_keys=True) if isinstance(value, (Mapping, list)) else str(value)
    out = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-.") or "x"
    if len(out) > max_length:
        out = f"{out[: max_length - 9]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return out


def run_name(point: Mapping[str, Any]) -> str:
    """Returns a folder name for one combination of sweep values, e.g.
    ``dataset-cola_batch_size-4``."""
    if not point:
        return "run"
    return "_".join(f"{key}-{slug(value)}" for key, value in point.items())


def default_run_dir(config: RunConfig, *, root: str | Path = DEFAULT_ROOT) -> Path:
    """Returns ``runs/ATTACK-DATASET-MODEL-bB[-CLIENT]-FINGERPRINT``: the same command resumes the
    same run.

    CLIENT names a non-default client's algorithm, LoRA, defences and clients
    (``-fedavg-noise-k2``).

    ``config`` should be resolved (see :meth:`RunConfig.resolved`), so the name says what ran.
    """
    dataset = slug(
        Path(config.dataset).stem if Path(config.dataset).suffix else config.dataset, max_length=24
    )
    model = slug(config.model.removeprefix("random:"), max_length=32)
    client = _client_tag(config)
    return (
        Path(root)
        / f"{config.attack}-{dataset}-{model}-b{config.batch_size}{client}-{config.fingerprint()}"
    )


def _client_tag(config: RunConfig) -> str:
    """Returns ``-fedavg-lora-noise+prune-k4`` style words for a non-default client, else ``""``."""
    client = config.client
    words = ["fedavg"] if client.algo != "fedsgd" else []
    words += ["lora"] if client.uses_lora else []
    words += ["+".join(client.defence)] if client.defence else []
    words += [f"k{client.clients}"] if client.clients > 1 else []
    return "".join(f"-{slug(w, max_length=24)}" for w in words)
