"""Block 0's MLP activations for every one-token extension of many prefixes, with shared work.

The probe's :meth:`~gradleak.models.probe.LinearInputProbe.branch` runs the whole block for each
(prefix, candidate) pair: the candidate's q, k and v, the attention output's projection and the
MLP's input projection, about 3 of the 4 products a pair costs in a 768-wide GPT-2 (the fourth
is the caller's span test). Most of that work does not depend on the pair:

- with learned positions a candidate's q, k and v at a given position do not depend on the
  prefix, so they are computed once per candidate;
- the attention output is a weighted sum of values, and the next two maps are linear up to the
  MLP's LayerNorm: each (head, key) pair's value is mapped through the output projection and the
  MLP's input projection once, and a pair's pre-activation is the attention weights times those,
  a sum over ``heads x (length + 1)`` vectors instead of a ``d``-wide product. The LayerNorm's
  centring and scale are a scalar each per pair, read off the pair's hidden row (the same sum,
  ``d`` wide).

A step's pairs come in tiles of a few prefixes by a few dozen candidates (:meth:`tiles`): a
candidate's own terms are shared by the tile's prefixes and a prefix's mapped values by its
candidates, so each tile reads little, and its rows (about 16 MiB) stay in the cache for the
caller's span product. The activation is then the model's own module.

This is the same arithmetic as the model's in another order, so the rows agree to float32
rounding; :meth:`FactoredExtension.agrees` checks that against the probe before a caller relies
on it. A family states the block's norms, activation and attention shape (``pre_norm_block``);
families that do not are probed as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gradleak.models.families import ArchitectureFamily, LinearLayer
from gradleak.models.probe import LinearInputProbe, PrefixState

#: How far (relative, per row) factored rows may differ from the probe's: float32 rounding of
#: sums taken in another order stays far below it, a wrong reading of the block far above.
AGREEMENT = 1e-4


@dataclass(frozen=True)
class _Candidates:
    """What each of C candidate tokens brings to a one-token extension, whatever the prefix.

    Attributes:
        q: its query (C, heads, head_dim).
        own_logits: its query against its own key, scaled (C, heads).
        hidden_terms: its value through each head's slice of the output projection, then the
            block's input plus the projection's bias (C, heads + 1, d): the hidden row is these
            weighted by the attention on its own key (and 1), plus the prefix's mapped values.
        up_terms: the same through the MLP's input map, centred (C, heads + 1, up), and the
            map's offset: the pre-activation's terms once the norm's scale is applied.
    """

    q: torch.Tensor
    own_logits: torch.Tensor
    hidden_terms: torch.Tensor
    up_terms: torch.Tensor


class _StopAtBlock(Exception):
    """Raised by the hook that captures block 0's input."""


