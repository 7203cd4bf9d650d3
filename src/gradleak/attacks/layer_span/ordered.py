"""The layer-span prefix search with candidates in the public model's own order.

Scanning the whole vocabulary through every block before the exposed layer, for every live prefix
and position, is what makes a deep layer slow (SmolLM2, block 10: 49,152 tokens x 11 blocks per
step). The public model ranks next tokens (:mod:`gradleak.attacks.layer_span.prior`), so each
prefix first tests only its ranking's head (``tiers[0]`` tokens, one cache-sharing pass) and
advances with whatever passes. Every token kept still passed the span test: the order decides
only what is tested, never what is accepted.

What the head may have missed is found by counting rows. Each distinct prefix is one row of the
exposed layer's input, and the span's rank counts the batch's rows
(:mod:`gradleak.attacks.dager.completeness`). When no prefix is left to grow, a rank above the
rows found means continuations not yet tested: first those of the leaves (a prefix none of whose
head passed: a sequence's end, or a token the ranking put low), then any prefix's further
branches, each widened one tier at a time (``tiers[1:]``, then the whole vocabulary). Where a
disclosed batch size is reached by the leaves, no prefix can branch again. The search stops once
every row is explained; so a batch ends with no full scan at all when its last tokens are the
rank's last rows, and where it cannot show that (``full_scan`` off, the deadline) the rows left
unexplained make every sequence best-effort through the usual accounting.

The threshold is read from position 0 without a full scan: the ranking's head of first tokens
plus a random sample of the vocabulary (``reference`` tokens, nearly all false: the false
cluster's reference), split at their residuals' largest log-gap; with no gap there, the next tier
is scored, up to the whole vocabulary. The split is capped ``SLACK_DECADES`` above the true
cluster as the full scan's is, which is where the cap binds on real models (true rows ~1e-7, the
nearest false ones decades above).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.decoder import SAME_ROW, repeats_previous_row
from gradleak.attacks.dager.oracle import SpanOracle
from gradleak.attacks.layer_span.prior import NextTokenRanking
from gradleak.attacks.thresholds import largest_gap_split
from gradleak.models.probe import PrefixState

_log = logging.getLogger(__name__)
Prefix = tuple[int, ...]
#: Candidates per cache-sharing pass: each attends to the prefix and to itself through a
#: (candidates x candidates) mask, whose cost grows with the square (SmolLM2, block 10: 2.4 ms a
#: candidate at 256, 3.6 ms at 2,048).
BRANCH_CHUNK = 256


@dataclass(frozen=True)
class OrderedSettings:
    """How the ordered search widens and stops.

    Attributes:
        tiers: ranking heads tested in turn (increasing); the vocabulary follows if ``full_scan``.
        reference: random vocabulary tokens scored beside position 0's head for the threshold.
        full_scan: widen to the whole vocabulary when the tiers leave rows unexplained.
        max_length: longest sequence searched.
        chunk_size: candidates per forward pass.
        max_frontier: most prefixes kept per step (more makes the result best-effort).
        batch_size: sequences in the batch, where the update discloses it.
        threshold: the acceptance threshold; None reads it from position 0.
        seed: draws the reference sample.
    """

    tiers: tuple[int, ...]
    reference: int
    full_scan: bool
    max_length: int
    chunk_size: int
    max_frontier: int
    batch_size: int | None = None
    threshold: float | None = None
    seed: int = 0


@dataclass
class OrderedSearch:
    """What the ordered search found.

    Attributes:
        sequences: (token ids, residual per position) of every leaf, surest first.
        threshold: the acceptance threshold used.
        first_scored: tokens scored at position 0 (head and reference sample).
        tested: (prefix, token) pairs tested in all.
        widened: prefixes whose test was widened past the first tier.
        truncated: a step kept only ``max_frontier`` prefixes.
    """

    sequences: list[tuple[Prefix, tuple[float, ...]]] = field(default_factory=list)
    threshold: float = 0.0
    first_scored: int = 0
    tested: int = 0
    widened: int = 0
    truncated: bool = False


@dataclass
class _Frontier:
    prefixes: list[Prefix]
    state: PrefixState
    last_rows: torch.Tensor
    ranked: PrefixState | None = None  # the ranking's cache of the same prefixes


class _Tree:
    """Every prefix accepted, with its residuals, children and how far its ranking was tested."""

    def __init__(self) -> None:
        self.residuals: dict[Prefix, tuple[float, ...]] = {(): ()}
        #: Prefixes after which the ranking's head holds an end token (widened last).
        self.may_end: set[Prefix] = set()
        self.children: dict[Prefix, set[int]] = {(): set()}
        self.tested: dict[Prefix, int] = {(): 0}
        self.rankings: dict[Prefix, torch.Tensor] = {}

    def add(self, prefix: Prefix, residual: float) -> bool:
        """Adds ``prefix`` under its parent; returns False if it was already there."""
        if prefix in self.residuals:
            return False
        self.residuals[prefix] = (*self.residuals[prefix[:-1]], residual)
        self.children[prefix[:-1]].add(prefix[-1])
        self.children[prefix] = set()
        self.tested[prefix] = 0
        return True

    def rows(self) -> int:
        return len(self.residuals) - 1

    def leaves(self) -> list[Prefix]:
        return [p for p, kids in self.children.items() if p and not kids]


def ordered_search(
    oracle: SpanOracle,
    ranking: NextTokenRanking,
    vocab: torch.Tensor,
    settings: OrderedSettings,
    *,
    deadline: Deadline = NO_DEADLINE,
) -> OrderedSearch:
    """Returns the sequences whose every prefix passes ``oracle``'s span test, testing candidates
    in ``ranking``'s order until the span's rows are explained (see the module docstring)."""
    return _Search(oracle, ranking, vocab, settings, deadline).run()


class _Search:
    def __init__(self, oracle, ranking, vocab, settings: OrderedSettings, deadline) -> None:
        self.oracle, self.ranking, self.settings, self.deadline = (
            oracle,
            ranking,
            settings,
            deadline,
        )
        self.allowed = torch.zeros(int(vocab.max()) + 1, dtype=torch.bool)
        self.allowed[vocab] = True
        self.vocab = vocab
        self.tree = _Tree()
        self.result = OrderedSearch()
        self.limit = len(vocab) if settings.full_scan else min(settings.tiers[-1], len(vocab))

    def run(self) -> OrderedSearch:
        order, _ = self.ranking.start([()])
        self._keep_rankings([()], order)
        self._first_position()
        while not self.deadline.expired() and self._unexplained() > 0:
            nodes = self._open_nodes()
            if not nodes:
                break
            self._widen(nodes)
        tree = self.tree
        self.result.sequences = sorted(
            ((p, tree.residuals[p]) for p in tree.leaves()),
            key=lambda seq: (max(seq[1]), -len(seq[0])),
        )
        return self.result

    # -- position 0 ---------------------------------------------------------------------------

    def _first_position(self) -> None:
        """Reads the threshold from the head and the reference sample, and takes the first tokens
        that pass it."""
        settings, tree = self.settings, self.tree
        generator = torch.Generator().manual_seed(settings.seed)
        sample = self.vocab[torch.randperm(len(self.vocab), generator=generator)]
        scored: dict[int, float] = {}
        scores = self._first_residuals(sample[: settings.reference])
        scored.update(zip(sample[: settings.reference].tolist(), scores.tolist(), strict=True))
        threshold = settings.threshold
        for size in self._sizes(0):
            head = tree.rankings[()][tree.tested[()] : size]
            new = head[[int(t) not in scored for t in head.tolist()]]
            scored.update(zip(new.tolist(), self._first_residuals(new).tolist(), strict=True))
            tree.tested[()] = size
            if threshold is None:
                split = largest_gap_split(torch.tensor(list(scored.values())))
                threshold = split.threshold() if split is not None else None
            if threshold is not None and any(r < threshold for r in scored.values()):
                break
        self.result.threshold = threshold if threshold is not None else 0.0
        self.result.first_scored = len(scored)
        passed = sorted((r, t) for t, r in scored.items() if r < self.result.threshold)
        self._accept([((), t, r) for r, t in passed])

    def _first_residuals(self, tokens: torch.Tensor) -> torch.Tensor:
        self.result.tested += len(tokens)
        probe, layer = self.oracle.probe, self.oracle.layer
        return torch.cat(
            [torch.zeros(0)]
            + [
                self.oracle.basis.residuals(probe.start(chunk[:, None])[0][layer][:, 0]).cpu()
                for chunk in tokens.split(self.settings.chunk_size)
            ]
        )

    # -- growing ------------------------------------------------------------------------------

    def _accept(self, found: Sequence[tuple[Prefix, int, float]]) -> None:
        """Adds the (parent, token, residual) found and grows them as far as their heads reach."""
        new = [(p + (t,), r) for p, t, r in found if self.tree.add(p + (t,), r)]
        by_length: dict[int, list[tuple[Prefix, float]]] = {}
        for prefix, residual in new:
            by_length.setdefault(len(prefix), []).append((prefix, residual))
        for length in sorted(by_length):
            group = self._cut(by_length[length])
            prefixes = [p for p, _ in group if len(p) < self.settings.max_length]
            if prefixes:
                self._grow(self._frontier(prefixes, ranked=True))

    def _cut(self, group: list[tuple[Prefix, float]]) -> list[tuple[Prefix, float]]:
        if len(group) <= self.settings.max_frontier:
            return group
        self.result.truncated = True
        return sorted(group, key=lambda item: item[1])[: self.settings.max_frontier]

    def _frontier(self, prefixes: list[Prefix], *, ranked: bool = False) -> _Frontier:
        """Returns equally long prefixes with their probe state (and, if ``ranked``, their
        rankings and the ranking's state, to grow them)."""
        rows, state = self.oracle.probe.start(torch.tensor(prefixes))
        frontier = _Frontier(prefixes, state, rows[self.oracle.layer][:, -1])
        if ranked:
            orders, frontier.ranked = self.ranking.start(prefixes)
            self._keep_rankings(prefixes, orders)
        return frontier

    def _keep_rankings(self, prefixes: list[Prefix], orders: torch.Tensor) -> None:
        head = orders[:, : self.settings.tiers[0]]
        ends = torch.isin(head, self.ranking.ends).any(dim=1)
        for prefix, order, end in zip(prefixes, orders, ends.tolist(), strict=True):
            self.tree.rankings[prefix] = self._restrict(order)
            if end:
                self.tree.may_end.add(prefix)

    def _grow(self, frontier: _Frontier | None) -> None:
        """Extends a frontier of equally long prefixes by their heads' passing tokens, step by
        step, until none passes or the longest length is reached."""
        first = self.settings.tiers[0]
        while frontier is not None and not self.deadline.expired():
            found = []
            for index, prefix in enumerate(frontier.prefixes):
                head = self.tree.rankings[prefix][:first]
                self.tree.tested[prefix] = len(head)
                found += [(index, t, r) for t, r in self._test(frontier, index, head)]
            frontier = self._advance(frontier, found)

    def _advance(self, frontier: _Frontier, found) -> _Frontier | None:
        """Adds the passing extensions to the tree; returns them as the next frontier."""
        kept = []
        for index, token, residual in sorted(found, key=lambda item: item[2]):
            prefix = frontier.prefixes[index] + (token,)
            if self.tree.add(prefix, residual):
                kept.append((index, token, residual))
        if len(kept) > self.settings.max_frontier:
            self.result.truncated = True
            kept = kept[: self.settings.max_frontier]
        if frontier.state.length + 1 >= self.settings.max_length:
            kept = []
        if not kept:
            return None
        parents = torch.tensor([k[0] for k in kept])
        tokens = torch.tensor([k[1] for k in kept])
        layer = self.oracle.layer
        rows, state = self.oracle.probe.extend(frontier.state.select(parents), tokens)
        prefixes = [frontier.prefixes[i] + (t,) for i, t, _ in kept]
        assert frontier.ranked is not None
        orders, ranked = self.ranking.extend(frontier.ranked.select(parents), tokens)
        self._keep_rankings(prefixes, orders)
        return _Frontier(prefixes, state, rows[layer], ranked)

    def _test(
        self, frontier: _Frontier, index: int, tokens: torch.Tensor
    ) -> list[tuple[int, float]]:
        """Returns the (token, residual) of the ``tokens`` extending prefix ``index`` that pass."""
        self.result.tested += len(tokens)
        state = frontier.state.select([index])
        last = frontier.last_rows[index][None]
        passed = []
        for chunk in tokens.split(min(self.settings.chunk_size, BRANCH_CHUNK)):
            rows = self.oracle.probe.branch(state, chunk)[self.oracle.layer][0]
            residual = self.oracle.basis.residuals(rows, below=self.result.threshold).cpu()
            repeats = repeats_previous_row(rows, last, tolerance=self._same_row)
            ok = (residual < self.result.threshold) & ~repeats.cpu()
            passed += [(int(chunk[i]), float(residual[i])) for i in torch.nonzero(ok).flatten()]
        return passed

    # -- widening -----------------------------------------------------------------------------

    @property
    def _same_row(self) -> float:
        """How close (relative) a row may come to its prefix's last row and still count as new:
        rows closer than the threshold are ones the span test cannot tell apart. A run of one
        token from the start repeats its row exactly in theory, and after ten blocks of float32
        to 5e-6 (SmolLM2, block 10), which the exact-repeat tolerance missed."""
        return max(SAME_ROW, self.result.threshold)

    def _unexplained(self) -> int:
        return max(0, self.oracle.basis.rank - self.tree.rows())

    def _open_nodes(self) -> list[Prefix]:
        """Returns the prefixes whose further tokens are tested next.

        First the leaves the ranking expects to go on; then the leaves it expects to end and the
        empty prefix (every sequence branches off it); then, where a branch can still be missing
        (no disclosed batch size, or fewer leaves than it), every prefix. Within the last two the
        least tested go first, so one widening never outruns another by more than a tier.
        """
        tree, longest = self.tree, self.settings.max_length

        def is_open(prefix: Prefix) -> bool:
            return len(prefix) < longest and tree.tested[prefix] < self.limit

        leaves = [p for p in tree.leaves() if is_open(p)]
        going_on = [p for p in leaves if p not in tree.may_end]
        if going_on:
            return going_on
        nodes = leaves + ([()] if is_open(()) else [])
        known = self.settings.batch_size
        if not nodes and (known is None or len(tree.leaves()) < known):
            nodes = [p for p in tree.residuals if is_open(p)]
        if not nodes:
            return []
        least = min(tree.tested[p] for p in nodes)
        return [p for p in nodes if tree.tested[p] == least]

    def _widen(self, nodes: list[Prefix]) -> None:
        """Tests each node's ranking up to its next tier and grows what passes."""
        found: list[tuple[Prefix, int, float]] = []
        self.result.widened += len(nodes)
        _log.info(
            "%d row(s) unexplained: widening %s",
            self._unexplained(),
            ", ".join(f"{len(p)}-token prefix past {self.tree.tested[p]}" for p in nodes),
        )
        for prefix in nodes:
            size = next(s for s in self._sizes(self.tree.tested[prefix]))
            tokens = self.tree.rankings[prefix][self.tree.tested[prefix] : size]
            self.tree.tested[prefix] = size
            if not prefix:
                residuals = self._first_residuals(tokens)
                passed = residuals < self.result.threshold
                pairs = zip(tokens[passed].tolist(), residuals[passed].tolist(), strict=True)
                found += [((), t, r) for t, r in pairs]
                continue
            frontier = self._frontier([prefix])
            found += [(prefix, t, r) for t, r in self._test(frontier, 0, tokens)]
        self._accept(found)

    def _sizes(self, tested: int) -> list[int]:
        """Returns the ranking sizes past ``tested`` that a prefix is widened to, in order."""
        sizes = [min(s, self.limit) for s in self.settings.tiers] + [self.limit]
        return sorted({s for s in sizes if s > tested})

    def _restrict(self, order: torch.Tensor) -> torch.Tensor:
        """Returns ``order`` without the token ids a search may not use (padding, past the
        tokenizer)."""
        order = order[order < len(self.allowed)]
        return order[self.allowed[order]]
