"""Stage 2 for encoders: whole sentences, since every block-1 input depends on every token.

Lengths come from the positions where the separator token passes block 0. For each length a
coordinate search fills the positions from their candidate sets, scoring a sentence by the mean
log residual of its block-1 inputs; random restarts look for further sentences of that length.
The paper's exhaustive product grows as B^P; this search is linear in the candidates per sweep.
"""

from __future__ import annotations

from typing import Any

import torch

from gradleak.attacks.dager.oracle import SpanOracle

_MAX_SWEEPS = 8


def search_sentences(
    oracle: SpanOracle,
    sets: tuple[torch.Tensor, ...],
    *,
    tokenizer: Any,
    threshold: float,
    restarts: int,
    seed: int,
    chunk_size: int,
    batch_size: int | None = None,
) -> tuple[list[tuple[tuple[int, ...], tuple[float, ...]]], bool]:
    """Returns (sentences with per-position residuals, whether the search had to give up early).

    ``batch_size``, when the client disclosed it, ends the search once that many sentences are
    certified; when it equals the number of distinct lengths, each length holds one sentence and
    its restarts stop at the first one found. Without it, each length is searched until
    ``restarts`` restarts in a row find nothing new.
    """
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    generator = torch.Generator().manual_seed(seed)
    found: list[tuple[tuple[int, ...], tuple[float, ...]]] = []
    gave_up = False
    lengths = [p + 1 for p, tokens in enumerate(sets) if p >= 1 and bool((tokens == sep_id).any())]
    one_each = batch_size is not None and batch_size == len(lengths)
    for length in lengths:
        if _all_found(found, batch_size):
            break
        options = [_options(sets[p], cls_id, sep_id) for p in range(1, length - 1)]
        if any(len(o) == 0 for o in options):
            continue
        misses, before = 0, len(found)
        while misses < restarts and not (one_each and len(found) > before) and not _all_found(found, batch_size):
            start = [o[0] if not found and misses == 0 else o[torch.randint(len(o), (1,), generator=generator)]
                     for o in options]
            ids, residuals = _coordinate_search(oracle, cls_id, sep_id, options, start, chunk_size)
            new = ids not in {f[0] for f in found}
            if max(residuals) < threshold and new:
                found.append((ids, residuals))
                misses = 0
            else:
                misses += 1
        gave_up = gave_up or not any(len(f[0]) == length for f in found)
    return found, gave_up


def _all_found(found: list, batch_size: int | None) -> bool:
    return batch_size is not None and len(found) >= batch_size


def _options(tokens: torch.Tensor, cls_id: int, sep_id: int) -> torch.Tensor:
    return tokens[(tokens != cls_id) & (tokens != sep_id)]


def _coordinate_search(oracle, cls_id, sep_id, options, start, chunk_size):
    current = torch.tensor([cls_id, *[int(t) for t in start], sep_id])
    best = _scores(oracle, current[None], chunk_size)[0]
    for _ in range(_MAX_SWEEPS):
        changed = False
        for offset, choices in enumerate(options):
            position = offset + 1
            if len(choices) == 1:
                current[position] = choices[0]
                continue
            variants = current.repeat(len(choices), 1)
            variants[:, position] = choices
            scores = _scores(oracle, variants, chunk_size)
            pick = int(torch.argmin(scores))
            if scores[pick] < best - 1e-9:
                best, current, changed = float(scores[pick]), variants[pick].clone(), True
        if not changed:
            break
    residuals = oracle.residuals(oracle.probe(current[None]))[0]
    return tuple(int(t) for t in current), tuple(float(r) for r in residuals)


def _scores(oracle, sentences: torch.Tensor, chunk_size: int) -> torch.Tensor:
    rows_per_batch = max(1, chunk_size // sentences.shape[1])
    out = []
    for chunk in sentences.split(rows_per_batch):
        residuals = oracle.residuals(oracle.probe(chunk)).cpu().double()
        out.append(torch.log10(residuals.clamp_min(1e-12)).mean(dim=1))
    return torch.cat(out) if out else torch.empty(0)
