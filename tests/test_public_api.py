"""Every name a package exports in ``__all__`` exists, and ``__all__`` is sorted."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import gradleak

PACKAGES = sorted(
    name for _, name, is_pkg in pkgutil.walk_packages(gradleak.__path__, "gradleak.") if is_pkg
) + ["gradleak"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", [])
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists missing names {missing}"
    assert len(set(exported)) == len(exported)
