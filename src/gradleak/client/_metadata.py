"""Builds the public metadata of a simulated update, hiding what the client does not disclose."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradleak
from gradleak.models.loading import PublicModel
from gradleak.update import UpdateMetadata


def training_metadata(
    public: PublicModel,
    *,
    kind: str,
    exposure: str,
    batch_size: int,
    train_mode: bool,
    disclose: Sequence[str],
    facts: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> UpdateMetadata:
    """Returns metadata where each of ``facts`` (and the batch size) is None unless disclosed.

    ``facts`` holds ``learning_rate``, ``local_steps`` (metadata fields) and ``local_epochs``,
    ``mini_batch`` (``extra`` keys); ``extra["disclosed"]`` lists what the server was told, so a
    None there means "whole batch", not "unknown".
    """
    known = {**facts, "batch_size": batch_size}
    shown = {k: (v if k in disclose else None) for k, v in known.items()}
    fields = ("learning_rate", "local_steps", "batch_size")
    extra = {
        **(extra or {}),
        **{k: v for k, v in shown.items() if k not in fields},
        "disclosed": sorted(d for d in disclose if d in known),
    }
    return UpdateMetadata(
        **public.describe(),
        kind=kind,
        exposure=exposure,
        train_mode=train_mode,
        gradleak_version=gradleak.__version__,
        extra=extra,
        **{k: shown.get(k) for k in fields},
    )
