"""Block 0's attention output for whole sentences, from each (token, position)'s query, key, value.

The encoder search scores many thousands of sentences drawn from a few hundred (token, position)
pairs. Block 0's attention output (its output projection's input) depends on the whole sentence,
but only through each head's softmax-weighted sum of values; a token's query, key and value
depend on it and its position alone (the embedding LayerNorm is per row, with absolute
positions). So each pair's q, k and v are computed once with the model's own modules, and a
sentence costs its attention and the span's product, without the three d x d products per row
that the probe repeats for every sentence.

The single changes of one sentence share even more: a change at one position adds one key and
value to every row's softmax, so each row's off-span part is the base row's, rescaled per head,
plus the two values' off-span parts (the span's product is linear and taken per head); only the
changed row is computed whole.

This is the model's arithmetic in another order, so the rows agree to float32 rounding;
:meth:`SentenceContexts.agrees` checks that against the probe before a search relies on it
(a model whose attention is otherwise, e.g. with relative positions, fails it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gradleak.attacks.dager.oracle import SpanOracle
from gradleak.models.extension import AGREEMENT
from gradleak.models.families import ArchitectureFamily
from gradleak.models.probe import LinearInputProbe, compute_family

#: Sentence rows per product, bounding memory (the heads' scores are heads x n x n per sentence).
_ROWS_PER_CHUNK = 4096


@dataclass(frozen=True)
class _Base:
    """What the single changes of one sentence share: per row and head, the unnormalised
    attention output, its map off the span, its inner products with each value, its square; per
    position and head, the value's map off the span."""

    numer: torch.Tensor
    numer_map: torch.Tensor
    value_map: torch.Tensor
    numer_values: torch.Tensor
    squares: torch.Tensor


