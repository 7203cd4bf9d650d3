"""Stage 2 for encoders: whole sentences, since every block-1 input depends on every token.

Lengths come from the positions where the separator token passes block 0. For each length a
local search fills the positions from their candidate sets, scoring a sentence by the mean log
residual of its block-1 inputs, and moving by single changes or by a least-squares combination of
them; random restarts look for further sentences of that length. The paper's exhaustive product
grows as B^P; a round of this search is linear in the candidates.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.contexts import SentenceContexts
from gradleak.attacks.dager.oracle import MLP_GATE_ROLES, SpanOracle

#: What scores the descents: a span oracle's probe, or block 0's attention output computed from
#: each (token, position)'s query, key and value.
Steer = SpanOracle | SentenceContexts

#: Rounds of the local search from one start.
_MAX_ROUNDS = 30
#: Deterministic starts per length (see :func:`_start`), all tried in the search's first pass.
_FIRST_GUESSES = 2
#: Ridge of the joint step, relative to the mean squared effect of a single change.
_RIDGE = 1e-3
#: Single changes the joint step combines, those that score best alone: its Gram matrix costs the
#: square of their number, and more than the changes' evaluation once those share their work.
_JOINT = 128
#: Changes of largest joint weight that a stalled round tries in pairs.
_PAIRED = 16
#: Single changes a ranked round evaluates, widening while none gains: those the score's
#: gradient predicts gain most.
_RANKED = (48, 192)
#: Random draws that look for a start not yet descended from.
_REDRAWS = 8
#: Single changes of a found sentence that :func:`nearest_neighbour` tests, the likeliest first.
_NEIGHBOURS = 64

_log = logging.getLogger(__name__)


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
    rows: int | None = None,
    likely: tuple[torch.Tensor, ...] | None = None,
    lengths: tuple[int, ...] | None = None,
    first_find: bool = False,
    swaps: bool = False,
    known: list[tuple[tuple[int, ...], tuple[float, ...]]] | None = None,
    steer: Steer | None = None,
    deadline: Deadline = NO_DEADLINE,
    best_effort: int = 0,
) -> tuple[list[tuple[tuple[int, ...], tuple[float, ...]]], bool]:
    """Returns (sentences with per-position residuals, whether some sentence may be missing).

    ``rows``, the number of distinct block-1 rows (the span's rank where it is not saturated),
    is the batch's total length, since every encoder row depends on its whole sentence: the
    search skips lengths longer than what is left and ends once the found sentences account for
    every row. ``batch_size``, when the client disclosed it, also ends the search once that many
    sentences are found. Each length is searched until ``restarts`` restarts in a row find
    nothing new, in passes of 2, 4, 8, ... restarts per length, so that lengths where [SEP]
    passed block 0 by chance do not hold up the true ones.

    ``likely``, per position a subset of ``sets`` (the tokens the embedding gradients allow
    there, see :meth:`gradleak.attacks.dager.placement.TokenPlacement.candidates`), is searched
    from each start; once that search is exhausted the full sets polish its results, closest first.

    ``lengths``, the lengths where the embedding gradients allow [SEP] at the end, the most
    likely first, restricts and orders the lengths tried: the passes try only the first 2, 4, 8,
    ... live ones, so the likely lengths get more starts before the unlikely ones get any.
    ``first_find`` ends the search at the first new sentence, for a caller that peels it off the
    gradient before searching on; ``known`` holds sentences already found on these spans, which
    the returned list starts with. When ``deadline`` expires the search returns what it has.
    ``swaps`` also moves by exchanging two positions' tokens: where every position may hold any
    token of a bag, a sentence with the right tokens in the wrong order is reached by no single
    change that does not score worse. ``best_effort``, for spans that certify nothing (saturated),
    fills the sentences found up to that many with the closest other descents' ends (lowest mean
    log residual), so the search still answers where no sentence passes the threshold.

    ``steer``, a cheaper span whose rows also depend on the whole sentence (block 0's attention
    output, see :func:`gradleak.attacks.dager.searches.steering_oracle`), scores the descents in
    ``oracle``'s place; every sentence kept is still tested on ``oracle`` alone, so the steer only
    decides where the search looks.
    """
    steer = oracle if steer is None else steer
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    generator = torch.Generator().manual_seed(seed)
    found: list[tuple[tuple[int, ...], tuple[float, ...]]] = list(known or ())
    already = len(found)
    options, first = {}, {}
    for p, tokens in enumerate(sets):
        if p >= 1 and bool((tokens == sep_id).any()):
            full = [_options(sets[q], cls_id, sep_id) for q in range(1, p)]
            if all(len(o) for o in full):
                options[p + 1] = full
                first[p + 1] = (
                    full
                    if likely is None
                    else [
                        cut if len(cut := _options(likely[q], cls_id, sep_id)) else o
                        for q, o in enumerate(full, start=1)
                    ]
                )
    if lengths is not None:
        options = {n: options[n] for n in lengths if n in options}
    misses = dict.fromkeys(options, 0)
    tried: dict[int, set[tuple[int, ...]]] = {n: set() for n in options}

    def left() -> int:
        return rows - sum(len(f[0]) for f in found) if rows is not None else 0

    def disclosed_all() -> bool:
        return batch_size is not None and len(found) >= batch_size

    def done() -> bool:
        return (
            deadline.expired()
            or disclosed_all()
            or (rows is not None and left() <= 0)
            or (first_find and len(found) > already)
        )

    def keep(ids: tuple[int, ...], steered: tuple[float, ...]) -> bool:
        if ids in {f[0] for f in found}:
            return False
        residuals = steered if steer is oracle else _residuals(oracle, ids, chunk_size)
        if max(residuals) >= threshold:
            return False
        found.append((ids, residuals))
        misses[len(ids)] = 0
        _log.info("encoder search: a sentence of length %d found", len(ids))
        return True

    def fits(length: int) -> bool:
        return not done() and (rows is None or length <= left())

    per_pass, unpolished = _FIRST_GUESSES, []
    ends: dict[tuple[int, ...], tuple[float, ...]] = {}
    while not done():
        live = [n for n in options if misses[n] < restarts and fits(n)]
        if lengths is not None:  # ordered, the likeliest first: widen the window pass by pass
            live = live[:per_pass]
        if not live:
            break
        for length in live:
            for _ in range(min(per_pass, restarts - misses[length])):
                if not fits(length):
                    break
                guess = _unclaimed(first[length], found)
                start = _start(
                    guess,
                    options[length],
                    attempt=misses[length],
                    generator=generator,
                    fresh=not any(len(f[0]) == length for f in found),
                )
                # The deterministic starts coincide where every position holds the same bag
                # (relative positions): a start already descended from gives a random one.
                for _ in range(_REDRAWS):
                    if tuple(map(int, start)) not in tried[length]:
                        break
                    start = _start(
                        guess, options[length], attempt=0, generator=generator, fresh=False
                    )
                tried[length].add(tuple(map(int, start)))
                # Found sentences attract descents, so every other one is kept off the tokens
                # they hold; the rest may use them: '.' or 'the' can stand at one position in
                # several sentences.
                reach = guess if misses[length] % 2 == 0 else first[length]
                ids, residuals = _descend(
                    steer, cls_id, sep_id, reach, start, chunk_size, swaps=swaps, deadline=deadline
                )
                ends[ids] = residuals
                if not keep(ids, residuals):
                    misses[length] += 1
                    if any(len(r) < len(o) for r, o in zip(reach, options[length], strict=False)):
                        unpolished.append((float(_mean_log10(torch.tensor(residuals))), ids))
        per_pass *= 2
    # Polishing with the full sets costs most: only once the cut sets are exhausted, closest first.
    for _, ids in sorted(set(unpolished)):
        if fits(len(ids)):
            full = options[len(ids)]
            polished = _descend(
                steer, cls_id, sep_id, full, ids[1:-1], chunk_size, swaps=swaps, deadline=deadline
            )
            ends[polished[0]] = polished[1]
            keep(*polished)
    if rows is not None:
        missing = left() > 0
    else:
        cut_short = first_find and len(found) > already and not disclosed_all()
        missing = cut_short or any(n not in {len(f[0]) for f in found} for n in options)
    if len(found) < best_effort:
        closest = _closest(ends, found, best_effort - len(found))
        found += [(ids, _residuals(oracle, ids, chunk_size)) for ids, _ in closest]
    return found, missing


def _closest(
    ends: dict[tuple[int, ...], tuple[float, ...]],
    found: list[tuple[tuple[int, ...], tuple[float, ...]]],
    count: int,
) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """Returns up to ``count`` of the descents' ``ends`` not in ``found``, the lowest mean log
    residual first."""
    taken = {ids for ids, _ in found}
    spare = sorted(
        (float(_mean_log10(torch.tensor(res))), ids)
        for ids, res in ends.items()
        if ids not in taken
    )
    return [(ids, ends[ids]) for _, ids in spare[:count]]


def nearest_neighbour(
    oracle: SpanOracle,
    ids: tuple[int, ...],
    sets: tuple[torch.Tensor, ...],
    *,
    tokenizer: Any,
    chunk_size: int,
) -> float:
    """Returns the largest row residual of the closest sentence one token away from ``ids``
    (within ``sets``) or with two of its tokens exchanged; infinity where there is none.

    No block-1 row depends on one token, so no row is known true, and the threshold is borrowed
    from block 0. Where the span's weakest directions sit near float noise (a narrow or shallow
    model), the rows of a sentence that is nearly right pass it too; a sentence is told apart only
    if it stands clearly below its neighbours. On attention inputs the single changes tested are
    the :data:`_NEIGHBOURS` whose score the gradient predicts lowest, the likeliest to come close.
    On block 0's MLP layers (a shallow classifier's gate, a shared block's) wrong sentences of
    the batch's tokens can sit under the threshold itself, so this check is what certifies
    there, and it tests every single change.
    """
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    current = torch.tensor(ids)
    options = [_options(sets[p], cls_id, sep_id) for p in range(1, min(len(ids) - 1, len(sets)))]
    variants, positions = _single_changes(current, options)
    if len(variants) and oracle.layers[0].role not in MLP_GATE_ROLES:
        variants = variants[_likeliest_changes(oracle, current, variants, positions)[:_NEIGHBOURS]]
    variants = torch.cat([variants, _swapped(current)])
    if not len(variants):
        return float("inf")
    worst = _off_span(oracle, variants, chunk_size).norm(dim=-1).amax(dim=-1)
    return float(worst.min())


def _residuals(oracle: SpanOracle, ids: tuple[int, ...], chunk_size: int) -> tuple[float, ...]:
    """Returns the residuals of the sentence ``ids``'s rows on ``oracle``."""
    off = _off_span(oracle, torch.tensor(ids)[None], chunk_size)[0]
    return tuple(float(r) for r in off.norm(dim=-1))


