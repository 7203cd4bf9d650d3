"""DAGER under Gaussian noise: rank candidates statistically instead of testing span membership.

Noise added to the shared gradient (DAGER App. C.4, or DP-SGD's) fills every direction of the
span, so no residual is ever zero and nothing can be certified. What survives is a ranking: true
rows still lie closer to the strong directions of the gradient than wrong ones. Two searches:

- ``filter``: the paper's statistical filter. Bases of fixed rank r (100), the score of a row is
  the logit of its residual, ``log d - log(1 - d)``, averaged over blocks 1..L (causal masks keep
  all of them prefix-only); at position 0 the candidates are the k closest tokens by block 0 that
  are also z-score outliers (z < -5), later positions take the k closest; a prefix extension is
  kept if it is among the B best of its step and a z < -5 outlier among all of the step's
  extensions; k = max(50 B, 5 % of the vocabulary).
- ``beam``: gradleak's variant. The new token's own block-0 residual joins the score (one more
  independent view of the noise), prefixes compete on their summed z-scores in a beam of width W,
  and a step with no outlier does not end a sentence at once: up to ``patience`` such steps are
  tolerated and trimmed off the end if nothing follows. Each step is screened: every extension
  is scored at block 1 only (one block of L), and only each prefix's ``screen`` best by block 1
  plus block 0 are scored through blocks 1..L, their z-scores read against a uniform null sample
  of the step's candidates scored the same way (the filter scores every extension, as the paper).

Both searches also count an extension as an outlier only if its z reaches half the median z of its
prefix's steps: on random-init GPT-2 the best wrong extension past a sentence's end still reaches
z = -5 to -7 while true steps sit near -17, and the paper's absolute test alone runs on to the
maximum length (a deviation from App. C.4, on purpose).

B is the disclosed batch size, else the number of first-token candidates that are z-outliers over
blocks 1..L. Every result is
best-effort: no threshold separates true from false rows under noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from gradleak.attacks.base import Reconstruction, RecoveredSequence
from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.config import DagerConfig
from gradleak.attacks.dager.oracle import SpanOracle, build_oracle, input_side_gradient
from gradleak.attacks.span import SpanBasis
from gradleak.attacks.verdict import Cause, CauseKind, best_effort
from gradleak.models.families import ArchitectureFamily
from gradleak.models.fused_activation import fused_activations
from gradleak.models.probe import LinearInputProbe, PrefixState

#: Candidates per step scored through every block to estimate a screened step's null.
NULL_SAMPLE = 128


@dataclass(frozen=True)
class Policy:
    """How a step's extensions are kept: ``width`` per step, ranked by the step's score (the paper)
    or by the prefix's summed z-scores (beam); ``patience`` steps without an outlier are
    tolerated. ``screen`` > 0 scores only each prefix's ``screen`` best extensions by block 1
    (and block 0) through every block, beside a null sample (0: every extension, the paper's)."""

    width: int
    patience: int
    cumulative: bool
    z_threshold: float
    token_evidence: bool
    drop: float = 0.5
    screen: int = 0


@dataclass
class NoisyOracles:
    """Fixed-rank bases of block 0 (tokens) and blocks 1..L (prefixes), and a probe of the
    latter."""

    token: SpanOracle
    layers: list[SpanOracle]
    probe: LinearInputProbe
    screen_probe: LinearInputProbe


@dataclass
class _Beam:
    prefixes: list[tuple[int, ...]]
    zs: list[tuple[float, ...]]
    quiet: torch.Tensor
    state: PrefixState


def logit(residuals: torch.Tensor) -> torch.Tensor:
    """Returns ``log d - log(1 - d)`` of relative residuals d, clamped away from 0 and 1."""
    d = residuals.double().clamp(1e-12, 1 - 1e-9)
    return torch.log(d) - torch.log1p(-d)


def logit_residuals(basis: SpanBasis, rows: torch.Tensor) -> torch.Tensor:
    """Returns the :func:`logit` of each row's relative residual to ``basis``'s span.

    One product with the basis, ``d^2 = 1 - |P v|^2`` for unit v: its cancellation costs float32
    about 1e-7 in d^2, nothing beside the residuals noise leaves (0.1 and up), where the exact
    tests' :meth:`~gradleak.attacks.span.SpanBasis.residuals` pays a second product to resolve
    1e-5.
    """
    flat = rows.reshape(-1, rows.shape[-1]).to(torch.float32)
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    inside = (unit @ basis.basis.T.to(unit.device)).square().sum(-1)
    return logit((1 - inside).clamp_min(0).sqrt().cpu()).reshape(rows.shape[:-1])


def zscores(scores: torch.Tensor) -> torch.Tensor:
    """Returns each score's distance from the mean, in standard deviations (0 when all are
    equal)."""
    std = scores.std() if scores.numel() > 1 else scores.new_tensor(0.0)
    return (scores - scores.mean()) / std if float(std) > 0 else torch.zeros_like(scores)


def edge_rank(singular_values: torch.Tensor, rows: int) -> int:
    """Returns how many singular values stand above the noise bulk (Gavish and Donoho's optimal hard
    threshold for unknown noise: ``omega(beta) * median``, beta the aspect ratio)."""
    s = singular_values.double()
    beta = min(len(s), rows) / max(len(s), rows)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    return max(1, int((s > omega * s.median()).sum()))


def noisy_oracles(family: ArchitectureFamily, gradients, cfg: DagerConfig) -> NoisyOracles:
    """Returns block 0's and blocks 1..``noise_blocks``'s bases, each cut to the noise rank."""
    last = min(cfg.noise_blocks, family.num_blocks - 1)
    oracles = [_fixed_rank(family, gradients, block, cfg) for block in range(last + 1)]
    layers = oracles[1:]
    return NoisyOracles(
        token=oracles[0],
        layers=layers,
        probe=LinearInputProbe(family, [o.layer for o in layers]),
        screen_probe=LinearInputProbe(family, [layers[0].layer]),
    )


def _fixed_rank(family: ArchitectureFamily, gradients, block: int, cfg: DagerConfig) -> SpanOracle:
    first = build_oracle(family, gradients, block, rank_tol=0.0)
    basis = first.basis
    rows = sum(g.shape[0] for g in _stacked(first, gradients))
    rank = cfg.noise_rank if cfg.noise_rank is not None else edge_rank(basis.singular_values, rows)
    first.basis = basis.truncated(min(rank, basis.in_features - cfg.rank_cutoff))
    return first


def _stacked(oracle: SpanOracle, gradients) -> list[torch.Tensor]:
    stacked = (input_side_gradient(layer, gradients) for layer in oracle.layers)
    unique = {id(g): g for g in stacked if g is not None}
    return list(unique.values())


class TokenCandidates:
    """The k tokens closest to block 0's span at each position (computed once per position)."""

    def __init__(
        self,
        oracle: SpanOracle,
        vocab: torch.Tensor,
        *,
        k: int,
        per_position: bool,
        chunk_size: int,
    ):
        self.oracle, self.vocab, self.k = oracle, vocab, min(k, len(vocab))
        self.per_position, self.chunk_size = per_position, chunk_size
        self._full: dict[int, torch.Tensor] = {}
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def full(self, position: int) -> torch.Tensor:
        """Returns the logit residual of every vocabulary token at ``position``."""
        p = position if self.per_position else 0
        if p not in self._full:
            self._full[p] = torch.cat(
                [
                    logit_residuals(
                        self.oracle.basis,
                        self.oracle.probe.token_rows(chunk, position=p)[self.oracle.layer],
                    )
                    for chunk in self.vocab.split(self.chunk_size)
                ]
            )
        return self._full[p]

    def at(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (token ids, block-0 logit scores) of the k closest tokens at ``position``."""
        p = position if self.per_position else 0
        if p not in self._cache:
            scores = self.full(p)
            order = torch.argsort(scores)[: self.k]
            self._cache[p] = (self.vocab[order], scores[order])
        return self._cache[p]


def layer_scores(oracles: list[SpanOracle], rows: dict) -> torch.Tensor:
    """Returns the mean logit residual of probed rows over the blocks' bases."""
    return torch.stack([logit_residuals(o.basis, rows[o.layer]) for o in oracles]).mean(0)


def search(
    oracles: NoisyOracles,
    candidates: TokenCandidates,
    policy: Policy,
    *,
    first: torch.Tensor | None,
    max_length: int,
    chunk_size: int,
    opening: torch.Tensor | None = None,
    deadline: Deadline = NO_DEADLINE,
    timing: list[float] | None = None,
) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """Returns (token ids, per-position z-score) of every sequence the search ends, best first
    (the live beam as it is when ``deadline`` expires). ``opening``: the :func:`first_scores` of
    position 0's candidates, where already computed; ``timing`` receives each later position's
    CPU seconds (all threads)."""
    timing = [] if timing is None else timing
    finished: list[tuple[tuple[int, ...], tuple[float, ...]]] = []
    beam = _start(oracles, candidates, policy, first, chunk_size, opening)
    for position in range(1, max_length):
        if beam is None or deadline.expired():
            break
        started = time.process_time()
        beam = _step(oracles, candidates, policy, beam, position, chunk_size, finished)
        timing.append(time.process_time() - started)
    if beam is not None:
        finished.extend(_trim(p, z, policy) for p, z in zip(beam.prefixes, beam.zs, strict=False))
    finished = [(p, z) for p, z in finished if p]
    return sorted(finished, key=lambda item: sum(item[1]))


def _start(oracles, candidates, policy, first, chunk_size, opening) -> _Beam | None:
    ids, token_scores = candidates.at(0)
    inside = torch.ones_like(ids, dtype=torch.bool) if first is None else torch.isin(ids, first)
    ids, token_scores = ids[inside], token_scores[inside]
    if ids.numel() == 0:
        return None
    scores = first_scores(oracles, ids, chunk_size) if opening is None else opening[inside]
    z = zscores(_combine(scores, token_scores, policy, len(oracles.layers)))
    keep = torch.argsort(z)[: policy.width]
    _, state = oracles.probe.start(ids[keep][:, None])
    quiet = (z[keep] > -policy.z_threshold).long()
    return _Beam([(int(t),) for t in ids[keep]], [(float(v),) for v in z[keep]], quiet, state)


def first_scores(oracles: NoisyOracles, ids: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Returns the mean logit residual over blocks 1..L of each token placed first."""
    with fused_activations(oracles.probe.family.model):
        return torch.cat(
            [
                layer_scores(
                    oracles.layers,
                    {k: v[:, 0] for k, v in oracles.probe.start(c[:, None])[0].items()},
                )
                for c in ids.split(chunk_size)
            ]
        )


def estimate_batch(opening: torch.Tensor, z_threshold: float) -> int:
    """Returns how many of the first-token candidates are z-outliers over blocks 1..L (at least 1),
    given their :func:`first_scores` ``opening``.

    Block 0 alone overcounts: with a fixed rank of 100 its vocabulary residuals are heavy-tailed,
    and dozens of tokens lie five deviations below the mean.
    """
    return max(1, int((zscores(opening) < -z_threshold).sum()))


def _combine(
    scores: torch.Tensor, token_scores: torch.Tensor, policy: Policy, layers: int
) -> torch.Tensor:
    """Returns the step's score: the mean over blocks 1..L, with the new token's block-0 view for
    the beam."""
    if not policy.token_evidence:
        return scores
    return (scores * layers + token_scores) / (layers + 1)


def _step(
    oracles, candidates, policy, beam: _Beam, position: int, chunk_size: int, finished
) -> _Beam | None:
    ids, token_scores = candidates.at(position)
    n_prefix = len(beam.prefixes)
    if policy.screen and policy.screen + NULL_SAMPLE < len(ids):
        z = _screened_zscores(oracles, policy, beam.state, ids, token_scores, position, chunk_size)
    else:
        scores = _combine(
            _branch_scores(oracles.probe, oracles.layers, beam.state, ids, chunk_size),
            token_scores[None, :],
            policy,
            len(oracles.layers),
        )  # (prefixes, tokens)
        z = zscores(scores.flatten()).reshape(scores.shape)
    quiet = beam.quiet[:, None] + 1
    quiet = torch.where(
        z <= _cutoffs(beam.zs, policy)[:, None], torch.zeros_like(quiet), quiet.expand_as(z)
    )
    allowed = quiet <= policy.patience
    rank = (
        z + torch.tensor([sum(zs) for zs in beam.zs], dtype=z.dtype)[:, None]
        if policy.cumulative
        else z
    )
    rank = torch.where(allowed, rank, torch.full_like(rank, math.inf)).flatten()
    keep = torch.argsort(rank)[: policy.width]
    keep = keep[torch.isfinite(rank[keep])]
    parent, column = keep // len(ids), keep % len(ids)
    for i in set(range(n_prefix)) - set(parent.tolist()):
        finished.append(_trim(beam.prefixes[i], beam.zs[i], policy))
    if keep.numel() == 0:
        return None
    _, state = oracles.probe.extend(beam.state.select(parent), ids[column])
    return _Beam(
        prefixes=[
            beam.prefixes[p] + (int(ids[c]),)
            for p, c in zip(parent.tolist(), column.tolist(), strict=False)
        ],
        zs=[
            beam.zs[p] + (float(z[p, c]),)
            for p, c in zip(parent.tolist(), column.tolist(), strict=False)
        ],
        quiet=quiet[parent, column],
        state=state,
    )


def _branch_scores(
    probe: LinearInputProbe,
    layers: list[SpanOracle],
    state: PrefixState,
    ids: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Returns the mean logit residual over ``layers`` of every prefix extended by each of
    ``ids``, shaped (prefixes, tokens)."""
    parts = []
    for chunk in ids.split(max(1, chunk_size // state.size)):
        parts.append(layer_scores(layers, probe.branch(state, chunk)))
    return torch.cat(parts, dim=1)


def _screened_zscores(
    oracles: NoisyOracles,
    policy: Policy,
    state: PrefixState,
    ids: torch.Tensor,
    token_scores: torch.Tensor,
    position: int,
    chunk_size: int,
) -> torch.Tensor:
    """Returns the step's z-scores (prefixes, tokens) where only each prefix's ``policy.screen``
    best extensions by block 1's residual plus block 0's are scored through every block: the
    others get +inf (never kept).

    Block 1 costs one block of the L a full score runs, and its input already mixes the prefix
    in. The z-scores' mean and deviation are read from a null sample, ``NULL_SAMPLE`` candidates
    drawn uniformly (seeded by the position) and scored through every block like the screened
    ones: an estimate of the whole step's, which the paper's filter computes from every
    extension.
    """
    first = _branch_scores(oracles.screen_probe, oracles.layers[:1], state, ids, chunk_size)
    screened = torch.topk(first + token_scores[None, :], policy.screen, largest=False).indices
    null = torch.randperm(len(ids), generator=torch.Generator().manual_seed(position))
    columns, where = torch.unique(
        torch.cat([null[:NULL_SAMPLE], screened.flatten()]), return_inverse=True
    )
    scores = _combine(
        _branch_scores(oracles.probe, oracles.layers, state, ids[columns], chunk_size),
        token_scores[columns][None, :],
        policy,
        len(oracles.layers),
    )
    reference = scores[:, where[:NULL_SAMPLE]].flatten()
    spread = float(reference.std())
    z = torch.full((state.size, len(ids)), math.inf, dtype=scores.dtype)
    rows = torch.arange(state.size)[:, None]
    own = scores[rows, where[NULL_SAMPLE:].reshape(screened.shape)]
    z[rows, screened] = (own - reference.mean()) / (spread if spread > 0 else 1.0)
    return z


def _cutoffs(zs: list[tuple[float, ...]], policy: Policy) -> torch.Tensor:
    """Returns, per prefix, the z-score an extension must reach to count as an outlier.

    That is ``-z_threshold``, or ``drop`` times the median z of the prefix's steps when that is
    lower: past a sentence's end the best of thousands of wrong extensions still reaches z = -5 to
    -7 on GPT-2 when true steps sit near -17, so the absolute test alone never ends a sentence.
    """
    out = []
    for steps in zs:
        history = torch.tensor(steps[1:] or steps, dtype=torch.float64)
        out.append(min(-policy.z_threshold, policy.drop * float(history.median())))
    return torch.tensor(out, dtype=torch.float64)


def _trim(prefix: tuple[int, ...], zs: tuple[float, ...], policy: Policy):
    """Returns the prefix without its trailing steps that were no outlier (tolerated, then
    unconfirmed)."""
    end = len(zs)
    while end > 1 and zs[end - 1] > float(_cutoffs([zs[: end - 1]], policy)[0]):
        end -= 1
    return prefix[:end], zs[:end]


def choose(
    found, count: int, *, overlap: float = 0.7
) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """Returns up to ``count`` best sequences, skipping any that agrees with a chosen one at
    ``overlap`` of the shorter's positions (the paper's ``distinct_thresh``)."""
    chosen: list = []
    for ids, zs in found:
        if any(_agreement(ids, other) >= overlap for other, _ in chosen):
            continue
        chosen.append((ids, zs))
        if len(chosen) == count:
            break
    return chosen


def _agreement(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    n = min(len(a), len(b))
    return sum(x == y for x, y in zip(a, b, strict=False)) / n if n else 1.0


def first_tokens(candidates: TokenCandidates, z_threshold: float) -> tuple[torch.Tensor, int]:
    """Returns the first-token candidates that are z-outliers over the whole vocabulary at position
    0 (always at least the closest one), and how many there are (the batch-size estimate)."""
    scores = candidates.full(0)
    outliers = torch.nonzero(zscores(scores) < -z_threshold).flatten()
    count = int(outliers.numel())
    if count == 0:
        outliers = torch.argsort(scores)[:1]
    return candidates.vocab[outliers], max(1, count)


def policy_for(cfg: DagerConfig, mode: str, batch: int) -> Policy:
    """Returns the paper's filter policy, or the beam's."""
    if mode == "filter":
        return Policy(
            width=batch, patience=0, cumulative=False, z_threshold=cfg.noise_z, token_evidence=False
        )
    return Policy(
        width=cfg.noise_beam * batch,
        patience=cfg.noise_patience,
        cumulative=True,
        z_threshold=cfg.noise_z,
        token_evidence=True,
        screen=cfg.noise_screen,
    )


def candidate_count(batch: int, vocab: int) -> int:
    """Returns k = max(50 B, 5 % of the vocabulary) (the paper's candidate count per position)."""
    return max(50 * batch, math.ceil(0.05 * vocab))


def reconstruct_noisy(
    public,
    update,
    cfg: DagerConfig,
    *,
    mode: str,
    vocab: torch.Tensor,
    causes: tuple[Cause, ...],
    max_length: int,
    deadline: Deadline = NO_DEADLINE,
) -> Reconstruction:
    """Returns DAGER's best-effort reconstruction of a noised update with the ``filter`` or
    ``beam`` search.

    Each sequence's ``residuals`` are its per-position z-scores (lower is surer), not span
    residuals.
    """
    family = public.family
    if not family.causal:
        unsupported = Cause(CauseKind.UNSUPPORTED, detail=_ENCODERS_UNSUPPORTED)
        return Reconstruction("dager", (), causes=(unsupported,), diagnostics={"noise": mode})
    oracles = noisy_oracles(family, update.gradients(), cfg)
    disclosed = update.metadata.batch_size
    candidates = TokenCandidates(
        oracles.token,
        vocab,
        k=candidate_count(disclosed or 1, len(vocab)),
        per_position=family.positions == "learned",
        chunk_size=cfg.chunk_size,
    )
    first, outliers = first_tokens(candidates, cfg.noise_z)
    opening, batch = None, disclosed
    if not batch:
        opening = first_scores(oracles, candidates.at(0)[0], cfg.chunk_size)
        batch = estimate_batch(opening, cfg.noise_z)
    policy = policy_for(cfg, mode, batch)
    timing: list[float] = []
    found = search(
        oracles,
        candidates,
        policy,
        first=first if mode == "filter" else None,
        max_length=max_length,
        chunk_size=cfg.chunk_size,
        opening=opening,
        deadline=deadline,
        timing=timing,
    )
    chosen = choose(found, batch)
    sequences = tuple(
        RecoveredSequence(ids, public.tokenizer.decode(list(ids)), best_effort(*causes), zs)
        for ids, zs in chosen
    )
    diagnostics = {
        "noise": mode,
        "batch_estimate": batch,
        "first_token_outliers": outliers,
        "rank": {o.block: o.basis.rank for o in [oracles.token, *oracles.layers]},
        "candidates_per_position": candidates.k,
        "ended": len(found),
        "positions": len(timing),
        "position_cpu_seconds": round(sum(timing) / len(timing), 3) if timing else None,
    }
    return Reconstruction("dager", sequences, causes=causes, diagnostics=diagnostics)


_ENCODERS_UNSUPPORTED = (
    "DAGER's noise search needs a causal model (prefixes are scored block by block); encoders "
    "under noise are not supported, as in the paper"
)
