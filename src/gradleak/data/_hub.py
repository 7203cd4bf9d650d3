"""Finding the shared offline data folder, and the optional Hugging Face ``datasets`` fallback."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError, MissingDependencyError, UnknownSpecError

logger = logging.getLogger(__name__)

SHARED_ENV = "GRADLEAK_SHARED_DIR"
OFFLINE_ENVS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
LOCAL_FILE_OPTION = "--dataset path/to/file.jsonl --text-field text"


def find_shared_dir() -> Path | None:
    """Returns the shared assets folder (the one holding ``data/``), or None when there is none.

    ``$GRADLEAK_SHARED_DIR`` wins; otherwise the first ``shared/`` folder with a ``data/`` inside
    found next to the current directory or the package file, or next to one of their ancestors
    (the layout ``<work>/main`` + ``<work>/shared``).

    Raises:
        GradleakError: ``$GRADLEAK_SHARED_DIR`` is set but has no ``data/`` folder.
    """
    env = os.environ.get(SHARED_ENV)
    if env:
        path = Path(env).expanduser()
        if (path / "data").is_dir():
            return path
        raise GradleakError(
            f"{SHARED_ENV}={env!r} has no data/ folder; point it at the folder that holds data/."
        )
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in _self_and_parents(start):
            if (folder / "shared" / "data").is_dir():
                return folder / "shared"
    return None


def _self_and_parents(path: Path) -> Iterator[Path]:
    """Yields ``path`` and then each of its ancestors."""
    yield path
    yield from path.parents


def hub_offline() -> str | None:
    """Returns the name of the set offline environment variable, or None when online is allowed."""
    for name in OFFLINE_ENVS:
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


def load_hub_split(
    hub_id: str, *, config: str | None, split: str, what: str
) -> list[dict[str, Any]]:
    """Returns every row of a Hugging Face Hub dataset split, as dicts.

    The split is read whole, which suits the sentence-level sets gradleak attacks.

    Raises:
        UnknownSpecError: The Hub is offline, or the dataset or split cannot be loaded.
        MissingDependencyError: The optional ``datasets`` package is not installed.
    """
    offline = hub_offline()
    if offline:
        raise UnknownSpecError(
            f"{what} is not available locally and the Hugging Face Hub is off ({offline} is set); "
            f"use a local file instead: {LOCAL_FILE_OPTION}."
        )
    try:
        import datasets  # noqa: PLC0415 - optional extra, imported only when needed
    except ImportError as exc:
        raise MissingDependencyError(
            f"{what} is not available locally and loading it from the Hugging Face Hub needs "
            f"`pip install 'gradleak[datasets]'`; or use a local file instead: {LOCAL_FILE_OPTION}."
        ) from exc
    logger.info("Loading %s split %s from the Hugging Face Hub (%s)", what, split, hub_id)
    try:
        table = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # network, missing split, removed script...: one clear message
        detail = str(exc).split("\n")[0] or "no details"
        raise UnknownSpecError(
            f"{what} could not be loaded from the Hugging Face Hub "
            f"({type(exc).__name__}: {detail}); use a local file instead: {LOCAL_FILE_OPTION}."
        ) from exc
    return table.to_list()