def _start(
    guess: list[torch.Tensor],
    full: list[torch.Tensor],
    *,
    attempt: int,
    generator: torch.Generator,
    fresh: bool,
) -> list[torch.Tensor]:
    """Returns where the ``attempt``-th descent at a length starts.

    The first two starts take, per position, the guess's first token (the one the embedding
    gradients place most strongly) and the guess's token that passed block 0 with the lowest
    residual (``full`` is in that order); they often hold different sentences' tokens, and one
    of them is often near enough to a true sentence. Later starts, and any start at a length
    where a sentence was found already, are random.
    """
    if fresh and attempt == 0:
        return [choices[0] for choices in guess]
    if fresh and attempt == 1:
        return [
            ordered[torch.isin(ordered, choices)][0]
            for choices, ordered in zip(guess, full, strict=False)
        ]
    return [choices[torch.randint(len(choices), (1,), generator=generator)] for choices in guess]


def _unclaimed(options: list[torch.Tensor], found: list) -> list[torch.Tensor]:
    """Returns ``options`` without the tokens that found sentences hold at the same positions.

    Two sentences can share a token at a position, so this is a first guess; where nothing is
    left the position keeps its options.
    """
    out = []
    for position, choices in enumerate(options, start=1):
        claimed = torch.tensor(
            [f[0][position] for f in found if len(f[0]) > position + 1], dtype=choices.dtype
        )
        rest = choices[~torch.isin(choices, claimed)]
        out.append(rest if len(rest) else choices)
    return out


