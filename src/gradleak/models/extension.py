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

The activation is then the model's own module. This is the same arithmetic as the model's in
another order, so the rows agree to float32 rounding; :meth:`FactoredExtension.agrees` checks
that against the probe before a caller relies on it. A family states the block's norms,
activation and attention shape (``pre_norm_block``); families that do not are probed as before.
"""

from __future__ import annotations

import torch

from gradleak.models.families import ArchitectureFamily, LinearLayer
from gradleak.models.probe import LinearInputProbe, PrefixState

#: How far (relative, per row) factored rows may differ from the probe's: float32 rounding of
#: sums taken in another order stays far below it, a wrong reading of the block far above.
AGREEMENT = 1e-4


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
        keys, values = _block_cache(state)
        n_prefix, heads, length, head_dim = keys.shape
        x = self._block_input(next_ids, position=state.length)  # (C, d)
        u = self.parts.attention_norm(x)
        q, k, v = (u @ w.T + b for w, b in (self.q, self.k, self.v))
        q, k, v = (t.reshape(len(x), heads, head_dim) for t in (q, k, v))
        scale = self.parts.scaling
        # Logits against the prefix's keys (P, C, H, L) and the candidate's own key (C, H).
        prefix_logits = torch.einsum("chd,phld->pchl", q, keys) * scale
        own_logits = (q * k).sum(dim=-1) * scale
        weights = torch.softmax(
            torch.cat([prefix_logits, own_logits.expand(n_prefix, -1, -1)[..., None]], dim=-1),
            dim=-1,
        )
        prefix_weights = weights[..., :length].reshape(n_prefix, len(x), heads * length)
        own_weights = weights[..., length]  # (P, C, H)
        value_rows, value_ups = self._mapped_values(values)
        own_rows = torch.einsum("hod,chd->cho", self.value_out, v)
        own_ups = torch.einsum("hud,chd->chu", self.value_up, v)
        own_ups -= own_rows.mean(dim=-1, keepdim=True) * self.centre_up
        base = x + self.o[1]
        base_up = base @ self.scaled_up.T - base.mean(dim=-1, keepdim=True) * self.centre_up
        # Centred hidden rows (P, C, d): the norm's mean and scale are read off them.
        hidden = torch.baddbmm(
            base.expand(n_prefix, -1, -1),
            prefix_weights,
            value_rows.reshape(n_prefix, heads * length, -1),
        )
        hidden += torch.einsum("pch,cho->pco", own_weights, own_rows)
        hidden -= hidden.mean(dim=-1, keepdim=True)
        scale_norm = torch.rsqrt(
            hidden.square().mean(dim=-1, keepdim=True) + self.parts.mlp_norm.eps
        )
        # The MLP's input less the norm's centring (each mapped value comes already centred).
        up = torch.baddbmm(
            base_up.expand(n_prefix, -1, -1),
            prefix_weights,
            value_ups.reshape(n_prefix, heads * length, -1),
        )
        up += torch.einsum("pch,chu->pcu", own_weights, own_ups)
        pre = torch.addcmul(self.up_offset, up, scale_norm)
        return {self.layer: self.parts.activation(pre)}

    def _mapped_values(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns each cached value through the output projection (P, H, L, d) and on through
        the MLP's input less the norm's centring of it (P, H, L, up); kept for the last cache
        seen, which a step's chunks share."""
        key = (values.data_ptr(), tuple(values.shape), values._version)
        if self._mapped is None or self._mapped[0] != key:
            rows = torch.einsum("hod,phld->phlo", self.value_out, values)
            ups = torch.einsum("hud,phld->phlu", self.value_up, values)
            ups -= rows.mean(dim=-1, keepdim=True) * self.centre_up
            self._mapped = (key, rows, ups)
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
