"""Stage 1: which tokens pass block 0's span test, per position (learned positions) or once (RoPE);
and, past the hidden-size limit, the bag of tokens that the embedding gradient gives away."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gradleak.attacks.dager.oracle import SpanOracle
from gradleak.attacks.thresholds import ResidualSplit, largest_gap_split
from gradleak.models.families import ArchitectureFamily


@dataclass(frozen=True)
class TokenScan:
    """Candidate tokens per position, sorted by residual.

    Attributes:
        sets: for position p, the accepted token ids (RoPE models: one set, used everywhere).
        residuals: the residual of each accepted token, aligned with ``sets``.
        threshold: the acceptance threshold used.
        split: the residual clusters the threshold was derived from (None if overridden or no gap).
    """

    sets: tuple[torch.Tensor, ...]
    residuals: tuple[torch.Tensor, ...]
    threshold: float
    split: ResidualSplit | None


def vocabulary_residuals(
    oracle: SpanOracle, vocab: torch.Tensor, *, position: int, chunk_size: int
) -> torch.Tensor:
    """Returns the residual of every token in ``vocab`` placed at ``position``: one matrix product
    per chunk."""
    out = torch.empty(len(vocab))
    for start in range(0, len(vocab), chunk_size):
        chunk = vocab[start : start + chunk_size]
        rows = oracle.probe.token_rows(chunk, position=position)
        out[start : start + chunk_size] = oracle.residuals(rows, chunk_size=chunk_size).cpu()
    return out


def scan_tokens(
    oracle: SpanOracle,
    vocab: torch.Tensor,
    *,
    per_position: bool,
    max_length: int,
    tau: float | None,
    chunk_size: int,
    fallback_count: int = 0,
    later: torch.Tensor | None = None,
) -> TokenScan:
    """Returns the tokens that pass ``oracle`` at each position until a position where none does.

    The threshold is derived where every sequence has a token, unless ``tau`` is given: at
    positions 0 and 1 together for per-position scans, since position 0 may hold one token shared
    by the whole batch (an encoder's [CLS]), whose row, repeated B times, sits decades closer to
    the span than the batch's other rows. Where the residuals show no gap (a saturated span), the
    ``fallback_count`` lowest residuals at position 0 set it instead: a best-effort ranking, not a
    test. Models without positions in the block-0 input (RoPE) are scanned once. ``later``, the
    only tokens the batch can hold where the update shows them, replaces the vocabulary past
    position 1: the thresholds still come from the whole vocabulary.
    """
    first = vocabulary_residuals(oracle, vocab, position=0, chunk_size=chunk_size)
    second = (
        vocabulary_residuals(oracle, vocab, position=1, chunk_size=chunk_size)
        if per_position and max_length > 1
        else None
    )
    split = largest_gap_split(first if second is None else torch.cat([first, second]))
    if tau is not None:
        threshold = tau
    elif split is not None:
        threshold = split.threshold()
    elif fallback_count > 0:
        threshold = float(torch.sort(first).values[min(fallback_count, len(first)) - 1]) * (
            1 + 1e-6
        )
    else:
        threshold = 0.0
    rest = vocab if later is None else later  # every position past 1
    sets, residuals = [], []
    position, res, scanned = 0, first, vocab
    while True:
        accepted = torch.nonzero(res < threshold).flatten()
        if accepted.numel() == 0:
            break
        order = torch.argsort(res[accepted])
        sets.append(scanned[accepted[order]])
        residuals.append(res[accepted[order]])
        position += 1
        if not per_position or position >= max_length:
            break
        if position == 1 and second is not None:
            res = second
        else:
            res = vocabulary_residuals(oracle, rest, position=position, chunk_size=chunk_size)
            scanned = rest
    return TokenScan(sets=tuple(sets), residuals=tuple(residuals), threshold=threshold, split=split)


def bag_scan(
    oracle: SpanOracle, bag: torch.Tensor, scan: TokenScan, *, chunk_size: int
) -> TokenScan:
    """Returns ``scan`` with the bag of tokens as its one set (every position's candidates),
    ordered by block 0's residual at position 0, for updates whose block-0 test is approximate
    (a rounded update: true tokens can sit past the scan's threshold)."""
    residuals = vocabulary_residuals(oracle, bag, position=0, chunk_size=chunk_size)
    order = torch.argsort(residuals)
    sets, ordered = (bag[order],), (residuals[order],)
    return TokenScan(sets=sets, residuals=ordered, threshold=scan.threshold, split=scan.split)


def embedding_bag(
    family: ArchitectureFamily, gradients: Mapping[str, torch.Tensor]
) -> torch.Tensor | None:
    """Returns the ids whose token-embedding gradient rows are non-zero, or None if that gradient is
    not shared.

    A lookup table's gradient is zero on every row the batch did not use, so where the update
    shares it, it is the batch's bag of tokens, exactly and whatever the batch size. (A tied
    language-model head makes every row non-zero; the bag is then useless and None is returned.)
    """
    gradient = gradients.get(family.weight_name(family.embedding()))
    if gradient is None:
        return None
    used = torch.nonzero(gradient.detach().ne(0).any(dim=1)).flatten().cpu()
    return used if 0 < len(used) < gradient.shape[0] // 2 else None
