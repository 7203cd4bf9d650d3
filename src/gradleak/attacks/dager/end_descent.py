"""Whole sentences put in order by where they must end: a descent on the end test's residual.

A causal classifier pools each sentence's last row, so its last block's query adapter spans
exactly the batch's final rows (:mod:`gradleak.attacks.dager.ends`), and a final row depends on
the whole sentence in its order. Its residual to that span is a graded whole-sentence score
(SmolLM2, r = 8, B = 4: true sentences 1e-8 to 1e-6, one token changed 0.05 to 0.2, a sentence's
own tokens shuffled 0.55 to 0.85) that needs no other sentence: each sentence descends alone.

Starting from the bag's lockstep order (:mod:`gradleak.attacks.dager.bag_order`), each round
proposes local edits of one sentence (two tokens swapped, a token or a short run moved, a token
exchanged with another sentence, a bag token substituted, inserted or a token deleted; every bag
token stays in some sentence), scores them in one padded pass (right padding never reaches an
earlier row of a causal model) and keeps the best if it lowers the sentence's log residual. Far
from the truth the residual is flat, so this helps only where the start is close; it ranks, it
proves nothing, and its sentences stay best-effort.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.ends import EndTest
from gradleak.models.loading import PublicModel
from gradleak.models.probe import LinearInputProbe

#: Seconds the descent may spend on one batch (each candidate is a pass through the whole model).
DESCENT_SECONDS = 15.0
#: Edits scored together per round (one padded pass).
CANDIDATES = 24
#: Rounds over every open sentence without an improvement after which the descent stops.
STALL_ROUNDS = 8
_FLOOR = 1e-12

Sentence = tuple[int, ...]


class FinalRows:
    """The end test's residual of whole sentences, scored in padded passes and remembered."""

    def __init__(self, public: PublicModel, test: EndTest) -> None:
        self.test = test
        self.probe = LinearInputProbe(public.family, [test.layer])
        pad = public.tokenizer.pad_token_id if public.tokenizer is not None else None
        self.pad = int(pad) if pad is not None else 0
        self.seen: dict[Sentence, float] = {}

    @torch.no_grad()
    def scores(self, sentences: Sequence[Sentence]) -> list[float]:
        """Returns each sentence's log10 residual of its final row."""
        new = list(dict.fromkeys(s for s in sentences if s not in self.seen))
        if new:
            longest = max(len(s) for s in new)
            ids = torch.full((len(new), longest), self.pad, dtype=torch.long)
            for i, s in enumerate(new):
                ids[i, : len(s)] = torch.tensor(s)
            rows = self.probe(ids.to(self.probe.device))[self.test.layer]
            last = torch.tensor([len(s) - 1 for s in new])
            final = rows[torch.arange(len(new)), last.to(rows.device)].double().cpu()
            left = final - (final @ self.test.basis.T) @ self.test.basis
            relative = left.norm(dim=1) / final.norm(dim=1).clamp_min(1e-300)
            for s, value in zip(new, relative.tolist(), strict=True):
                self.seen[s] = math.log10(max(value, _FLOOR))
        return [self.seen[s] for s in sentences]


def descend(
    public: PublicModel,
    test: EndTest,
    sentences: Sequence[Sentence],
    bag: Sequence[int],
    *,
    seconds: float = DESCENT_SECONDS,
    deadline: Deadline = NO_DEADLINE,
    seed: int = 0,
) -> tuple[list[Sentence], list[float]]:
    """Returns ``sentences`` after a greedy descent of each one's end-test residual, and their
    log10 residuals.

    A sentence whose final row passes the test stops; the descent stops when all have, after
    ``seconds``, when ``deadline`` expires, or after :data:`STALL_ROUNDS` rounds improving none.
    """
    rows = FinalRows(public, test)
    grown = [tuple(s) for s in sentences if s]
    if not grown:
        return [], []
    rng = random.Random(seed)
    stop = time.perf_counter() + seconds
    current = rows.scores(grown)
    passed = math.log10(test.tolerance)
    stalled = 0
    while stalled < STALL_ROUNDS and time.perf_counter() < stop and not deadline.expired():
        open_ = [i for i in range(len(grown)) if current[i] >= passed]
        if not open_:
            break
        stalled += 1
        for index in open_:
            if time.perf_counter() >= stop or deadline.expired():
                break
            if _step(rows, grown, current, index, bag, rng):
                stalled = 0
    return grown, current


def _step(
    rows: FinalRows,
    grown: list[Sentence],
    current: list[float],
    index: int,
    bag: Sequence[int],
    rng: random.Random,
) -> bool:
    """Takes the best of one round's edits of sentence ``index`` where it lowers the summed log
    residual of the sentences it changes; returns whether it did."""
    edits = _proposals(grown, index, bag, rng)
    if not edits:
        return False
    changed = [s for edit in edits for s in edit.values()]
    scored = dict(zip(changed, rows.scores(changed), strict=True))
    gains = [sum(current[i] - scored[s] for i, s in edit.items()) for edit in edits]
    best = max(range(len(edits)), key=gains.__getitem__)
    if gains[best] <= 0.0:
        return False
    for i, s in edits[best].items():
        grown[i], current[i] = s, scored[s]
    return True


def _proposals(
    sentences: list[Sentence], index: int, bag: Sequence[int], rng: random.Random
) -> list[dict[int, Sentence]]:
    """Returns up to :data:`CANDIDATES` edits of sentence ``index``, each the sentences it
    changes; no edit leaves a bag token in no sentence."""
    edits: list[dict[int, Sentence]] = []
    for _ in range(4 * CANDIDATES):
        if len(edits) >= CANDIDATES:
            break
        edit = _edit(sentences, index, bag, rng)
        if edit is not None and edit not in edits and _covers(sentences, edit, bag):
            edits.append(edit)
    return edits


def _edit(
    sentences: list[Sentence], index: int, bag: Sequence[int], rng: random.Random
) -> dict[int, Sentence] | None:
    s = list(sentences[index])
    n = len(s)
    kind = rng.choice(("swap", "move", "run", "exchange", "substitute", "insert", "delete"))
    if kind == "swap" and n >= 2:
        i, j = rng.sample(range(n), 2)
        s[i], s[j] = s[j], s[i]
    elif kind in ("move", "run") and n >= 2:
        length = 1 if kind == "move" else rng.randint(2, min(4, n))
        i = rng.randrange(n - length + 1)
        run, rest = s[i : i + length], s[:i] + s[i + length :]
        j = rng.randrange(len(rest) + 1)
        s = rest[:j] + run + rest[j:]
    elif kind == "exchange" and len(sentences) > 1:
        other = rng.choice([k for k in range(len(sentences)) if k != index])
        t = list(sentences[other])
        i, j = rng.randrange(n), rng.randrange(len(t))
        s[i], t[j] = t[j], s[i]
        return {index: tuple(s), other: tuple(t)}
    elif kind == "substitute":
        s[rng.randrange(n)] = rng.choice(bag)
    elif kind == "insert":
        s.insert(rng.randrange(n + 1), rng.choice(bag))
    elif kind == "delete" and n >= 2:
        del s[rng.randrange(n)]
    else:
        return None
    return None if tuple(s) == sentences[index] else {index: tuple(s)}


def _covers(sentences: list[Sentence], edit: dict[int, Sentence], bag: Sequence[int]) -> bool:
    after = [edit.get(i, s) for i, s in enumerate(sentences)]
    present = {t for s in after for t in s}
    return all(t in present for t in bag)
