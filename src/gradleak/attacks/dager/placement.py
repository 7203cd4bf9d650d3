"""Stage 1 for encoders past block 0's reach: where each token stands, from the embedding gradients.

A BERT-like encoder sums word, position and token-type embeddings and normalises the sum with a
LayerNorm before block 0. A LayerNorm's input gradient is orthogonal to the ones vector and to
its own normalised input, so every token occurrence's gradient row is orthogonal to the centred
embedding sum x(t, p) of its token t and position p, which the public weights give for any pair.
The word-embedding gradient's row of a token is the sum of its occurrences' rows, and the
position-embedding gradient's row of a position the sum of the rows there.

So a token used at one position only has a row orthogonal to x(t, p) there and, generically, at
no other position: it is placed exactly, to rounding. Taking its row out of that position's row
can leave a position with one unplaced token, which is then placed the same way, and taking that
out of the token's row can leave the token at one more position, and so on. What is left open are
tokens that share several positions with each other in cycles; the sums alone do not determine
those, and the sentence search has to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from gradleak.attacks.dager.tokens import embedding_bag
from gradleak.models.families import ArchitectureFamily

#: A row counts as orthogonal to x(t, p) below this many rounding units of the rows it was built
#: from...
_ORTHOGONAL = 1.5
#: ...and a placement is kept only if every other choice stands above this many.
_DISTINCT = 20.0
#: A row whose norm is below this many rounding units is fully accounted for.
_EMPTY = 30.0


@dataclass(frozen=True)
class TokenPlacement:
    """Which tokens of the batch stand at which positions, as far as the embedding gradients tell.

    Attributes:
        bag: the batch's distinct token ids, sorted.
        placed: (bag, positions), True where a token is known to stand at a position.
        open_tokens: tokens whose occurrences are not all placed.
        open_positions: positions whose tokens are not all placed; an open token can stand only
            there.
        weights: (bag, positions), least squares of each position's row on the token rows: a rough
            share of each token at each position, used only to order guesses.
    """

    bag: torch.Tensor
    placed: torch.Tensor
    open_tokens: torch.Tensor
    open_positions: torch.Tensor
    weights: torch.Tensor

    def candidates(self, sets: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Returns each position's tokens of ``sets`` that may stand there: the placed ones first,
        then the open tokens if the position is open, the larger least-squares share first."""
        out = []
        for position, tokens in enumerate(sets):
            if position >= self.placed.shape[1]:
                out.append(tokens[:0])
                continue
            here = self.bag[self.placed[:, position]]
            first = tokens[torch.isin(tokens, here)]
            maybe = (
                self.bag[self.open_tokens] if bool(self.open_positions[position]) else self.bag[:0]
            )
            second = tokens[torch.isin(tokens, maybe) & ~torch.isin(tokens, here)]
            rows = torch.searchsorted(self.bag, second)
            second = second[torch.argsort(self.weights[rows, position], descending=True)]
            out.append(torch.cat([first, second]))
        return tuple(out)

    def lengths(self, end_id: int) -> tuple[int, ...]:
        """Returns the sentence lengths that ``end_id`` (the separator) allows, the most likely
        first.

        A sentence of length n ends with the separator at position n - 1: where it is placed, or
        at an open position while it is open itself.
        """
        rows = torch.nonzero(self.bag == end_id).flatten()
        if not len(rows):
            return ()
        row = int(rows[0])
        possible = self.placed[row] | (self.open_positions & self.open_tokens[row])
        ends = torch.nonzero(possible).flatten()
        ends = ends[torch.argsort(self.weights[row, ends], descending=True)]
        return tuple(int(p) + 1 for p in ends)


def place_tokens(
    family: ArchitectureFamily, gradients: Mapping[str, torch.Tensor], positions: int
) -> TokenPlacement | None:
    """Returns where the embedding gradients place the batch's tokens over the first ``positions``.

    None unless the model normalises its embedding sum before block 0 (BERT-like encoders), both
    the word and the position embedding gradients are shared, and the batch uses fewer distinct
    tokens than the hidden size.
    """
    table = family.position_embedding()
    if family.embedding_norm() is None or table is None:
        return None
    position_name = family.weight_name(table)
    bag = embedding_bag(family, gradients)  # None where the token table's gradient is not shared
    if position_name not in gradients or bag is None or len(bag) >= family.hidden_size():
        return None
    token_rows = gradients[family.weight_name(family.embedding())].detach()
    position_rows = gradients[position_name].detach()
    unit = torch.finfo(token_rows.dtype).eps / 2
    tokens = token_rows[bag].double().cpu()
    first = family.position_offset()  # RoBERTa's first position is padding_idx + 1
    at = position_rows[first : first + positions].double().cpu()
    weights = torch.linalg.lstsq(tokens.T, at.T).solution
    if not bool(torch.isfinite(weights).all()):
        return None
    sums = _EmbeddingSums(family, bag, positions)
    return _solve(sums, tokens, at, unit, bag, weights)