def _options(tokens: torch.Tensor, cls_id: int, sep_id: int) -> torch.Tensor:
    return tokens[(tokens != cls_id) & (tokens != sep_id)]


def _descend(
    oracle, cls_id, sep_id, options, start, chunk_size, *, swaps=False, deadline=NO_DEADLINE
):
    """Returns the local optimum reached from ``start``, and its per-row residuals.

    A round scores single-token changes. One wrong token pushes every block-1 row off the span
    (attention mixes it into all of them), so far from the truth single changes barely differ in
    score and a one-at-a-time search stalls in mixtures of the batch's sentences. The rows'
    off-span parts are, however, close to additive in the changes, so a least-squares combination
    of the single changes' effects (a Gauss-Newton step over discrete choices) points at many right
    tokens at once; the round keeps whichever of it and the best single change scores better.
    Near the truth, with two tokens wrong, neither helps: fixing one leaves every row off, and the
    combination also applies spurious changes. So where both fail, the round tries every pair of
    the changes the combination weighs most.

    Evaluating every single change costs a forward pass per change of a whole sentence, which
    grows with the square of its length. So a round first evaluates only the changes that the
    score's gradient with respect to the token embeddings predicts gain most (one backward pass;
    :data:`_RANKED` of them, then more); only when those find no gain does it evaluate them all,
    so the descent still stops only where no single change, combination or pair helps, or when
    ``deadline`` expires (one descent on a long sentence can take minutes).
    """
    current = torch.tensor([cls_id, *[int(t) for t in start], sep_id])
    off = _off_span(oracle, current[None], chunk_size)[0]
    for _ in range(_MAX_ROUNDS):
        variants, positions = _single_changes(current, options)
        if not len(variants) or deadline.expired():
            break
        now = float(_score(off[None])[0]) - 1e-9
        swap = _best_swap(oracle, current, chunk_size) if swaps else None
        step = (
            None
            if isinstance(oracle, SentenceContexts)  # every change is cheap: no ranked round
            else _ranked_step(oracle, current, off, variants, positions, chunk_size, now)
        )
        if step is not None:
            if swap is not None and swap[2] < float(_score(step[1][None])[0]):
                step = swap[0], swap[1]
            current, off = step
            continue
        best, best_off, best_score, weights = _best_step(
            oracle, current, off, variants, positions, chunk_size
        )
        if swap is not None and swap[2] < best_score:
            best, best_off, best_score = swap
        if best_score >= now:
            pairs = _pair_changes(current, weights, variants, positions)
            if not len(pairs):
                break
            pair_off = _off_span(oracle, pairs, chunk_size)
            pair_scores = _score(pair_off)
            pick = int(torch.argmin(pair_scores))
            if float(pair_scores[pick]) >= now:
                break
            best, best_off = pairs[pick], pair_off[pick]
        current, off = best.clone(), best_off
    return tuple(int(t) for t in current), tuple(float(r) for r in off.norm(dim=-1))


