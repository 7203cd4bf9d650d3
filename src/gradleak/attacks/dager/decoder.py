"""Stage 2 for causal models: grow prefixes one token at a time, keeping those whose newest
input to the sequence block passes its span test.

A candidate costs one token through the blocks before the oracle (the prefix's KV cache is
reused), and the residual is checked at the newest position only: earlier positions already
passed when the prefix was accepted.

Candidates pass through a chain of gates, cheapest first. Block 0's attention output (the input
of its ``o`` projection) already depends on the whole prefix, costs no MLP and proved at least as
discriminating as block 1's input on SmolLM2, so when it is exposed it screens every candidate
and only the few survivors run on to the certifying gate (block 1's q/k/v span).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.oracle import SpanOracle
from gradleak.models.families import LinearLayer
from gradleak.models.probe import LinearInputProbe, PrefixState

#: Rows closer than this (relative) to the prefix's previous row carry no new evidence: with RoPE a
#: prefix of one repeated token gives the same block input as the token alone.
SAME_ROW = 1e-6


@dataclass
class DecoderSearch:
    """What the prefix search found.

    Attributes:
        sequences: (token ids, residual per position) of every complete sequence, surest first.
        candidates: per position, how many extensions were tested.
        accepted: per position, how many passed.
        truncated: the frontier outgrew ``max_frontier`` and was cut to the lowest residuals.
    """

    sequences: list[tuple[tuple[int, ...], tuple[float, ...]]] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    truncated: bool = False


@dataclass(frozen=True)
class Gate:
    """An oracle, the residual below which a candidate passes it, and how close (relative) a
    certifying gate's row may come to its prefix's last row and still count as new evidence;
    ``first``, where set, is the threshold of first tokens (whose rows can sit closer to a
    rounded span than later rows); ``sure``, where set on the last gate, is the level below which
    an extension is sure: a prefix with a sure extension keeps only those, and one with none
    keeps its best one and also ends there."""

    oracle: SpanOracle
    threshold: float
    same_row: float = SAME_ROW
    first: float | None = None
    sure: float | None = None

    @property
    def first_threshold(self) -> float:
        """Returns the threshold first tokens are tested against."""
        return self.threshold if self.first is None else self.first

    @property
    def probe(self) -> LinearInputProbe:
        """Returns the probe computing the rows this gate reads."""
        return self.oracle.probe

    @property
    def layer(self) -> LinearLayer:
        """Returns the layer whose rows count as a prefix's rows (the repeat rule's)."""
        return self.oracle.layer

    def residuals(
        self, rows: dict[LinearLayer, torch.Tensor], *, below: float | None = None
    ) -> torch.Tensor:
        """Returns the score each probed row is tested on: its residual against the span (where
        it surely exceeds ``below``, possibly only a lower bound of it above ``below``)."""
        return self.oracle.basis.residuals(rows[self.oracle.layer], below=below)


@dataclass
class _Frontier:
    prefixes: list[tuple[int, ...]]
    residuals: list[tuple[float, ...]]
    state: PrefixState
    last_rows: torch.Tensor


def search_prefixes(
    gates: Sequence[Gate],
    *,
    tokens_at: Callable[[int], torch.Tensor | None],
    max_length: int,
    chunk_size: int,
    max_frontier: int,
    deadline: Deadline = NO_DEADLINE,
) -> DecoderSearch:
    """Returns the sequences whose every prefix passes every gate.

    When ``deadline`` expires the live prefixes are returned as they are.

    Args:
        gates: screening gates first, the certifying gate last; all probes must need the same
            KV cache (blocks before the deepest oracle), which holds for block 0's ``o`` and block
            1.
        tokens_at: candidate token ids for a position, or None past the last position.
        max_length: longest sequence considered.
        chunk_size: candidates per forward pass.
        max_frontier: most prefixes kept per step.
    """
    result = DecoderSearch()
    frontier = _first_tokens(gates, tokens_at(0), chunk_size=chunk_size, result=result)
    position = 1
    while frontier is not None and position < max_length and not deadline.expired():
        tokens = tokens_at(position)
        if tokens is None or tokens.numel() == 0:
            break
        frontier = _extend(
            gates, frontier, tokens, chunk_size=chunk_size, max_frontier=max_frontier, result=result
        )
        position += 1
    if frontier is not None:
        result.sequences.extend(zip(frontier.prefixes, frontier.residuals, strict=True))
    result.sequences.sort(key=lambda seq: (max(seq[1]), -len(seq[0])))
    return result


def _first_tokens(gates, tokens, *, chunk_size, result) -> _Frontier | None:
    if tokens is None or tokens.numel() == 0:
        return None
    keep = torch.arange(len(tokens))
    residuals = torch.zeros(0)
    for gate in gates:
        if keep.numel() == 0:  # an earlier gate rejected every candidate
            break
        residuals = torch.cat(
            [
                gate.residuals(gate.probe.start(chunk[:, None])[0]).flatten().cpu()
                for chunk in tokens[keep].split(chunk_size)
            ]
        )
        passed = residuals < gate.first_threshold
        keep, residuals = keep[passed], residuals[passed]
    result.candidates.append(len(tokens))
    result.accepted.append(len(keep))
    if keep.numel() == 0:
        return None
    last = gates[-1]
    rows, state = last.probe.start(tokens[keep][:, None])
    return _Frontier(
        prefixes=[(int(t),) for t in tokens[keep]],
        residuals=[(float(r),) for r in residuals],
        state=state,
        last_rows=rows[last.layer][:, -1],
    )


@dataclass
class _Screened:
    """The (prefix, token) pairs that passed every gate and, where the certifying gate is not
    the first, what it computed (the passing pairs' rows, their index among the pairs it saw, and
    the state extended by every pair it saw), so that nothing is computed twice."""

    parent: torch.Tensor
    token: torch.Tensor
    residual: torch.Tensor
    extension: tuple[torch.Tensor, torch.Tensor, PrefixState] | None = None


def _screen(gates, frontier: _Frontier, tokens: torch.Tensor) -> _Screened:
    """Returns the (prefix, token) pairs that pass every gate.

    The first gate sees every pair in one cache-sharing pass (``probe.branch``); later gates
    see only its survivors.
    """
    first = gates[0]
    branched = first.probe.branch(frontier.state, tokens)  # (prefixes, tokens, in) per layer
    residual = first.residuals(branched, below=first.threshold).cpu()
    passed = residual < first.threshold
    if len(gates) == 1:
        passed &= ~repeats_previous_row(
            branched[first.layer], frontier.last_rows[:, None], tolerance=first.same_row
        ).cpu()
    parent, column = torch.nonzero(passed, as_tuple=True)
    token, residual = tokens[column], residual[parent, column]
    extension = None
    for gate in gates[1:]:
        if parent.numel() == 0:
            break
        rows, state = gate.probe.extend(frontier.state.select(parent), token)
        residual = gate.residuals(rows, below=gate.threshold).cpu()
        passed = residual < gate.threshold
        if gate is gates[-1]:
            new_rows = rows[gate.layer]
            passed &= ~repeats_previous_row(
                new_rows, frontier.last_rows[parent.to(new_rows.device)], tolerance=gate.same_row
            ).cpu()
            kept = torch.nonzero(passed).flatten()
            extension = (new_rows[kept.to(new_rows.device)], kept, state)
        parent, token, residual = parent[passed], token[passed], residual[passed]
    return _Screened(parent, token, residual, extension)


def repeats_previous_row(
    rows: torch.Tensor, previous: torch.Tensor, *, tolerance: float = SAME_ROW
) -> torch.Tensor:
    """Returns which rows equal the prefix's previous row within ``tolerance`` (relative): no new
    evidence, see ``SAME_ROW``."""
    return (rows - previous).norm(dim=-1) <= tolerance * previous.norm(dim=-1)


def _sure_first(parent: torch.Tensor, score: torch.Tensor, sure: float):
    """Returns which extensions are kept where a gate knows a sure level: a prefix with a sure
    extension keeps only those; a prefix with none keeps its best unsure one and also ends (so
    the prefix itself is returned). Keeping every unsure extension let the wrong branches after
    each finished sentence multiply (SmolLM2, fp16, B = 16: 24 prefixes grew to 344 in 14 steps),
    while an unsure true token was its prefix's best extension 44 times in 47. Returns (kept
    mask, prefixes not ended)."""
    is_sure = score < sure
    sure_parents = torch.unique(parent[is_sure])
    unsure = torch.nonzero(~torch.isin(parent, sure_parents)).flatten()
    unsure = unsure[torch.argsort(score[unsure])]
    unsure = unsure[torch.argsort(parent[unsure], stable=True)]  # by prefix, best first
    first = torch.ones(len(unsure), dtype=torch.bool)
    first[1:] = parent[unsure][1:] != parent[unsure][:-1]
    keep = is_sure.clone()
    keep[unsure[first]] = True
    return keep, set(sure_parents.tolist())


def _extend(gates, frontier: _Frontier, tokens: torch.Tensor, *, chunk_size, max_frontier, result):
    n_prefix, n_tok = len(frontier.prefixes), len(tokens)
    screened = [
        _screen(gates, frontier, chunk) for chunk in tokens.split(max(1, chunk_size // n_prefix))
    ]
    parent = torch.cat([s.parent for s in screened])
    token = torch.cat([s.token for s in screened])
    score = torch.cat([s.residual for s in screened])
    result.candidates.append(n_prefix * n_tok)
    result.accepted.append(len(parent))
    extended = set(parent.tolist())
    index = torch.arange(len(parent))
    if gates[-1].sure is not None:
        keep, extended = _sure_first(parent, score, gates[-1].sure)
        index = index[keep]
    for i in range(n_prefix):
        if i not in extended:  # nothing continues this prefix: a complete sequence
            result.sequences.append((frontier.prefixes[i], frontier.residuals[i]))
    if len(index) == 0:
        return None
    if len(index) > max_frontier:
        index = index[torch.argsort(score[index])[:max_frontier]]
        result.truncated = True
    parent, token, score = parent[index], token[index], score[index]
    extension = screened[0].extension if len(screened) == 1 else None
    if extension is not None:  # the certifying gate already extended these prefixes
        passing_rows, seen, seen_state = extension
        rows, state = passing_rows[index.to(passing_rows.device)], seen_state.select(seen[index])
    else:
        last = gates[-1]
        extended_rows, state = last.probe.extend(frontier.state.select(parent), token)
        rows = extended_rows[last.layer]
    return _Frontier(
        prefixes=[
            frontier.prefixes[p] + (int(t),) for p, t in zip(parent.tolist(), token, strict=True)
        ],
        residuals=[
            frontier.residuals[p] + (float(s),) for p, s in zip(parent.tolist(), score, strict=True)
        ],
        state=state,
        last_rows=rows,
    )
