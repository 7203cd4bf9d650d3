"""Growing sequences position by position against the projected spans.

Position 0: every shortlisted token is placed first and scored by blocks 0..L; the first tokens
are those standing out of the rest (the largest gap among the lowest scores, or the disclosed
batch size). Each later position, for every live prefix: the continuous step
(:mod:`gradleak.attacks.subspace.relax`) proposes candidates, block 0's best and the prior's add
theirs, and all of them are scored discretely beside a null sample of shortlisted tokens. A
candidate's evidence is its z-score against that null, per block, combined as Stouffer's sum;
each sequence keeps its ``beam`` best prefixes by summed evidence (plus the prior's weighted
log-likelihood), and a prefix ends where no extension stands ``z_stop`` below the null and
within ``z_drop`` of the prefix's median evidence (``patience`` such steps are tolerated, and
trimmed off the end unless a confirmed one follows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.subspace.config import SubspaceConfig
from gradleak.attacks.subspace.prior import NextTokenPrior
from gradleak.attacks.subspace.relax import relaxed_candidates
from gradleak.attacks.subspace.spans import ProjectedSpan
from gradleak.models.probe import LinearInputProbe, PrefixState

#: Lowest first-token scores among which the largest gap separates the batch's first tokens.
_FIRST_WINDOW = 64
_MAD_TO_STD = 1.4826


@dataclass
class Evidence:
    """Block 0's span (tokens), the spans of blocks 1..L (prefixes), and their probes."""

    token: ProjectedSpan
    layers: list[ProjectedSpan]
    probe: LinearInputProbe
    token_probe: LinearInputProbe
    vocab: torch.Tensor
    per_position: bool
    chunk_size: int
    _token_scores: dict[int, torch.Tensor] = field(default_factory=dict)

    def token_scores(self, position: int) -> torch.Tensor:
        """Returns block 0's log residual of every vocabulary token at ``position``."""
        p = position if self.per_position else 0
        if p not in self._token_scores:
            parts = []
            for chunk in self.vocab.split(self.chunk_size):
                rows = self.token_probe.token_rows(chunk, position=p)[self.token.layer]
                parts.append(self.token.log_residuals(rows).cpu())
            self._token_scores[p] = torch.cat(parts)
        return self._token_scores[p]

    def shortlist(self, position: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (ids, block-0 log residuals) of the ``size`` tokens closest to block 0's span."""
        scores = self.token_scores(position)
        order = torch.argsort(scores)[:size]
        return self.vocab[order], scores[order]

    def views(self, rows: dict, *, shallowest: int = 1) -> torch.Tensor:
        """Returns (..., L) log residuals of probed rows against blocks 1..L.

        Block 0 only shortlists: its rows carry no context, and neither, much, do block 1's (the
        token's embedding dominates them), so on a RoPE model they score every token of the
        batch's bag alike at every position; deeper blocks tell the right one apart.
        """
        spans = [s for s in self.layers if s.block >= shallowest] or self.layers[-1:]
        return torch.stack([span.log_residuals(rows[span.layer]).cpu() for span in spans], -1)

    @property
    def spans(self) -> list[ProjectedSpan]:
        """Returns every span, block 0's first."""
        return [self.token, *self.layers]


@dataclass(frozen=True)
class Grown:
    """One prefix: its sequence, tokens, per-position evidence and ranking total."""

    sequence: int
    ids: tuple[int, ...]
    zs: tuple[float, ...]
    total: float
    quiet: int = 0


def stouffer(views: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """Returns the combined z-score of ``views`` (..., C, K) against ``null`` (..., N, K): each
    view standardised by the null's median and MAD, summed over views and divided by sqrt(K)."""
    median = null.median(dim=-2, keepdim=True).values
    spread = (null - median).abs().median(dim=-2, keepdim=True).values * _MAD_TO_STD
    z = (views - median) / spread.clamp_min(1e-6)
    return z.sum(-1) / math.sqrt(views.shape[-1])


def first_tokens(
    evidence: Evidence, config: SubspaceConfig, count: int | None
) -> tuple[list[Grown], PrefixState | None, int]:
    """Returns the starting prefixes (one per sequence), their state, and the batch estimate."""
    ids, token_scores = evidence.shortlist(0, config.shortlist)
    rows = [evidence.probe.start(chunk[:, None])[0] for chunk in ids.split(config.chunk_size)]
    merged = {layer: torch.cat([r[layer][:, 0] for r in rows]) for layer in rows[0]}
    views = evidence.views(merged)
    z = stouffer(views, views)
    order = torch.argsort(z)
    estimate = _gap_count(z[order][:_FIRST_WINDOW])
    count = count or estimate
    chosen = order[:count]
    grown = [
        Grown(i, (int(ids[c]),), (float(z[c]),), float(z[c])) for i, c in enumerate(chosen.tolist())
    ]
    _, state = evidence.probe.start(ids[chosen][:, None])
    return grown, state, estimate


def _gap_count(lowest: torch.Tensor) -> int:
    """Returns how many of the ascending scores lie before their largest gap (at least 1)."""
    if lowest.numel() < 2:
        return int(lowest.numel()) or 1
    return int(torch.argmax(lowest[1:] - lowest[:-1])) + 1


def grow(
    evidence: Evidence,
    config: SubspaceConfig,
    *,
    count: int | None,
    prior: NextTokenPrior | None = None,
    deadline: Deadline = NO_DEADLINE,
    timings: dict[str, float] | None = None,
) -> tuple[list[Grown], int]:
    """Returns the best finished prefix of each sequence, surest first, and the batch estimate."""
    generator = torch.Generator().manual_seed(config.seed)
    live, state, estimate = first_tokens(evidence, config, count)
    finished: list[Grown] = []
    positions = 0
    for position in range(1, config.max_length):
        if not live or state is None or deadline.expired():
            break
        live, state, ended = _step(evidence, config, live, state, position, prior, generator)
        finished += ended
        positions += 1
    finished = [trimmed(g, config) for g in (*finished, *live)]
    if timings is not None:
        timings["positions"] = positions
    best: dict[int, Grown] = {}
    for prefix in finished:
        if prefix.sequence not in best or prefix.total < best[prefix.sequence].total:
            best[prefix.sequence] = prefix
    return sorted(best.values(), key=lambda g: g.total / len(g.ids)), estimate


def _step(
    evidence: Evidence,
    config: SubspaceConfig,
    live: list[Grown],
    state: PrefixState,
    position: int,
    prior: NextTokenPrior | None,
    generator: torch.Generator,
) -> tuple[list[Grown], PrefixState | None, list[Grown]]:
    ids, _ = evidence.shortlist(position, config.shortlist)
    pool = [ids]
    if config.steps:
        support, support_scores = evidence.shortlist(position, config.mixture)
        snapped = relaxed_candidates(
            evidence.probe,
            evidence.spans,
            state,
            support,
            support_scores,
            prefixes=len(live),
            steps=config.steps,
            lr=config.lr,
            snap=config.snap,
        )
        pool.append(snapped.flatten())
    log_probs = prior.log_probs([g.ids for g in live]) if prior is not None else None
    if log_probs is not None and config.prior_top:
        pool.append(torch.topk(log_probs, config.prior_top, dim=-1).indices.flatten())
    every = torch.unique(torch.cat(pool))
    null = torch.isin(every, ids[torch.randperm(len(ids), generator=generator)[: config.null]])
    views = _branch_views(evidence, state, every, context_from(evidence, config))
    z = stouffer(views, views[:, null])  # (P, C)
    # A RoPE model's rows for a repeated token repeat the previous position's (attention over
    # identical keys and values), so a batch's first token would pass at every later position.
    last = torch.tensor([g.ids[-1] for g in live])
    z = torch.where(every[None, :] == last[:, None], torch.full_like(z, math.inf), z)
    score = z.clone()
    if log_probs is not None:
        score = score - config.prior_weight * log_probs[:, every]
    extensions, ended = _select(live, every, z, score, config)
    if not extensions:
        return [], None, ended
    parents = torch.tensor([p for p, _ in extensions])
    new_ids = torch.tensor([int(every[c]) for _, c in extensions])
    _, grown_state = evidence.probe.extend(state.select(parents), new_ids)
    grown = [
        Grown(
            live[p].sequence,
            live[p].ids + (int(every[c]),),
            live[p].zs + (float(z[p, c]),),
            live[p].total + float(score[p, c]),
            quiet=0 if float(z[p, c]) <= cutoff(live[p].zs, config) else live[p].quiet + 1,
        )
        for p, c in extensions
    ]
    return grown, grown_state, ended


def trimmed(prefix: Grown, config: SubspaceConfig) -> Grown:
    """Returns ``prefix`` without its trailing steps short of the ``z_drop`` test (tolerated by
    ``patience``, then never confirmed)."""
    end = len(prefix.zs)
    while end > 1 and prefix.zs[end - 1] > cutoff(prefix.zs[: end - 1], config):
        end -= 1
    if end == len(prefix.zs):
        return prefix
    total = prefix.total - sum(prefix.zs[end:])
    return Grown(prefix.sequence, prefix.ids[:end], prefix.zs[:end], total)


def cutoff(zs: tuple[float, ...], config: SubspaceConfig) -> float:
    """Returns the z an extension of a prefix with per-position evidence ``zs`` must reach:
    ``-z_stop``, or ``z_drop`` times the median of its steps after the first when lower."""
    steps = torch.tensor(zs[1:] or zs, dtype=torch.float64)
    return min(-config.z_stop, config.z_drop * float(steps.median()))


def context_from(evidence: Evidence, config: SubspaceConfig) -> int:
    """Returns the shallowest block scoring later positions (see ``SubspaceConfig``)."""
    if config.context_from is not None:
        return config.context_from
    return 1 if evidence.per_position else 2


def _branch_views(
    evidence: Evidence, state: PrefixState, every: torch.Tensor, shallowest: int
) -> torch.Tensor:
    """Returns (P, C, L) log residuals of every prefix extended by each of ``every``."""
    per_pass = max(1, evidence.chunk_size // max(1, state.size))
    parts = [
        evidence.views(evidence.probe.branch(state, chunk), shallowest=shallowest)
        for chunk in every.split(per_pass)
    ]
    return torch.cat(parts, dim=1)


def _select(
    live: list[Grown],
    every: torch.Tensor,
    z: torch.Tensor,
    score: torch.Tensor,
    config: SubspaceConfig,
) -> tuple[list[tuple[int, int]], list[Grown]]:
    """Returns the kept (prefix, candidate) extensions, each sequence's ``beam`` best, and the
    prefixes that end here (no extension reaches its :func:`cutoff`)."""
    totals = torch.tensor([g.total for g in live], dtype=score.dtype)[:, None] + score
    cutoffs = torch.tensor([cutoff(g.zs, config) for g in live], dtype=z.dtype)[:, None]
    patient = torch.tensor([g.quiet < config.patience for g in live])[:, None]
    allowed = (z <= cutoffs) | (patient & (z < -config.z_stop))
    totals = torch.where(allowed, totals, torch.full_like(totals, math.inf))
    ended = [g for i, g in enumerate(live) if not bool(torch.isfinite(totals[i]).any())]
    kept: list[tuple[int, int]] = []
    for sequence in dict.fromkeys(g.sequence for g in live):
        rows = [i for i, g in enumerate(live) if g.sequence == sequence]
        flat = totals[rows].flatten()
        for index in torch.argsort(flat)[: config.beam].tolist():
            if math.isfinite(float(flat[index])):
                kept.append((rows[index // len(every)], index % len(every)))
    return kept, ended