def _ranked_step(oracle, current, off, variants, positions, chunk_size, now):
    """Returns (sentence, its off-span rows) of the first step that scores below ``now`` among the
    gradient's likeliest changes, widening through :data:`_RANKED`; None if none does."""
    order = None
    for size in _RANKED:
        if len(variants) <= size:
            return None
        if order is None:
            order = _likeliest_changes(oracle, current, variants, positions)
        pick = order[:size]
        step = _best_step(oracle, current, off, variants[pick], positions[pick], chunk_size)
        if step[2] < now:
            return step[0], step[1]
    return None


def _best_step(oracle, current, off, variants, positions, chunk_size):
    """Returns (sentence, its off-span rows, its score, the joint weights): the better of the
    best single change among ``variants`` and their least-squares combination."""
    effects = _changes_off_span(oracle, current, variants, positions, chunk_size)
    scores = _score(effects)
    weights = torch.full((len(variants),), float("-inf"), dtype=torch.float64)
    pick = torch.argsort(scores)[:_JOINT]
    weights[pick] = _joint_weights(off, effects[pick])
    joint = _joint_change(current, weights, variants, positions)
    joint_off = _off_span(oracle, joint[None], chunk_size)[0]
    single = int(torch.argmin(scores))
    best = (joint, joint_off, float(_score(joint_off[None])[0]), weights)
    if float(scores[single]) < best[2]:
        best = (variants[single].clone(), effects[single], float(scores[single]), weights)
    return best


