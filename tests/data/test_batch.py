"""Batch validation, and the data package's public names."""

from __future__ import annotations

import numpy as np
import pytest

import gradleak.data
from gradleak.data import Batch
from gradleak.errors import GradleakError


def test_batch_stores_tuples_and_plain_ints():
    batch = Batch(texts=["a ", "b"], labels=[np.int64(1), 0], indices=[3, 4], source="x")
    assert batch.texts == ("a ", "b") and len(batch) == 2
    assert batch.labels == (1, 0) and type(batch.labels[0]) is int
    assert hash(batch) == hash(Batch(texts=("a ", "b"), labels=(1, 0), indices=(3, 4), source="x"))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"texts": ()}, "empty"),
        ({"texts": ("a", 3)}, "strings"),
        ({"texts": ("a", "b"), "labels": (1,)}, "1 entries for 2"),
        ({"texts": ("a",), "labels": ("pos",)}, "integers"),
        ({"texts": ("a",), "indices": (0, 1)}, "indices has 2"),
    ],
)
def test_batch_rejects_bad_input(kwargs, fragment):
    with pytest.raises(GradleakError, match=fragment):
        Batch(**kwargs)


def test_every_public_name_imports():
    names = gradleak.data.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(gradleak.data, name) is not None
