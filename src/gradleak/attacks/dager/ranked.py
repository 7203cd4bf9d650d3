"""Best-effort prefix search for batches with more distinct rows than the hidden size.

Past ``b = d`` every attention-input span fills the whole space, so no span test separates true
prefixes from false ones (DAGER's GPT-2 falls to ROUGE-1 30 on CoLA at B = 128). The MLP
down-projection still ranks them: its input is ``4d`` wide and its gradient's span (rank at most
``d``) is a strict subspace that true rows lie measurably closer to than false ones.

Raw residuals rank poorly, because some tokens lie close to every span whatever precedes them.
What marks a true pair is a token lying closer than that token usually does, so each candidate's
log residual is compared with the same token's median over every live prefix (column centring)
and read as a robust z-score. On DAGER's first CoLA batch of 128 (1,175 tokens, 532 distinct) on a
random-init GPT-2, that put the true next token first for 122 of 125, 69 of 69 and 20 of 20 true
prefixes at positions 4, 8 and 12, where the raw residual did so for 109, 29 and 6
(``benchmarks/ranked_bench.py``). First tokens have no prefixes to compare with; their raw
residuals already separate (true ones at robust z <= -9.6, all others >= -3.8).

A step keeps, per prefix, the few extensions whose score stands out; a prefix with none ends.
Nothing here is ever certified.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.decoder import DecoderSearch
from gradleak.attacks.span import SpanBasis
from gradleak.models.extension import FactoredExtension
from gradleak.models.families import LinearLayer
from gradleak.models.gemm import linear
from gradleak.models.probe import LinearInputProbe, PrefixState

logger = logging.getLogger(__name__)

#: Fewest live prefixes for which a token's median over them is a fair baseline; below it each
#: prefix's own median is used.
MIN_COLUMN = 8
#: A runner-up extension is kept only when its score reaches this fraction of the prefix's best.
RUNNER_UP_FRACTION = 0.25
#: A sequence's trailing token is dropped when its score is below this fraction of the median
#: score of the tokens before it.
_TAIL_FRACTION = 0.6
#: Rows closer than this (relative) to the prefix's previous row carry no new evidence.
_SAME_ROW = 1e-6
#: Most bytes of rows the factored extension computes at once: its temporaries then stay in the
#: cache, and under glibc's mmap threshold (32 MiB), above which every call's new temporaries are
#: fresh pages whose first touch doubled the cost of the elementwise steps.
TILE_BYTES = 16 * 2**20
#: 1.4826 x MAD estimates a normal distribution's standard deviation.
MAD_SCALE = 1.4826


@dataclass(frozen=True)
class RankingEvidence:
    """Exposed layers whose spans rank candidates, and the probe that computes their inputs.

    Attributes:
        layers: the layers (typically MLP down-projections of the first blocks).
        bases: each layer's gradient span, in the same order.
        probe: computes every layer's input in one pass (KV cache up to the deepest one).
        extension: computes one-token extensions' rows with shared work, where the model's
            block allows it (block 0's down-projection alone); the probe's rows otherwise.
    """

    layers: tuple[LinearLayer, ...]
    bases: tuple[SpanBasis, ...]
    probe: LinearInputProbe
    extension: FactoredExtension | None = None

    def branch(self, state: PrefixState, tokens: torch.Tensor) -> dict[LinearLayer, torch.Tensor]:
        """Returns every layer's rows for each prefix extended by each token (P, C, in)."""
        if self.extension is not None:
            return self.extension.branch(state, tokens)
        return self.probe.branch(state, tokens)

    def tiles(
        self, state: PrefixState, tokens: torch.Tensor, *, chunk_size: int
    ) -> Iterator[tuple[slice, slice, dict[LinearLayer, torch.Tensor]]]:
        """Yields ``(prefixes, tokens, rows)`` covering every (prefix, token) pair once: the
        factored extension's tiles of at most ``TILE_BYTES`` of rows, else the probe's passes of
        all prefixes by ``chunk_size // P`` tokens."""
        if self.extension is not None:
            width = self.extension.layer.in_features * 4
            rows = max(1, min(chunk_size, TILE_BYTES // width))
            for prefixes, columns, tile in self.extension.tiles(state, tokens, rows_per_tile=rows):
                yield prefixes, columns, {self.extension.layer: tile}
            return
        per_pass = max(1, chunk_size // max(1, state.size))
        for start in range(0, len(tokens), per_pass):
            columns = slice(start, min(start + per_pass, len(tokens)))
            yield slice(None), columns, self.probe.branch(state, tokens[columns])

    def checked(self, state: PrefixState, tokens: torch.Tensor) -> RankingEvidence:
        """Returns this evidence without its factored extension where the extension's rows for
        these extensions differ from the probe's."""
        if self.extension is None or self.extension.agrees(state, tokens):
            return self
        logger.warning("factored extension disagrees with the probe; probing every pair")
        return replace(self, extension=None)

    def log_residuals(self, rows: dict[LinearLayer, torch.Tensor]) -> torch.Tensor:
        """Returns the summed log residuals of probed rows over every layer.

        Unlike :meth:`SpanBasis.residuals` this takes ``1 - |P v|^2``, one product instead of
        two: ranked residuals lie around 0.1 to 0.3, far above where float32 cancellation
        (about 3e-4) would blur them.
        """
        total: torch.Tensor | None = None
        for layer, basis in zip(self.layers, self.bases, strict=True):
            # A tile stored token-major (a transposed view) is read in its own order.
            swapped = rows[layer].dim() == 3 and not rows[layer].is_contiguous()
            stored = rows[layer].transpose(0, 1) if swapped else rows[layer]
            flat = stored.reshape(-1, basis.in_features).to(torch.float32)
            norms = torch.einsum("ij,ij->i", flat, flat)
            inside = linear(flat, basis.basis.to(flat.device))
            projected = torch.einsum("ij,ij->i", inside, inside)
            value = 0.5 * torch.log((1 - projected / norms.clamp_min(1e-30)).clamp_min(1e-12))
            value = value.reshape(stored.shape[:-1]).cpu()
            value = value.T if swapped else value
            total = value if total is None else total + value
        if total is None:
            raise ValueError("ranking evidence needs at least one layer")
        return total


def robust_z(values: torch.Tensor) -> torch.Tensor:
    """Returns ``(values - median) / (1.4826 MAD)`` over all entries."""
    median = values.median()
    spread = (values - median).abs().median().clamp_min(1e-12) * MAD_SCALE
    return (values - median) / spread


def search_ranked(
    evidence: RankingEvidence,
    *,
    tokens_at: Callable[[int], torch.Tensor | None],
    max_length: int,
    chunk_size: int,
    max_frontier: int,
    z_accept: float,
    per_prefix: int,
    deadline: Deadline = NO_DEADLINE,
) -> DecoderSearch:
    """Returns best-effort sequences grown from the tokens whose scores stand out at every step.

    Args:
        evidence: the ranking layers.
        tokens_at: candidate token ids for a position, or None past the last position.
        max_length: longest sequence considered.
        chunk_size: candidate rows per forward pass.
        max_frontier: most prefixes kept per step.
        z_accept: a candidate is kept when its score is this many robust deviations below the
            step's median.
        per_prefix: most extensions kept per prefix and step.
        deadline: when it expires, the live prefixes are returned as they are.
    """
    result = DecoderSearch()
    first = tokens_at(0)
    if first is None or first.numel() == 0:
        return result
    prefixes, scores, state, last_rows = _first_tokens(
        evidence,
        first,
        chunk_size=chunk_size,
        z_accept=z_accept,
        result=result,
    )
    position = 1
    if prefixes and max_length > 1:
        check = tokens_at(1)
        if check is not None and check.numel() > 0:
            evidence = evidence.checked(state.select(torch.arange(min(8, state.size))), check[:8])
    while prefixes and position < max_length and not deadline.expired():
        tokens = tokens_at(position)
        if tokens is None or tokens.numel() == 0:
            break
        started = time.perf_counter()
        step = step_scores(evidence, state, tokens, last_rows, chunk_size=chunk_size)
        parent, column, z = _select(step, z_accept=z_accept, per_prefix=per_prefix)
        if len(parent) > max_frontier:
            parent, column, z = _surest(parent, column, z, scores, max_frontier)
            result.truncated = True
        result.candidates.append(step.numel())
        result.accepted.append(len(parent))
        logger.info(
            "ranked search: position %d, %d prefixes x %d tokens, %d kept, %.1f s",
            position,
            step.shape[0],
            step.shape[1],
            len(parent),
            time.perf_counter() - started,
        )
        extended = set(parent.tolist())
        result.sequences.extend(
            (prefixes[i], scores[i]) for i in range(len(prefixes)) if i not in extended
        )
        if len(parent) == 0:
            prefixes = []
            break
        rows, state = evidence.probe.extend(state.select(parent), tokens[column])
        last_rows = rows[evidence.layers[0]]
        prefixes = [
            prefixes[p] + (int(tokens[c]),)
            for p, c in zip(parent.tolist(), column.tolist(), strict=False)
        ]
        scores = [
            scores[p] + (float(s),) for p, s in zip(parent.tolist(), z.tolist(), strict=False)
        ]
        position += 1
    result.sequences.extend(zip(prefixes, scores, strict=False))
    result.sequences = _tidy(result.sequences)
    return result


def _tidy(sequences):
    """Returns the sequences with weak last tokens trimmed, minus duplicates and prefixes of others,
    surest first.

    A finished sentence's prefix still gets extended now and then by a false token that passes
    the step's threshold, but such a token scores far weaker than the sentence's own (and under a
    classification loss the true last token, whose row is pooled, scores strongest of all).
    """
    return distinct((ids, z, trimmed_length(z)) for ids, z in sequences)


def trimmed_length(z) -> int:
    """Returns a sequence's length without its trailing tokens whose score is below
    ``_TAIL_FRACTION`` of the median score of the tokens before them."""
    end = len(z)
    while end > 1 and z[end - 1] > _TAIL_FRACTION * statistics.median(z[: end - 1]):
        end -= 1
    return end


def distinct(sequences):
    """Returns the sequences (ids, scores, length) cut to their lengths, minus duplicates and
    prefixes of others, surest (lowest mean score) first."""
    cut = {}
    for ids, z, end in sequences:
        key = ids[:end]
        if key not in cut or sum(z[:end]) < sum(cut[key]):
            cut[key] = z[:end]
    prefixes = {ids[:n] for ids in cut for n in range(1, len(ids))}
    kept = [(ids, z) for ids, z in cut.items() if ids not in prefixes]
    kept.sort(key=lambda seq: sum(seq[1]) / len(seq[1]))
    return kept


def _first_tokens(evidence, tokens, *, chunk_size, z_accept, result):
    values = torch.cat(
        [
            evidence.log_residuals(evidence.probe.start(chunk[:, None])[0]).flatten()
            for chunk in tokens.split(chunk_size)
        ]
    )
    z = robust_z(values)
    keep = torch.nonzero(z < -z_accept).flatten()
    result.candidates.append(len(tokens))
    result.accepted.append(len(keep))
    if keep.numel() == 0:
        return [], [], None, None
    rows, state = evidence.probe.start(tokens[keep][:, None])
    last_rows = rows[evidence.layers[0]][:, -1]
    return [(int(tokens[k]),) for k in keep], [(float(z[k]),) for k in keep], state, last_rows


def before_largest_gap(z: torch.Tensor) -> torch.Tensor:
    """Returns the indices of the scores before the largest gap among those below the median."""
    ordered, order = torch.sort(z)
    low = int((ordered < 0).sum())
    if low < 2:
        return order[:low]
    cut = int(torch.argmax(ordered[1:low] - ordered[: low - 1])) + 1
    return order[:cut]


def step_scores(
    evidence,
    state: PrefixState,
    tokens: torch.Tensor,
    last_rows: torch.Tensor,
    *,
    chunk_size: int,
    min_column: int = MIN_COLUMN,
) -> torch.Tensor:
    """Returns the (prefixes, tokens) matrix of centred log residuals, as robust z-scores; an
    extension whose row repeats its prefix's last row (a rotary model's repeated token after a
    prefix of that token alone) carries no evidence and scores +inf."""
    scores = torch.empty(state.size, len(tokens))
    repeated = torch.zeros(state.size, len(tokens), dtype=torch.bool)
    for prefixes, columns, rows in evidence.tiles(state, tokens, chunk_size=chunk_size):
        scores[prefixes, columns] = evidence.log_residuals(rows)
        repeated[prefixes, columns] = _repeats(rows[evidence.layers[0]], last_rows[prefixes])
    if scores.shape[0] >= min_column:
        scores = scores - scores.median(dim=0, keepdim=True).values
    else:
        scores = scores - scores.median(dim=1, keepdim=True).values
    return robust_z(scores).masked_fill(repeated, float("inf"))


def _repeats(rows: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Returns which rows (P, C, in) repeat their prefix's last row (P, in) to ``_SAME_ROW``.

    Rows are compared whole only where their norms agree about that closely, which a repeat
    needs (ten times looser, for the norms' own rounding).
    """
    previous = previous.to(rows.device)
    reference = previous.norm(dim=-1)[:, None]
    close = (rows.norm(dim=-1) - reference).abs() <= 10 * _SAME_ROW * reference
    where = torch.nonzero(close, as_tuple=True)
    if where[0].numel():
        gap = (rows[where] - previous[where[0]]).norm(dim=-1)
        close[where] = gap <= _SAME_ROW * reference[where[0], 0]
    return close.cpu()


def _select(z: torch.Tensor, *, z_accept: float, per_prefix: int):
    """Returns (parent, column, score) of the extensions that stand out, best first."""
    k = min(per_prefix, z.shape[1])
    best, column = torch.topk(z, k, dim=1, largest=False)
    parent = torch.arange(z.shape[0])[:, None].expand_as(column)
    passed = best < -z_accept
    # A prefix shared by many sentences has many true extensions, all standing out; a near miss
    # beside a strong true one stands out far less.
    passed &= best <= best[:, :1] * RUNNER_UP_FRACTION
    parent, column, score = parent[passed], column[passed], best[passed]
    order = torch.argsort(score)
    return parent[order], column[order], score[order]


def _surest(parent, column, z, scores, keep: int):
    """Returns the ``keep`` extensions with the lowest mean score over the whole extended prefix.

    A false branch usually took one weak token somewhere, so its mean trails the true
    branches' even where its newest token happens to score well.
    """
    totals = torch.tensor([sum(scores[p]) for p in parent.tolist()], dtype=z.dtype)
    lengths = torch.tensor([len(scores[p]) + 1 for p in parent.tolist()], dtype=z.dtype)
    order = torch.argsort((totals + z) / lengths)[:keep]
    return parent[order], column[order], z[order]