def _likeliest_changes(
    oracle: SpanOracle, current: torch.Tensor, variants: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Returns the indices of the single changes, the most negative first-order effect on the
    sentence's score (through its token embeddings) first."""
    table = oracle.probe.embedding_weight.detach()
    embeds = table[current.to(table.device)].clone().requires_grad_(True)
    with torch.enable_grad():
        rows = oracle.probe.embedded_sequences(embeds[None])[oracle.layer]
        score = _score(oracle.basis.off_span(rows[0])[None])[0]
        (slope,) = torch.autograd.grad(score, embeds)
    new = variants[torch.arange(len(variants)), positions].to(table.device)
    old = current[positions].to(table.device)
    gain = ((table[new] - table[old]) * slope[positions.to(table.device)]).sum(dim=-1)
    return torch.argsort(gain.cpu())


def _single_changes(
    current: torch.Tensor, options: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns every sentence one token away from ``current`` within ``options``, and the changed
    positions."""
    variants, positions = [], []
    for offset, choices in enumerate(options):
        position = offset + 1
        others = choices[choices != current[position]]
        block = current.repeat(len(others), 1)
        block[:, position] = others
        variants.append(block)
        positions.append(torch.full((len(others),), position))
    if not variants:
        return current[None, :0].repeat(0, 1), torch.empty(0, dtype=torch.long)
    return torch.cat(variants), torch.cat(positions)


def _best_swap(oracle, current, chunk_size):
    """Returns (sentence, its off-span rows, its score) of the best exchange of two of
    ``current``'s inner tokens, or None where there is none."""
    exchanged = _swapped(current)
    if not len(exchanged):
        return None
    effects = _off_span(oracle, exchanged, chunk_size)
    scores = _score(effects)
    pick = int(torch.argmin(scores))
    return exchanged[pick], effects[pick], float(scores[pick])


def _swapped(current: torch.Tensor) -> torch.Tensor:
    """Returns ``current`` with each pair of its inner positions' (distinct) tokens exchanged."""
    inner = range(1, len(current) - 1)
    out = []
    for i in inner:
        for j in inner:
            if i < j and current[i] != current[j]:
                exchanged = current.clone()
                exchanged[i], exchanged[j] = current[j], current[i]
                out.append(exchanged)
    return torch.stack(out) if out else current[None, :0].repeat(0, 1)


def _joint_weights(off: torch.Tensor, effects: torch.Tensor) -> torch.Tensor:
    """Solves ``min_w |off + sum_i w_i (effect_i - off)|^2`` (lightly ridged) over the single
    changes."""
    deltas = (effects - off).flatten(1)
    gram = (deltas @ deltas.T).double()
    gram.diagonal().add_(_RIDGE * float(gram.diagonal().mean()) + 1e-30)
    return torch.linalg.solve(gram, -(deltas @ off.flatten()).double())


def _joint_change(current, weights, variants, positions) -> torch.Tensor:
    """Returns ``current`` with, at each position, the change of largest weight if that weight
    exceeds one half."""
    joint = current.clone()
    for position in positions.unique():
        mine = torch.nonzero(positions == position).flatten()
        pick = mine[int(torch.argmax(weights[mine]))]
        if weights[pick] > 0.5:
            joint[position] = variants[pick, position]
    return joint


def _pair_changes(current, weights, variants, positions) -> torch.Tensor:
    """Returns ``current`` with each pair, at two positions, of the ``_PAIRED`` changes of largest
    weight."""
    top = torch.argsort(weights, descending=True)[:_PAIRED].tolist()
    pairs = []
    for i, first in enumerate(top):
        for second in top[i + 1 :]:
            if positions[first] != positions[second]:
                pair = current.clone()
                pair[positions[first]] = variants[first, positions[first]]
                pair[positions[second]] = variants[second, positions[second]]
                pairs.append(pair)
    return torch.stack(pairs) if pairs else current[None, :0].repeat(0, 1)


def _changes_off_span(oracle, current, variants, positions, chunk_size) -> torch.Tensor:
    """Returns the off-span parts of ``variants``, each ``current`` changed at ``positions``."""
    if isinstance(oracle, SentenceContexts):
        return oracle.changes(current, positions, variants[torch.arange(len(variants)), positions])
    return _off_span(oracle, variants, chunk_size)


def _off_span(oracle, sentences: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Returns the off-span parts of the sentences' rows on the steer, (sentences, length, m)."""
    if isinstance(oracle, SentenceContexts):
        return oracle.off_span(sentences)
    rows_per_batch = max(1, chunk_size // sentences.shape[1])
    out = [
        oracle.basis.off_span(oracle.probe(chunk)[oracle.layer]).cpu()
        for chunk in sentences.split(rows_per_batch)
    ]
    return torch.cat(out)


def _score(off: torch.Tensor) -> torch.Tensor:
    """Returns each sentence's mean log10 residual over its rows."""
    return _mean_log10(off.norm(dim=-1))


def _mean_log10(residuals: torch.Tensor) -> torch.Tensor:
    return torch.log10(residuals.double().clamp_min(1e-12)).mean(dim=-1)