class FactoredExtension:
    """Block 0's MLP activations (the down-projection's input) for one-token extensions.

    Args:
        probe: a probe of exactly block 0's down-projection (``mlp_out``); its prefix states are
            the ones extended.
    """

    def __init__(self, probe: LinearInputProbe) -> None:
        family = probe.family
        (layer,) = probe.layers
        parts = family.pre_norm_block(0)
        if parts is None or layer.block != 0 or layer.role != "mlp_out":
            raise ValueError("a factored extension needs a pre-norm block 0's down-projection")
        self.probe, self.layer, self.parts = probe, layer, parts
        self._mapped: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        params = dict(family.model.named_parameters())
        with torch.no_grad():
            self.q, self.k, self.v, self.o, self.up = (
                _weights(family, role, params) for role in ("q", "k", "v", "o", "mlp_in")
            )
            gamma, beta = parts.mlp_norm.weight.detach(), parts.mlp_norm.bias.detach()
            up, up_bias = self.up
            out, _ = self.o
            heads = parts.heads
            self.head_dim = out.shape[1] // heads
            # The MLP's input map after the norm's scale, and through each head's slice of the
            # output projection: (heads, up, head_dim).
            scaled_up = up * gamma
            self.value_up = torch.stack(
                [
                    scaled_up @ out[:, h * self.head_dim : (h + 1) * self.head_dim]
                    for h in range(heads)
                ]
            )
            self.value_out = out.reshape(out.shape[0], heads, self.head_dim).permute(1, 0, 2)
            self.centre_up = scaled_up.sum(
                dim=1
            )  # what the norm's centring takes off, per unit mean
            self.scaled_up = scaled_up
            self.up_offset = up @ beta + up_bias

    @staticmethod
    def available(probe: LinearInputProbe) -> bool:
        """Returns whether ``probe`` reads exactly block 0's down-projection of a pre-norm block
        with learned positions, which this class can compute."""
        family = probe.family
        return (
            family.causal
            and family.positions == "learned"
            and len(probe.layers) == 1
            and probe.layers[0].block == 0
            and probe.layers[0].role == "mlp_out"
            and family.pre_norm_block(0) is not None
        )

    @torch.no_grad()
    def branch(self, state: PrefixState, next_ids: torch.Tensor) -> dict[LinearLayer, torch.Tensor]:
        """Returns the rows (P, C, up) of every prefix extended by each of C tokens, as
        :meth:`LinearInputProbe.branch` does; ``state`` unchanged."""
        pairs = state.size * len(next_ids)
        if pairs == 0:
            return {
                self.layer: self.up_offset.new_empty(
                    state.size, len(next_ids), self.layer.in_features
                )
            }
        ((_, _, rows),) = self.tiles(state, next_ids, rows_per_tile=pairs)
        return {self.layer: rows}

    @torch.no_grad()
    def tiles(
        self, state: PrefixState, next_ids: torch.Tensor, *, rows_per_tile: int
    ) -> Iterator[tuple[slice, slice, torch.Tensor]]:
        """Yields ``(prefixes, candidates, rows)``: the rows (p, c, up) of ``state``'s prefixes
        ``prefixes`` extended by ``next_ids[candidates]``, tile by tile, at most about
        ``rows_per_tile`` rows each, covering every pair once.

        A tile's rows are a transposed view of (c, p, up) memory. Each tile reads its prefixes'
        mapped values and its candidates' own terms; the tile's shape balances the two reads.
        """
        keys, values = _block_cache(state)
        n_prefix, heads, length, _ = keys.shape
        candidates = self._candidates(next_ids, position=state.length)
        value_rows, value_ups = self._mapped_values(values)
        prefix_block, candidate_block = _tile_shape(
            n_prefix, len(next_ids), heads * length, heads + 2, rows_per_tile
        )
        for p0 in range(0, n_prefix, prefix_block):
            ps = slice(p0, min(p0 + prefix_block, n_prefix))
            for c0 in range(0, len(next_ids), candidate_block):
                cs = slice(c0, min(c0 + candidate_block, len(next_ids)))
                yield ps, cs, self._rows(keys[ps], value_rows[ps], value_ups[ps], candidates, cs)

    def _rows(
        self,
        keys: torch.Tensor,
        value_rows: torch.Tensor,
        value_ups: torch.Tensor,
        candidates: _Candidates,
        cs: slice,
    ) -> torch.Tensor:
        """Returns the activations (p, c, up) of these prefixes extended by candidates ``cs``."""
        n_prefix, heads, length, _ = keys.shape
        q, own_logits = candidates.q[cs], candidates.own_logits[cs]
        n_cand = len(q)
        # Logits against the prefix's keys (P, C, H, L) and the candidate's own key (C, H).
        prefix_logits = torch.einsum("chd,phld->pchl", q, keys) * self.parts.scaling
        weights = torch.softmax(
            torch.cat([prefix_logits, own_logits.expand(n_prefix, -1, -1)[..., None]], dim=-1),
            dim=-1,
        )
        prefix_weights = weights[..., :length].reshape(n_prefix, n_cand, heads * length)
        own_weights = weights[..., length].transpose(0, 1)  # (C, P, H)
        # Hidden rows (C, P, d): own values and the block's input per candidate, the prefix's
        # mapped values per prefix; the MLP norm's scale is read off them.
        ones = own_weights.new_ones(n_cand, n_prefix, 1)
        hidden = torch.bmm(torch.cat([own_weights, ones], dim=-1), candidates.hidden_terms[cs])
        hidden.transpose(0, 1).baddbmm_(prefix_weights, value_rows)
        hidden -= hidden.mean(dim=-1, keepdim=True)
        spread = torch.linalg.vector_norm(hidden, dim=-1).square_() / hidden.shape[-1]
        scale = torch.rsqrt(spread + self.parts.mlp_norm.eps)  # (C, P)
        # The MLP's pre-activation (C, P, up), the norm's scale folded into the weights: the
        # mapped values and the candidate's terms come already centred.
        coefficients = torch.cat([own_weights * scale[..., None], scale[..., None], ones], dim=-1)
        pre = torch.bmm(coefficients, candidates.up_terms[cs])
        pre.transpose(0, 1).baddbmm_(prefix_weights * scale.T[..., None], value_ups)
        return self.parts.activation(pre).transpose(0, 1)

    def _candidates(self, next_ids: torch.Tensor, *, position: int) -> _Candidates:
        """Returns what each candidate token brings at ``position``, whatever the prefix."""
        x = self._block_input(next_ids, position=position)  # (C, d)
        heads = self.parts.heads
        u = self.parts.attention_norm(x)
        q, k, v = (u @ w.T + b for w, b in (self.q, self.k, self.v))
        q, k, v = (t.reshape(len(x), heads, self.head_dim) for t in (q, k, v))
        own_logits = (q * k).sum(dim=-1) * self.parts.scaling
        own_rows = torch.einsum("hod,chd->cho", self.value_out, v)
        own_ups = torch.einsum("hud,chd->chu", self.value_up, v)
        own_ups -= own_rows.mean(dim=-1, keepdim=True) * self.centre_up
        base = x + self.o[1]
        base_up = base @ self.scaled_up.T - base.mean(dim=-1, keepdim=True) * self.centre_up
        offset = self.up_offset.expand(len(x), 1, -1)
        return _Candidates(
            q=q,
            own_logits=own_logits,
            hidden_terms=torch.cat([own_rows, base[:, None]], dim=1),
            up_terms=torch.cat([own_ups, base_up[:, None], offset], dim=1),
        )

    def _mapped_values(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns each cached value through the output projection (P, H x L, d) and on through
        the MLP's input less the norm's centring of it (P, H x L, up); kept for the last cache
        seen, which a step's tiles share."""
        key = (values.data_ptr(), tuple(values.shape), values._version)
        if self._mapped is None or self._mapped[0] != key:
            n_prefix, heads, length, _ = values.shape
            rows = torch.einsum("hod,phld->phlo", self.value_out, values)
            ups = torch.einsum("hud,phld->phlu", self.value_up, values)
            ups -= rows.mean(dim=-1, keepdim=True) * self.centre_up
            self._mapped = (
                key,
                rows.reshape(n_prefix, heads * length, -1),
                ups.reshape(n_prefix, heads * length, -1),
            )
        return self._mapped[1], self._mapped[2]

    def agrees(self, state: PrefixState, next_ids: torch.Tensor) -> bool:
        """Returns whether the factored rows match the probe's for these extensions."""
        ours = self.branch(state, next_ids)[self.layer]
        theirs = self.probe.branch(state, next_ids)[self.layer]
        gap = (ours - theirs).norm(dim=-1) / theirs.norm(dim=-1).clamp_min(1e-30)
        return bool(gap.max() <= AGREEMENT)

    def _block_input(self, token_ids: torch.Tensor, *, position: int) -> torch.Tensor:
        """Returns block 0's input rows (C, d) of single tokens at ``position`` (the model's
        own embedding), captured as block 0 is called."""
        captured: dict[str, torch.Tensor] = {}
        block = self.probe.family.blocks()[0]

        def hook(module, args, kwargs):
            captured["x"] = args[0] if args else kwargs["hidden_states"]
            raise _StopAtBlock

        handle = block.register_forward_pre_hook(hook, with_kwargs=True)
        ids = token_ids.reshape(-1, 1).to(self.probe.device)
        offset = self.probe.family.position_offset()
        try:
            self.probe.family.base(
                input_ids=ids, position_ids=torch.full_like(ids, position + offset)
            )
        except _StopAtBlock:
            pass
        finally:
            handle.remove()
        return captured["x"][:, 0]


def _tile_shape(
    n_prefix: int, n_cand: int, prefix_terms: int, cand_terms: int, rows: int
) -> tuple[int, int]:
    """Returns (prefixes, candidates) per tile of about ``rows`` pairs, in the ratio that reads
    least: a tile reads ``prefix_terms`` vectors per prefix and ``cand_terms`` per candidate."""
    rows = max(1, rows)
    cands = round(math.sqrt(rows * prefix_terms / max(1, cand_terms)))
    cands = max(1, min(n_cand, cands, rows))
    prefixes = max(1, min(n_prefix, rows // cands))
    cands = max(1, min(n_cand, rows // prefixes))
    return prefixes, cands


def _weights(
    family: ArchitectureFamily, role: str, params: dict[str, torch.nn.Parameter]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns block 0's ``role`` weight laid out (out, in) and its bias (zeros without one)."""
    layer = family.linear_layer(0, role)
    weight = layer.weight_gradient(params).detach()
    if layer.bias_name is None:
        return weight, torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    bias = params[layer.bias_name].detach()
    if layer.out_slice is not None:
        bias = bias[layer.out_slice[0] : layer.out_slice[1]]
    return weight, bias


def _block_cache(state: PrefixState) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns block 0's cached keys and values, each (P, heads, length, head_dim)."""
    layer = state.cache.layers[0]
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise ValueError("the prefix state holds no keys for block 0")
    return keys, values
