"""Shared fixtures: tiny random models of each family, and the real bundled models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TINY

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_models():
    """Returns a loader of tiny random models by family name, cached per (family, task)."""
    from gradleak.models import load_model

    cache = {}

    def get(family: str, task: str = "seq_class"):
        if (family, task) not in cache:
            cache[(family, task)] = load_model(TINY[family], task=task)
        return cache[(family, task)]

    return get


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Returns ../shared beside the repository, or skips when it is absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared"
    if not (path / "data").is_dir():
        pytest.skip("../shared is absent: shared-data tests skipped")
    return path
