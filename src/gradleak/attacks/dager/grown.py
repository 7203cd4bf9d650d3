"""Best-effort prefix search for updates whose per-step evidence is weak: every first token's
sentence is grown as far as the evidence goes, and cut where the last block says it ends.

A float32 FedAvg client whose per-step changes sit near its weights' ulp (SmolLM2, B = 16, E = 2,
lr 1e-4) leaves spans so blurred that the true next token is only about half the time the best
ranked of the batch's bag (61 to 64 of 120 true prefixes, attention outputs of blocks 0 and 1;
deeper blocks, the MLPs and block 1's ``v`` rank worse), with its robust z-score about that of the
best wrong token (medians -3.1 and -3.0). No threshold on a step's score then tells a true
extension from a sentence that has ended: the ranked search's acceptance rule stopped sentences
after one or two tokens. So each prefix here always keeps its best extension, further ones only
where they stand beyond what the best of as many null scores would reach, and where a sentence
ends is read elsewhere: a causal classifier pools each sequence's last row, so its last block's
query weight gets gradient at those rows only (:func:`gradleak.attacks.dager.ends.weight_end_test`),
and a prefix whose final row lies closest to that span is the sentence (on the batch above, the
position nearest it is the true end for 16 of 16 sentences). A prefix stops growing once its best
end so far stands clearly out and lies ``patience`` tokens back.

An extension repeating one of its prefix's tokens gets a row close to that token's earlier, true
row, and so borrows its evidence ("the film film has", "an enjoyable film an enjoyable film"): a
token among the last two never extends a prefix whose steps are weak (a repeated row can stand
far beyond any null: "culkinculculcul..."), an earlier one only beyond the null's extreme. On
true prefixes the second rule costs nothing (SmolLM2 as above: the best of 80 true prefixes'
extensions is true at 44 with it, 43 without; a wrong best already in the prefix 1 time instead
of 8).

Nothing here is ever certified.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.decoder import DecoderSearch
from gradleak.attacks.dager.ends import EndTest
from gradleak.attacks.dager.ranked import (
    MAD_SCALE,
    MIN_COLUMN,
    RUNNER_UP_FRACTION,
    RankingEvidence,
    before_largest_gap,
    distinct,
    robust_z,
    step_scores,
    trimmed_length,
)
from gradleak.models.families import ArchitectureFamily
from gradleak.models.probe import LinearInputProbe, PrefixState

logger = logging.getLogger(__name__)

#: Tokens a prefix grows past its best end before it stops.
PATIENCE = 6
#: Tokens a prefix grows past an end that is only its best so far, not a clear one.
UNCLEAR_PATIENCE = 3 * PATIENCE
#: Live prefixes allowed per first token (no fewer sentences than first tokens; a few share one).
PREFIXES_PER_FIRST = 2
#: A token among its prefix's last RECENT never extends a prefix whose steps are weak: its row
#: nearly repeats a recent, true one and borrows that row's evidence, far beyond any null (SmolLM2,
#: B = 16: "culkinculculcul...", "confdefdefdef..." took every prefix's place). True ". . ." are
#: lost with them there.
RECENT = 2
#: Robust deviations (over every final row seen) below their median that an end must reach.
END_Z = 3.0
#: Margin, in deviations, beyond the expected extreme of the null scores.
_NULL_MARGIN = 1.0


def null_extreme(n: int) -> float:
    """Returns how many deviations the most extreme of ``n`` null scores reaches, with a margin:
    ``sqrt(2 ln n)`` (the Gaussian extreme's bound) plus one deviation."""
    return math.sqrt(2 * math.log(max(n, 2))) + _NULL_MARGIN


@dataclass
class _Ends:
    """Each live prefix's final-row scores at the end test (log relative residual per position)."""

    test: EndTest
    probe: LinearInputProbe
    state: PrefixState | None = None
    scores: list[list[float]] = field(default_factory=list)
    seen: list[float] = field(default_factory=list)

    def start(self, first: torch.Tensor) -> None:
        rows, self.state = self.probe.start(first[:, None])
        self.scores = [[s] for s in self._score(rows[self.test.layer][:, -1])]

    def extend(self, parent: torch.Tensor, tokens: torch.Tensor) -> None:
        assert self.state is not None
        rows, self.state = self.probe.extend(self.state.select(parent), tokens)
        new = self._score(rows[self.test.layer])
        self.scores = [self.scores[p] + [s] for p, s in zip(parent.tolist(), new, strict=True)]

    def keep(self, live: torch.Tensor) -> None:
        """Keeps the prefixes at ``live`` only."""
        assert self.state is not None
        self.state = self.state.select(live)
        self.scores = [self.scores[i] for i in live.tolist()]

    def _score(self, rows: torch.Tensor) -> list[float]:
        rows = rows.double().cpu()
        basis = self.test.basis
        left = rows - (rows @ basis.T) @ basis
        values = torch.log(left.norm(dim=1) / rows.norm(dim=1).clamp_min(1e-300)).tolist()
        self.seen.extend(values)
        return values

    def level(self) -> float:
        """Returns the score an end must reach: END_Z robust deviations below every final row
        seen (nearly all of them no sentence's end)."""
        values = torch.tensor(self.seen)
        spread = float((values - values.median()).abs().median()) * MAD_SCALE
        return float(values.median()) - END_Z * spread

    def best(self, index: int) -> int:
        """Returns the length of prefix ``index``'s best end so far (two tokens at least where it
        has them)."""
        scores = self.scores[index]
        start = 1 if len(scores) > 1 else 0
        return start + 1 + min(range(len(scores) - start), key=lambda i: scores[start + i])

    def cut(self, index: int, level: float, steps: tuple[float, ...]) -> int:
        """Returns where prefix ``index`` (with step scores ``steps``) ends: at its best clear
        end before its steps' scores fall off, else where they fall off. Where steps are strong
        (random GPT-2) they fall off right after the true end; where they are weak (SmolLM2)
        they do not, and a derailed sentence's best end is mostly a short prefix's: its early,
        likelier true tokens are kept."""
        run = trimmed_length(steps)
        scores = self.scores[index]
        clear = [n for n in range(2, run + 1) if scores[n - 1] < level]
        return min(clear, key=lambda n: scores[n - 1]) if clear else run

    def ended(self, index: int, level: float, steps: tuple[float, ...], null: float) -> bool:
        """Returns whether prefix ``index`` has grown PATIENCE tokens past a clear end, or
        UNCLEAR_PATIENCE past an end that is only its best so far (a derailed prefix shows no
        clear end, and its scores cannot tell it from a true one), unless its recent steps
        stand beyond ``null`` (the median of the last PATIENCE: a sentence whose extensions
        still stand out goes on; one step there may be a weak update's heavy tail)."""
        end = self.best(index)
        past = len(self.scores[index]) - end
        clear = self.scores[index][end - 1] < level
        recent = steps[-PATIENCE:]
        strong = sorted(recent)[len(recent) // 2] < -null
        return not strong and past >= (PATIENCE if clear else UNCLEAR_PATIENCE)


def grow_sequences(
    evidence: RankingEvidence,
    family: ArchitectureFamily,
    candidates: torch.Tensor,
    *,
    max_length: int,
    chunk_size: int,
    max_frontier: int,
    end: Callable[[int], EndTest | None] | None = None,
    deadline: Deadline = NO_DEADLINE,
) -> DecoderSearch:
    """Returns best-effort sequences grown from every first token that stands beyond the null,
    cut at their best ends where ``end`` gives an end test (called with the number of first
    tokens, which no fewer sentences hold), else at ``max_length`` or the deadline."""
    result = DecoderSearch()
    null = null_extreme(len(candidates))
    first_scores = torch.cat(
        [
            evidence.log_residuals(evidence.probe.start(chunk[:, None])[0]).flatten()
            for chunk in candidates.split(chunk_size)
        ]
    )
    z_first = robust_z(first_scores)
    keep = torch.nonzero(z_first < -null).flatten()
    if keep.numel() == 0:
        keep = before_largest_gap(z_first)
    result.candidates.append(len(candidates))
    result.accepted.append(len(keep))
    if keep.numel() == 0:
        return result
    first = candidates[keep]
    rows, state = evidence.probe.start(first[:, None])
    last_rows = rows[evidence.layers[0]][:, -1]
    prefixes: list[tuple[int, ...]] = [(int(t),) for t in first]
    frontier = min(max_frontier, PREFIXES_PER_FIRST * len(prefixes))
    scores: list[tuple[float, ...]] = [(float(z_first[k]),) for k in keep]
    test = end(len(first)) if end is not None else None
    ends = _Ends(test, LinearInputProbe(family, [test.layer])) if test is not None else None
    if ends is not None:
        ends.start(first)
    finished: list[tuple[tuple[int, ...], tuple[float, ...], int]] = []
    position = 1
    while prefixes and position < max_length and not deadline.expired():
        step = step_scores(evidence, state, candidates, last_rows, chunk_size=chunk_size)
        recent, earlier = _repeats(prefixes, candidates)
        # Where a prefix's own steps stand beyond the null (random GPT-2: "not-quite-urban ,
        # not-quite-suburban", "as terrible as"), its rows are sharp enough that a repeat's
        # near-copy row does not outscore true rows: there it needs the null's extreme only.
        weak = torch.tensor([statistics.median(z) > -null for z in scores])
        blocked = (recent & weak[:, None]) | ((recent | earlier) & (step > -null))
        step = step.masked_fill(blocked, float("inf"))
        # Below MIN_COLUMN prefixes each token is scored against its own prefix's others only,
        # which cannot tell whose a token true elsewhere in the batch is: no branching on that.
        branch = null_extreme(step.numel()) if len(prefixes) >= MIN_COLUMN else math.inf
        parent, column, z, best = _extensions(step, branch)
        if len(parent) > frontier:
            keep = _frontier(parent, z, best, scores, frontier)
            parent, column, z = parent[keep], column[keep], z[keep]
            result.truncated = True
        result.candidates.append(step.numel())
        result.accepted.append(len(parent))
        if len(parent) == 0:
            break
        rows, state = evidence.probe.extend(state.select(parent), candidates[column])
        last_rows = rows[evidence.layers[0]]
        prefixes = [
            prefixes[p] + (int(candidates[c]),)
            for p, c in zip(parent.tolist(), column.tolist(), strict=True)
        ]
        scores = [scores[p] + (float(s),) for p, s in zip(parent.tolist(), z.tolist(), strict=True)]
        position += 1
        if ends is not None:
            ends.extend(parent, candidates[column])
            level = ends.level()
            done = [i for i in range(len(prefixes)) if ends.ended(i, level, scores[i], null)]
            if done:
                finished.extend(
                    (prefixes[i], scores[i], ends.cut(i, level, scores[i])) for i in done
                )
                live = torch.tensor(
                    [i for i in range(len(prefixes)) if i not in set(done)], dtype=torch.long
                )
                prefixes = [prefixes[i] for i in live.tolist()]
                scores = [scores[i] for i in live.tolist()]
                if not prefixes:
                    break
                state, last_rows = state.select(live), last_rows[live]
                ends.keep(live)
    level = ends.level() if ends is not None else 0.0
    for i, (ids, z) in enumerate(zip(prefixes, scores, strict=True)):
        finished.append((ids, z, ends.cut(i, level, z) if ends is not None else trimmed_length(z)))
    result.sequences = distinct(finished)
    return result


def _repeats(
    prefixes: list[tuple[int, ...]], candidates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the (prefixes, candidates) masks of tokens among each prefix's last RECENT tokens,
    and of tokens earlier in it."""
    recent = torch.zeros(len(prefixes), len(candidates), dtype=torch.bool)
    earlier = torch.zeros_like(recent)
    for i, ids in enumerate(prefixes):
        recent[i] = torch.isin(candidates, torch.tensor(ids[-RECENT:], dtype=candidates.dtype))
        earlier[i] = torch.isin(candidates, torch.tensor(ids, dtype=candidates.dtype))
    return recent, earlier & ~recent


def _frontier(parent, z, best, scores, keep: int) -> torch.Tensor:
    """Returns the indices of the extensions kept: every prefix's best (so that no sentence is
    crowded out by another's branches), then further ones by the mean score of the whole
    extended prefix."""
    means = torch.tensor(
        [
            (sum(scores[p]) + float(s)) / (len(scores[p]) + 1)
            for p, s in zip(parent.tolist(), z.tolist(), strict=True)
        ]
    )
    order = torch.argsort(means.masked_fill(best, -math.inf))
    return torch.sort(order[: max(keep, int(best.sum()))]).values


def _extensions(step: torch.Tensor, null: float):
    """Returns (parent, column, score): each prefix's best extension, and every further one
    beyond ``null`` and within RUNNER_UP_FRACTION of the best's score. ``null`` is the extreme
    of the whole step's null scores: robust z-scores of a bag's residuals have heavier tails
    than a normal's, and one prefix's own extreme let a derailed prefix branch at every step."""
    finite = torch.isfinite(step)
    best = step.argmin(dim=1)
    rows = torch.arange(step.shape[0])
    chosen = torch.zeros_like(finite)
    chosen[rows, best] = finite[rows, best]
    chosen |= (step < -null) & (step <= step.min(dim=1, keepdim=True).values * RUNNER_UP_FRACTION)
    parent, column = torch.nonzero(chosen, as_tuple=True)
    return parent, column, step[parent, column], column == best[parent]