class PairRows:
    """Block 0's query, key and value of each (token, position) pair, computed once per pair.

    They depend on the public model alone (its embedding LayerNorm and q, k, v projections), so
    one table serves every span a search is steered on, peel after peel.

    Args:
        family: the public model's family (learned, absolute positions).
        heads: block 0's attention heads; each reads ``hidden / heads`` columns, in order.
    """

    def __init__(self, family: ArchitectureFamily, heads: int) -> None:
        if family.positions != "learned":
            raise ValueError("pair rows need learned positions (a token's row there is its own)")
        self.family, self.heads = family, heads
        self.head_dim = family.hidden_size() // heads
        compute = compute_family(family)
        self._roles = [compute.linear_layer(0, role) for role in ("q", "k", "v")]
        self._modules = [compute.model.get_submodule(layer.module_name) for layer in self._roles]
        self._inputs = LinearInputProbe(family, [family.linear_layer(0, "q")])
        # Every pair computed so far, keyed position x vocabulary + token, sorted.
        self._vocab = int(family.embedding().num_embeddings)
        self._keys = torch.empty(0, dtype=torch.long)
        self._rows = torch.empty(0, 3, heads, self.head_dim)

    def lookup(self, positions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Returns the q, k and v of each (``positions[i]``, ``tokens[i]``), (N, 3, heads,
        head_dim), computing the pairs not seen before."""
        keys = positions * self._vocab + tokens
        index = torch.searchsorted(self._keys, keys).clamp_max(max(len(self._keys) - 1, 0))
        seen = (
            self._keys[index] == keys
            if len(self._keys)
            else torch.zeros_like(keys, dtype=torch.bool)
        )
        if not bool(seen.all()):
            self._compute(keys[~seen].unique())
            index = torch.searchsorted(self._keys, keys)
        return self._rows[index]

    def _compute(self, keys: torch.Tensor) -> None:
        """Adds the q, k and v of the pairs ``keys`` encodes, in one pass of length-1 sequences
        each placed at its position."""
        positions, tokens = keys // self._vocab, keys % self._vocab
        ids = tokens[:, None].to(self._inputs.device)
        where = (positions[:, None] + self.family.position_offset()).to(self._inputs.device)
        types = torch.zeros_like(ids) if self.family.token_types else None
        (inputs,) = self._inputs(ids, position_ids=where, token_type_ids=types).values()
        parts = []
        with torch.no_grad():
            for layer, module in zip(self._roles, self._modules, strict=True):
                part = module(inputs[:, 0])
                if layer.out_slice is not None:
                    part = part[..., layer.out_slice[0] : layer.out_slice[1]]
                parts.append(part.float().cpu().reshape(len(keys), self.heads, self.head_dim))
        order = torch.argsort(torch.cat([self._keys, keys]))
        self._keys = torch.cat([self._keys, keys])[order]
        self._rows = torch.cat([self._rows, torch.stack(parts, dim=1)])[order]


class SentenceContexts:
    """Off-span parts of block 0's attention-output rows on ``oracle``'s span (block 0, ``o``).

    Args:
        oracle: the span of block 0's attention-output projection's input.
        pairs: the (token, position) pairs' queries, keys and values of the oracle's model.
    """

    def __init__(self, oracle: SpanOracle, pairs: PairRows) -> None:
        if oracle.block != 0 or oracle.layer.role != "o" or oracle.probe.family is not pairs.family:
            raise ValueError(
                "sentence contexts need block 0's attention output of the pairs' model"
            )
        self.oracle, self.pairs = oracle, pairs
        self._shape = (pairs.heads, pairs.head_dim)
        self.scaling = 1.0 / math.sqrt(pairs.head_dim)
        basis = oracle.basis
        complement = basis.complement
        # The span's product as one (d, m) map: the complement's coordinates where that is the
        # smaller, as SpanBasis.off_span does, so results mix with its own.
        if complement is not None and complement.shape[0] < 2 * basis.rank:
            self._map = complement.T.float().cpu()
        else:
            width = basis.in_features
            self._map = torch.eye(width) - basis.basis.T.float().cpu() @ basis.basis.float().cpu()
        # Per head, the map of that head's columns: (heads, head_dim, m).
        self._head_maps = self._map.reshape(*self._shape, -1)

    def agrees(self, sentences: torch.Tensor) -> bool:
        """Returns whether these rows match the probe's for ``sentences`` (S, n)."""
        ours = self._contexts(sentences)
        theirs = self.oracle.probe(sentences)[self.oracle.layer].float().cpu()
        gap = (ours - theirs).norm(dim=-1) / theirs.norm(dim=-1).clamp_min(1e-30)
        return bool(gap.max() <= AGREEMENT)

    def off_span(self, sentences: torch.Tensor) -> torch.Tensor:
        """Returns the off-span parts of the sentences' unit-scaled rows, (S, n, m)."""
        per_chunk = max(1, _ROWS_PER_CHUNK // sentences.shape[1])
        out = []
        for chunk in sentences.split(per_chunk):
            rows = self._contexts(chunk)
            rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            out.append(rows @ self._map)
        return torch.cat(out)

    def changes(self, current: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor):
        """Returns the off-span parts (V, n, m) of ``current`` with each single change
        (``positions[i]`` set to ``tokens[i]``), sharing the work of the unchanged rows."""
        n = len(current)
        q, k, v = self._pairs(current[None])[0].unbind(1)  # each (n, heads, dh)
        scores = torch.einsum("ihd,jhd->hij", q, k) * self.scaling
        top = scores.amax(dim=-1)  # (heads, n)
        weights = torch.exp(scores - top[..., None])  # (heads, n, n)
        totals = weights.sum(dim=-1).T  # (n, heads)
        numer = torch.einsum("hij,jhd->ihd", weights, v)  # (n, heads, dh): unnormalised rows
        base = _Base(
            numer=numer,
            numer_map=torch.einsum("ihd,hdm->ihm", numer, self._head_maps),
            value_map=torch.einsum("jhd,hdm->jhm", v, self._head_maps),
            numer_values=torch.einsum("ihd,jhd->jih", numer.double(), v.double()),
            squares=(numer.double() ** 2).sum(dim=-1),
        )
        out = []
        per_chunk = max(1, _ROWS_PER_CHUNK // n)
        for at, new in zip(positions.split(per_chunk), tokens.split(per_chunk), strict=True):
            new_q, new_k, new_v = self.pairs.lookup(at, new).unbind(1)  # each (V, heads, dh)
            # Each row's softmax loses the old key's weight and gains the new key's.
            old = weights[:, :, at].permute(2, 1, 0)  # (V, n, heads)
            fresh = torch.exp(torch.einsum("ihd,vhd->vih", q, new_k) * self.scaling - top.T)
            total = totals[None] - old + fresh
            new_map = torch.einsum("vhd,hdm->vhm", new_v, self._head_maps)
            rows = (
                torch.einsum("vih,ihm->vim", 1 / total, base.numer_map)
                - torch.einsum("vih,vhm->vim", old / total, base.value_map[at])
                + torch.einsum("vih,vhm->vim", fresh / total, new_map)
            )
            norms = self._norms(base, v, at, new_v, old, fresh, total)
            rows = rows / norms[..., None]
            whole = self._changed_rows(q, k, v, at, new_q, new_k, new_v)
            rows[torch.arange(len(at)), at] = whole @ self._map
            out.append(rows)
        return torch.cat(out)

    def _changed_rows(self, q, k, v, at, new_q, new_k, new_v) -> torch.Tensor:
        """Returns the changed rows themselves, unit-scaled (V, d): their own query reads every
        key anew."""
        del q
        every = torch.arange(len(at))
        scores = torch.einsum("vhd,jhd->vhj", new_q, k) * self.scaling
        scores[every, :, at] = (new_q * new_k).sum(dim=-1) * self.scaling
        weights = torch.softmax(scores, dim=-1)  # (V, heads, n)
        rows = torch.einsum("vhj,jhd->vhd", weights, v)
        rows += weights[every, :, at][..., None] * (new_v - v[at])
        rows = rows.flatten(1)
        return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-30)

    @staticmethod
    def _norms(base, v, at, new_v, old, fresh, total) -> torch.Tensor:
        """Returns the changed rows' norms (V, n), from inner products (float64: the terms
        cancel where one key holds most of a row's weight)."""
        old, fresh, total = old.double(), fresh.double(), total.double()
        was, now = v[at].double(), new_v.double()  # (V, heads, dh)
        squares = (
            base.squares[None]
            + old**2 * (was**2).sum(dim=-1)[:, None]
            + fresh**2 * (now**2).sum(dim=-1)[:, None]
            - 2 * old * base.numer_values[at]
            + 2 * fresh * torch.einsum("ihd,vhd->vih", base.numer.double(), now)
            - 2 * old * fresh * (was * now).sum(dim=-1)[:, None]
        )
        return (squares.clamp_min(0) / total**2).sum(dim=-1).sqrt().float().clamp_min(1e-30)

    def _contexts(self, sentences: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Returns the attention-output rows (S, n, d) of ``sentences``, or with ``rows`` (one
        position per sentence) only those rows, (S, d)."""
        q, k, v = self._pairs(sentences).unbind(2)  # each (S, n, heads, dh)
        if rows is not None:
            q = q[torch.arange(len(rows)), rows][:, None]
        scores = torch.einsum("sihd,sjhd->shij", q, k) * self.scaling
        mixed = torch.einsum("shij,sjhd->sihd", torch.softmax(scores, dim=-1), v)
        mixed = mixed.flatten(2)
        return mixed[:, 0] if rows is not None else mixed

    def _pairs(self, sentences: torch.Tensor) -> torch.Tensor:
        """Returns each (token, position)'s q, k and v, (S, n, 3, heads, head_dim)."""
        count, n = sentences.shape
        positions = torch.arange(n).repeat(count)
        return self.pairs.lookup(positions, sentences.flatten()).reshape(count, n, 3, *self._shape)
