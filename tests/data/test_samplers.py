"""Samplers: determinism, disjointness, and parity with DAGER's reference sampling code."""

from __future__ import annotations

import numpy as np
import pytest

from gradleak.data import (
    Batch,
    TextSource,
    dager_sampler,
    lamp_sampler,
    load_texts,
    make_batches,
    random_sampler,
    sample_batches,
)
from gradleak.errors import GradleakError, UnknownSpecError


def reference_dager(texts, *, batch_size, n_batches, seed):
    """DAGER's utils/data.py `--split val` protocol, restated with numpy's global generator."""
    np.random.seed(seed)
    idxs = list(range(len(texts)))
    np.random.shuffle(idxs)
    n_samples = n_batches * batch_size
    idxs = idxs[1000:]
    final_idxs = []
    while len(final_idxs) < n_samples:
        zipped = [(idx, len(texts[idx])) for idx in idxs]
        zipped = sorted(zipped, key=lambda x: x[1])
        chunk_sz = max(len(zipped) // n_samples, 1)
        for i in range(min(len(zipped), n_samples - len(final_idxs))):
            tmp = chunk_sz * i + np.random.randint(0, chunk_sz)
            final_idxs.append(zipped[tmp][0])
        np.random.shuffle(idxs)
    np.random.shuffle(final_idxs)
    return [tuple(final_idxs[i * batch_size : (i + 1) * batch_size]) for i in range(n_batches)]


@pytest.fixture(scope="module")
def synthetic():
    """1,300 texts of 1 to 60 characters (many equal lengths, so tie order matters)."""
    rng = np.random.default_rng(7)
    return [("x" * int(k)) for k in rng.integers(1, 61, size=1300)]


@pytest.mark.parametrize(("batch_size", "n_batches"), [(1, 10), (4, 25), (8, 30), (16, 30)])
def test_dager_sampler_matches_the_reference_code(synthetic, batch_size, n_batches):
    # (16, 30) needs 480 > 300 usable texts: the reference's second pass with repeats.
    ours = dager_sampler(synthetic, batch_size=batch_size, n_batches=n_batches, seed=101)
    state = np.random.get_state()
    try:
        expected = reference_dager(synthetic, batch_size=batch_size, n_batches=n_batches, seed=101)
    finally:
        np.random.set_state(state)
    assert ours == expected
    assert len(ours) == n_batches and all(len(b) == batch_size for b in ours)


def test_dager_sampler_quirks_drop_reserved_and_longest(synthetic):
    # Distinct lengths make "the longest len mod n are never drawn" exact.
    texts = ["y" * (i + 1) for i in range(1150)]
    batches = dager_sampler(texts, batch_size=7, n_batches=10, seed=3)
    drawn = {i for b in batches for i in b}
    assert len(drawn) == 70
    rng = np.random.RandomState(3)
    order = list(range(1150))
    rng.shuffle(order)
    assert drawn.isdisjoint(order[:1000])
    usable = sorted(order[1000:], key=lambda i: len(texts[i]))
    assert drawn.isdisjoint(usable[-(150 % 70) :])


def test_dager_sampler_repeats_when_the_pool_is_too_small(synthetic):
    drawn = [i for b in dager_sampler(synthetic, batch_size=16, n_batches=30) for i in b]
    assert len(drawn) == 480 and len(set(drawn)) < 480


def test_dager_sampler_needs_more_than_1000_texts():
    with pytest.raises(GradleakError, match="more than 1000"):
        dager_sampler(["a"] * 40, batch_size=2, n_batches=2)


def test_lamp_sampler_is_the_shuffled_head_and_disjoint_from_dager(synthetic):
    lamp = lamp_sampler(len(synthetic), batch_size=4, n_batches=25)
    rng = np.random.RandomState(101)
    order = list(range(len(synthetic)))
    rng.shuffle(order)
    assert [i for b in lamp for i in b] == order[:100]
    dager = dager_sampler(synthetic, batch_size=4, n_batches=25)
    assert {i for b in lamp for i in b}.isdisjoint({i for b in dager for i in b})
    with pytest.raises(GradleakError, match="at most 1000"):
        lamp_sampler(5000, batch_size=16, n_batches=100)


def test_random_sampler_is_seeded_and_without_replacement():
    first = random_sampler(40, batch_size=4, n_batches=10, seed=5)
    assert first == random_sampler(40, batch_size=4, n_batches=10, seed=5)
    assert first != random_sampler(40, batch_size=4, n_batches=10, seed=6)
    assert sorted(i for b in first for i in b) == list(range(40))
    assert all(type(i) is int for b in first for i in b)
    with pytest.raises(GradleakError, match="41 distinct"):
        random_sampler(40, batch_size=41, n_batches=1, seed=0)
    with pytest.raises(GradleakError, match="batch_size"):
        random_sampler(40, batch_size=0, n_batches=1, seed=0)


def test_make_batches_and_sample_batches_on_the_demo_set():
    demo = load_texts("demo")
    batches = sample_batches(demo, protocol="lamp", batch_size=4, n_batches=3)
    assert [len(b) for b in batches] == [4, 4, 4]
    first = batches[0]
    assert isinstance(first, Batch) and first.source == "demo/train"
    assert first.texts == tuple(demo.texts[i] for i in first.indices)
    assert first.labels == tuple(demo.labels[i] for i in first.indices)
    with pytest.raises(UnknownSpecError, match="dager"):
        sample_batches(demo, protocol="nope", batch_size=1, n_batches=1)


def test_make_batches_without_labels():
    source = TextSource(texts=("a", "b", "c"), labels=None, name="f.txt")
    (batch,) = make_batches(source, [(2, 0)])
    assert batch.texts == ("c", "a") and batch.labels is None and batch.source == "f.txt"


@pytest.mark.shared
def test_cola_seed_101_first_shuffled_index_is_2310(shared_dir, monkeypatch):
    monkeypatch.setenv("GRADLEAK_SHARED_DIR", str(shared_dir))
    cola = load_texts("cola")
    assert lamp_sampler(len(cola), batch_size=1, n_batches=1)[0] == (2310,)


@pytest.mark.shared
def test_dager_sampler_on_cola_matches_reference(shared_dir, monkeypatch):
    monkeypatch.setenv("GRADLEAK_SHARED_DIR", str(shared_dir))
    texts = load_texts("cola").texts
    ours = dager_sampler(texts, batch_size=16, n_batches=100)
    state = np.random.get_state()
    try:
        assert ours == reference_dager(texts, batch_size=16, n_batches=100, seed=101)
    finally:
        np.random.set_state(state)


def test_too_many_texts_say_whether_the_batch_or_the_count_is_too_large():
    with pytest.raises(GradleakError, match=r"ask for a smaller batch \(at most 40 texts\)"):
        random_sampler(40, batch_size=50, n_batches=1, seed=0)
    with pytest.raises(GradleakError, match=r"ask for fewer batches \(at most 10 of 4\)"):
        random_sampler(40, batch_size=4, n_batches=11, seed=0)