class _EmbeddingSums:
    """Inner products with the centred, unit-length embedding sums x(t, p) of the bag's tokens."""

    def __init__(self, family: ArchitectureFamily, bag: torch.Tensor, positions: int) -> None:
        constant = family.constant_embedding()
        words = (
            family.embedding()
            .weight.detach()[bag.to(family.embedding().weight.device)]
            .double()
            .cpu()
        )
        self.words = words + (0.0 if constant is None else constant.double().cpu())
        first = family.position_offset()
        embedding = family.position_embedding()
        if embedding is None:
            raise ValueError(f"{family.name} has no position embedding to place tokens with")
        table = embedding.weight.detach()
        self.positions = table[first : first + positions].double().cpu()
        self.word_means, self.position_means = self.words.mean(dim=1), self.positions.mean(dim=1)
        width = self.words.shape[1]
        squares = (
            (self.words**2).sum(dim=1)[:, None]
            + 2 * self.words @ self.positions.T
            + (self.positions**2).sum(dim=1)[None]
            - width * (self.word_means[:, None] + self.position_means) ** 2
        )
        self.norms = squares.clamp_min(1e-300).sqrt()

    def at_positions(self, row: torch.Tensor, token: int) -> torch.Tensor:
        """Returns |<row, x(token, p)>| for every position p (``token`` indexes the bag)."""
        dots = (
            row @ self.words[token]
            + self.positions @ row
            - (self.word_means[token] + self.position_means) * row.sum()
        )
        return dots.abs() / self.norms[token]

    def of_tokens(self, row: torch.Tensor, position: int) -> torch.Tensor:
        """Returns |<row, x(t, position)>| for every token t of the bag."""
        dots = (
            self.words @ row
            + self.positions[position] @ row
            - (self.word_means + self.position_means[position]) * row.sum()
        )
        return dots.abs() / self.norms[:, position]


def _solve(
    sums: _EmbeddingSums,
    tokens: torch.Tensor,
    at: torch.Tensor,
    unit: float,
    bag: torch.Tensor,
    weights: torch.Tensor,
) -> TokenPlacement:
    """Places tokens and positions left with one unplaced occurrence until nothing changes."""
    token_left, token_mass = tokens.clone(), tokens.norm(dim=1)
    position_left, position_mass = at.clone(), at.norm(dim=1)
    open_tokens = torch.ones(len(bag), dtype=torch.bool)
    open_positions = torch.ones(len(at), dtype=torch.bool)
    placed = torch.zeros(len(bag), len(at), dtype=torch.bool)

    def place(token: int, position: int, row: torch.Tensor) -> None:
        placed[token, position] = True
        token_left[token] -= row
        position_left[position] -= row
        # Both remainders now carry the rounding of the rows they were built from.
        mass = float(token_mass[token] + position_mass[position])
        token_mass[token] = position_mass[position] = mass

    changed = True
    while changed:
        by_token = _sweep(
            token_left, token_mass, open_tokens, open_positions, sums.at_positions, place, unit
        )
        by_position = _sweep(
            position_left,
            position_mass,
            open_positions,
            open_tokens,
            sums.of_tokens,
            lambda position, token, row: place(token, position, row),
            unit,
        )
        changed = by_token or by_position
    return TokenPlacement(
        bag=bag,
        placed=placed,
        open_tokens=open_tokens,
        open_positions=open_positions,
        weights=weights,
    )


def _sweep(
    left: torch.Tensor,
    mass: torch.Tensor,
    open_here: torch.Tensor,
    open_there: torch.Tensor,
    scores: Callable[[torch.Tensor, int], torch.Tensor],
    place: Callable[[int, int, torch.Tensor], None],
    unit: float,
) -> bool:
    """One pass over one table's open rows (tokens or positions): closes those fully accounted for
    and places those left with one occurrence. Returns whether anything changed."""
    changed = False
    for here in torch.nonzero(open_here).flatten().tolist():
        row, scale = left[here], float(mass[here])
        if float(row.norm()) < _EMPTY * unit * scale:
            open_here[here], changed = False, True
            continue
        there = _single(scores(row, here) / (unit * scale), open_there)
        if there is not None:
            place(here, there, row.clone())
            open_here[here], changed = False, True
    return changed


def _single(scores: torch.Tensor, allowed: torch.Tensor) -> int | None:
    """Returns the one allowed index whose score is orthogonal while every other allowed one is far
    from it."""
    indices = torch.nonzero(allowed).flatten()
    if not len(indices):
        return None
    ordered, order = torch.sort(scores[indices])
    if ordered[0] < _ORTHOGONAL and (len(indices) == 1 or ordered[1] > _DISTINCT):
        return int(indices[order[0]])
    return None
