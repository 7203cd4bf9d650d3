"""Samplers that choose which texts form each client batch, reproducing the papers' protocols.

Each sampler returns a list of index tuples, one tuple per batch; :func:`make_batches` turns them
into :class:`~gradleak.data.batch.Batch` objects. The DAGER, LAMP, TAG and partial-gradient papers
all draw their inputs from the Hugging Face **train** split, shuffled with seed 101.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from gradleak.data.batch import Batch
from gradleak.data.sources import TextSource
from gradleak.errors import GradleakError, UnknownSpecError

__all__ = [
    "SAMPLERS",
    "dager_sampler",
    "lamp_sampler",
    "make_batches",
    "random_sampler",
    "sample_batches",
]

# The reference code keeps the first 1000 shuffled train indices for --split test.
RESERVED = 1000


def dager_sampler(
    texts: TextSource | Sequence[str], *, batch_size: int, n_batches: int, seed: int = 101
) -> list[tuple[int, ...]]:
    """Returns DAGER's length-stratified batches (its ``--split val`` protocol) as index tuples.

    A transcription of DAGER's ``utils/data.py``, drawing from numpy's legacy generator exactly
    as ``np.random.seed(seed)`` followed by the same calls would:

    1. shuffle ``range(len(texts))`` and drop the first 1000 (kept for ``--split test``);
    2. sort the rest by character length (stable, so ties keep their shuffled order);
    3. with ``n = batch_size * n_batches`` and ``chunk = max(len // n, 1)``, draw index
       ``chunk * i + randint(0, chunk)`` for ``i < min(len, n - drawn)``; shuffle the pool;
       repeat from step 2 while fewer than ``n`` are drawn;
    4. shuffle the drawn indices and cut them into consecutive batches.

    Quirks kept on purpose, since the papers' numbers depend on them:

    - the longest ``len mod n`` texts can never be drawn (CoLA at B = 16: the longest 1,151);
    - when ``n`` exceeds the pool (CoLA or RT at B = 128), a second pass re-draws from the
      shortest texts, so some texts repeat, possibly within one batch;
    - the pool is re-shuffled after each pass even when no further pass follows, which shifts the
      random stream before the final shuffle.

    It assumes nothing else draws from numpy's global generator between the seeding and the
    sampling in the reference run (true for DAGER's ``attack.py``).

    Args:
        texts: The source texts (only their character lengths matter).
        batch_size: Texts per batch.
        n_batches: Number of batches (the papers use 100).
        seed: The seed given to ``np.random.seed`` (``--rng_seed``, default 101).

    Raises:
        GradleakError: The sizes are not positive, or there are 1000 texts or fewer.
    """
    texts = texts.texts if isinstance(texts, TextSource) else texts
    n_samples = _n_samples(batch_size, n_batches)
    if len(texts) <= RESERVED:
        raise GradleakError(
            f"The DAGER sampler drops the first {RESERVED} shuffled texts, so it needs more than "
            f"{RESERVED} (got {len(texts)}); use the 'lamp' or 'random' sampler instead."
        )
    rng = np.random.RandomState(seed)  # the same stream as np.random.seed(seed)
    idxs = list(range(len(texts)))
    rng.shuffle(idxs)
    idxs = idxs[RESERVED:]
    drawn: list[int] = []
    while len(drawn) < n_samples:
        by_length = sorted(idxs, key=lambda i: len(texts[i]))
        chunk = max(len(by_length) // n_samples, 1)
        for i in range(min(len(by_length), n_samples - len(drawn))):
            drawn.append(by_length[chunk * i + rng.randint(0, chunk)])
        rng.shuffle(idxs)
    rng.shuffle(drawn)
    return _cut(drawn, batch_size, n_batches)


def lamp_sampler(
    n: int, *, batch_size: int, n_batches: int, seed: int = 101
) -> list[tuple[int, ...]]:
    """Returns the first ``batch_size * n_batches`` seed-shuffled indices, cut into batches.

    This is LAMP's protocol and DAGER's ``--split test`` (used by its TAG/LAMP baselines): shuffle
    ``range(n)`` after ``np.random.seed(seed)`` and take the head. The reference code refuses more
    than 1000 samples, which keeps these indices disjoint from :func:`dager_sampler`'s.

    Raises:
        GradleakError: The sizes are not positive or ask for more than ``min(n, 1000)`` texts.
    """
    n_samples = _n_samples(batch_size, n_batches)
    limit = min(n, RESERVED)
    if n_samples > limit:
        raise GradleakError(
            f"The LAMP sampler takes at most {limit} texts here (the first {RESERVED} shuffled of "
            f"{n}), but {n_batches} batches of {batch_size} need {n_samples}; "
            f"{_what_fits(batch_size, limit)}."
        )
    rng = np.random.RandomState(seed)
    idxs = list(range(n))
    rng.shuffle(idxs)
    return _cut(idxs[:n_samples], batch_size, n_batches)


def random_sampler(n: int, *, batch_size: int, n_batches: int, seed: int) -> list[tuple[int, ...]]:
    """Returns batches of indices drawn from ``range(n)`` without replacement (numpy Generator).

    Raises:
        GradleakError: The sizes are not positive or ask for more than ``n`` texts.
    """
    n_samples = _n_samples(batch_size, n_batches)
    if n_samples > n:
        raise GradleakError(
            f"{n_batches} batches of {batch_size} need {n_samples} distinct texts, but the source "
            f"has {n}; {_what_fits(batch_size, n)}."
        )
    drawn = np.random.default_rng(seed).choice(n, size=n_samples, replace=False)
    return _cut([int(i) for i in drawn], batch_size, n_batches)


def _what_fits(batch_size: int, limit: int) -> str:
    """Returns what to ask for when batches need more than ``limit`` texts."""
    if batch_size > limit:
        return f"ask for a smaller batch (at most {limit} texts)"
    return f"ask for fewer batches (at most {limit // batch_size} of {batch_size})"


Sampler = Callable[..., list[tuple[int, ...]]]
SAMPLERS: dict[str, Sampler] = {
    "dager": lambda src, **kw: dager_sampler(src, **kw),
    "lamp": lambda src, **kw: lamp_sampler(len(src), **kw),
    "random": lambda src, **kw: random_sampler(len(src), **kw),
}


def sample_batches(
    source: TextSource, *, protocol: str, batch_size: int, n_batches: int, seed: int = 101
) -> list[Batch]:
    """Returns ``n_batches`` batches of ``source`` drawn with a named protocol.

    Args:
        source: The texts to draw from (the train split, for the papers' protocols).
        protocol: ``dager`` (length-stratified), ``lamp`` (shuffled head) or ``random``.
        batch_size: Texts per batch.
        n_batches: Number of batches.
        seed: Sampling seed (the papers use 101).

    Raises:
        UnknownSpecError: ``protocol`` is not a registered sampler; the message lists them.
        GradleakError: The source is too small for the request.
    """
    sampler = SAMPLERS.get(protocol)
    if sampler is None:
        raise UnknownSpecError(f"Unknown sampler {protocol!r}; choose one of {sorted(SAMPLERS)}.")
    index_batches = sampler(source, batch_size=batch_size, n_batches=n_batches, seed=seed)
    return make_batches(source, index_batches)


def make_batches(source: TextSource, index_batches: Sequence[Sequence[int]]) -> list[Batch]:
    """Returns one Batch per index tuple, with texts, labels and indices taken from ``source``."""
    label = f"{source.name}/{source.split}" if source.split else source.name
    batches = []
    for indices in index_batches:
        indices = tuple(int(i) for i in indices)
        labels = None if source.labels is None else tuple(source.labels[i] for i in indices)
        texts = tuple(source.texts[i] for i in indices)
        batches.append(Batch(texts=texts, labels=labels, source=label, indices=indices))
    return batches


def _n_samples(batch_size: int, n_batches: int) -> int:
    """Returns ``batch_size * n_batches`` after checking both are positive integers."""
    for name, value in (("batch_size", batch_size), ("n_batches", n_batches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GradleakError(f"{name} must be a positive integer, got {value!r}.")
    return batch_size * n_batches


def _cut(indices: Sequence[int], batch_size: int, n_batches: int) -> list[tuple[int, ...]]:
    """Returns ``indices`` cut into ``n_batches`` consecutive tuples of ``batch_size`` ints."""
    return [
        tuple(int(i) for i in indices[b * batch_size : (b + 1) * batch_size])
        for b in range(n_batches)
    ]
