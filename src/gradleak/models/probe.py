"""Inputs of linear layers for candidate token sequences, computed by the model's own modules.

The probe hooks the modules of the requested layers, runs the bare transformer and stops the
forward pass as soon as every requested input has been seen, so asking for block 1's query input
costs one embedding lookup and one block. Copying the model's internals instead (as the DAGER
reference code does) breaks with every transformers release; hooks do not.

For causal models the probe also extends prefixes incrementally with a KV cache, so growing N
prefixes by one token costs N tokens' work, not N full sequences.

A half-precision model (bfloat16, float16) is probed through a float32 copy of itself: the
weights are the same, and rows rounded to 8 or 11 bits would sit a rounding step (up to 4e-3)
off the span and off each other, which hides the tests' evidence (a repeated token's row no
longer equals its prefix's).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from gradleak.models.branch_attention import branch_attention, projected_once
from gradleak.models.families.base import ArchitectureFamily, LinearLayer
from gradleak.models.fused_activation import fused_activations
from gradleak.models.gemm import onednn_matmuls

#: Parameter dtypes too coarse to compute candidate rows in; the probe upcasts them to float32.
HALF_DTYPES = (torch.bfloat16, torch.float16)
_UPCAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compute_family(family: ArchitectureFamily) -> ArchitectureFamily:
    """Returns the family whose model computes candidate rows: ``family`` itself, or, for a
    half-precision model, a float32 copy (cached per model until its weights change in place)."""
    if family.embedding().weight.dtype not in HALF_DTYPES:
        return family
    version = sum(p._version for p in family.model.parameters())
    cached = _UPCAST.get(family.model)
    if cached is None or cached[0] != version:
        cached = (version, type(family)(copy.deepcopy(family.model).float()))
        _UPCAST[family.model] = cached
    return cached[1]


class _InputsCaptured(Exception):
    """Raised inside the forward pass once every requested input has been captured."""


@dataclass
class PrefixState:
    """A batch of causal prefixes, summarised by their KV cache.

    Attributes:
        cache: the model's key/value cache for blocks up to the deepest probed layer.
        length: number of tokens in each prefix.
    """

    cache: DynamicCache
    length: int

    @property
    def size(self) -> int:
        """Returns the number of prefixes."""
        for layer in self.cache.layers:
            keys = getattr(layer, "keys", None)
            if isinstance(keys, torch.Tensor):
                return int(keys.shape[0])
        return 0

    def select(self, index: torch.Tensor | Sequence[int]) -> PrefixState:
        """Returns a new state holding the prefixes at ``index`` (repeats allowed); self is
        unchanged."""
        index = torch.as_tensor(index, dtype=torch.long)
        tensors = [
            t
            for layer in self.cache.layers
            for t in vars(layer).values()
            if isinstance(t, torch.Tensor)
        ]
        # Share tensors instead of copying them: selection below replaces them with new ones.
        cache = copy.deepcopy(self.cache, memo={id(t): t for t in tensors})
        cache.batch_select_indices(index.to(tensors[0].device) if tensors else index)
        return PrefixState(cache=cache, length=self.length)


class LinearInputProbe:
    """Computes the rows that chosen linear layers receive, for given token sequences.

    Args:
        family: the architecture family bound to the model.
        layers: the linear layers whose inputs are wanted.
    """

    def __init__(self, family: ArchitectureFamily, layers: Sequence[LinearLayer]) -> None:
        if not layers:
            raise ValueError("LinearInputProbe needs at least one linear layer")
        self.family = family
        self._compute = compute_family(family)
        self.layers = tuple(layers)
        # A module shared across depth (ALBERT) is called once per block: each call is an input.
        self._calls: dict[str, set[int]] = {}
        for layer in self.layers:
            self._calls.setdefault(layer.module_name, set()).add(layer.call)

    @property
    def device(self) -> torch.device:
        """Returns the device of the model's embedding table."""
        return self.family.embedding().weight.device

    @property
    def embedding_weight(self) -> torch.Tensor:
        """Returns the token-embedding table the probe computes with (float32 for half models)."""
        return self._compute.embedding().weight

    @torch.no_grad()
    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> dict[LinearLayer, torch.Tensor]:
        """Returns, per layer, its input rows for full sequences, shaped (batch, length,
        in_features)."""
        return self._run(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            cache=None,
        )

    @torch.no_grad()
    def token_rows(
        self, token_ids: torch.Tensor, *, position: int, token_type: int = 0
    ) -> dict[LinearLayer, torch.Tensor]:
        """Returns block-0 attention inputs for single tokens placed at ``position``, shaped (n,
        in).

        Valid only for layers whose input depends on one token and its position: the q, k and v
        projections of block 0, or an embedding projection before it (``role`` "embedding").
        """
        for layer in self.layers:
            if layer.block != 0 or layer.role not in ("q", "k", "v", "embedding"):
                raise ValueError(f"token_rows needs block-0 q/k/v layers, got {layer.key}")
        ids = token_ids.reshape(-1, 1).to(self.device)
        # Relative positions are the model's own business (T5 takes no position ids at all).
        positions = (
            None
            if self.family.positions == "relative"
            else torch.full_like(ids, position + self.family.position_offset())
        )
        types = torch.full_like(ids, token_type) if self.family.token_types else None
        rows = self._run(
            ids, attention_mask=None, token_type_ids=types, position_ids=positions, cache=None
        )
        return {layer: r[:, 0] for layer, r in rows.items()}

    @torch.no_grad()
    def start(
        self, prefix_ids: torch.Tensor
    ) -> tuple[dict[LinearLayer, torch.Tensor], PrefixState]:
        """Returns the input rows of unpadded prefixes (P, t, in) and their state for extension."""
        self._require_causal()
        cache = DynamicCache()
        rows = self._run(
            prefix_ids, attention_mask=None, token_type_ids=None, position_ids=None, cache=cache
        )
        return rows, PrefixState(cache=cache, length=int(prefix_ids.shape[1]))

    @torch.no_grad()
    def extend(
        self, state: PrefixState, next_ids: torch.Tensor
    ) -> tuple[dict[LinearLayer, torch.Tensor], PrefixState]:
        """Returns the input rows (P, in) at the new position after appending one token to each
        prefix.

        ``state`` is consumed: its cache now holds the extended prefixes, which the returned state
        describes. Use :meth:`PrefixState.select` first to keep the original.
        """
        self._require_causal()
        ids = next_ids.reshape(-1, 1).to(self.device)
        rows = self._run(
            ids, attention_mask=None, token_type_ids=None, position_ids=None, cache=state.cache
        )
        return {layer: r[:, -1] for layer, r in rows.items()}, PrefixState(
            state.cache, state.length + 1
        )

    @torch.no_grad()
    def branch(self, state: PrefixState, next_ids: torch.Tensor) -> dict[LinearLayer, torch.Tensor]:
        """Returns the input rows (P, C, in) of every prefix extended by each of C tokens; state
        unchanged.

        All P x C one-token extensions run in one pass without copying any cache: the C
        candidates are fed side by side at the same position, with an attention mask that lets
        each see its prefix and itself only. The cache is cropped back afterwards. Attention and
        GPT-2's GELU run as fused kernels (equal to float rounding).
        """
        self._require_causal()
        n_prefix, n_new = state.size, int(next_ids.numel())
        if self.family.positions == "relative":
            return self._branch_by_copies(state, next_ids)
        ids = next_ids.reshape(1, -1).expand(n_prefix, n_new).to(self.device)
        positions = torch.full_like(ids, state.length + self.family.position_offset())
        allowed = torch.ones(n_new, state.length + n_new, dtype=torch.bool, device=self.device)
        allowed[:, state.length :] = torch.eye(n_new, dtype=torch.bool, device=self.device)
        mask = self._as_attention_mask(allowed).expand(n_prefix, 1, n_new, state.length + n_new)
        try:
            with (
                branch_attention(self._compute.model),
                projected_once(self._candidate_only_modules()),
                fused_activations(self._compute.model),
            ):
                return self._run(
                    ids,
                    attention_mask=mask,
                    token_type_ids=None,
                    position_ids=positions,
                    cache=state.cache,
                )
        finally:
            _crop(state.cache, state.length)

    def _candidate_only_modules(self) -> list[nn.Module]:
        """Returns the modules whose output at a candidate depends on the candidate alone (its
        token and position), not on its prefix: the embeddings, block 0's norms and its query,
        key and value projections (one module where fused)."""
        family = self._compute
        names = {
            family.linear_layer(0, role).module_name
            for role in ("q", "k", "v")
            if family.has_linear_layer(0, role)
        }
        modules = [family.model.get_submodule(name) for name in sorted(names)]
        modules += [
            module
            for module in family.blocks()[0].modules()
            if "norm" in type(module).__name__.lower()
        ]
        embeddings = (family.embedding(), family.position_embedding())
        return modules + [module for module in embeddings if module is not None]

    def _branch_by_copies(
        self, state: PrefixState, next_ids: torch.Tensor
    ) -> dict[LinearLayer, torch.Tensor]:
        """Returns :meth:`branch`'s rows with every (prefix, candidate) pair in its own sequence.

        Relative positions (T5's decoder) enter attention as a bias that the model computes
        from each query's place in the input, so candidates fed side by side would each sit at
        another position."""
        n_prefix, n_new = state.size, int(next_ids.numel())
        copies = state.select(torch.arange(n_prefix).repeat_interleave(n_new))
        rows, _ = self.extend(copies, next_ids.reshape(-1).repeat(n_prefix))
        return {layer: r.reshape(n_prefix, n_new, -1) for layer, r in rows.items()}

    def embedded_rows(
        self, state: PrefixState | None, embeds: torch.Tensor
    ) -> dict[LinearLayer, torch.Tensor]:
        """Returns the input rows (P, in) at the position after each prefix when that position is
        fed the continuous input embedding ``embeds`` (P, d) instead of a token's; differentiable
        in ``embeds``. ``state`` (None: an empty prefix) is unchanged.

        The prefixes are copied first: the cache would otherwise keep the new position's keys,
        and with them this call's autograd graph.
        """
        self._require_causal()
        kwargs: dict = {"cache": None}
        if state is not None:
            kwargs["cache"] = state.select(torch.arange(state.size)).cache
        length = 0 if state is None else state.length
        positions = torch.full(
            (embeds.shape[0], 1), length + self.family.position_offset(), device=self.device
        )
        rows = self._run(
            None,
            inputs_embeds=embeds[:, None].to(self.device),
            attention_mask=None,
            token_type_ids=None,
            position_ids=positions,
            **kwargs,
        )
        return {layer: r[:, -1] for layer, r in rows.items()}

    def embedded_sequences(self, embeds: torch.Tensor) -> dict[LinearLayer, torch.Tensor]:
        """Returns, per layer, the input rows (batch, length, in) of whole sequences given as
        continuous token embeddings (batch, length, d) instead of ids; differentiable in
        ``embeds``. Positions and token types are the model's defaults, as for ids."""
        return self._run(
            None,
            inputs_embeds=embeds.to(self.device),
            attention_mask=None,
            token_type_ids=None,
            position_ids=None,
            cache=None,
        )

    def _as_attention_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """Returns a 4D mask in the form the model's attention implementation reads (bool or
        additive)."""
        implementation = getattr(self._compute.model.config, "_attn_implementation", "sdpa")
        if implementation == "sdpa":
            return allowed[None, None]
        dtype = self._compute.embedding().weight.dtype
        additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return additive.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]

    def _require_causal(self) -> None:
        if not self.family.causal:
            raise ValueError(
                f"{self.family.name} is not causal: prefixes cannot be extended with a cache"
            )

    def _run(
        self,
        input_ids,
        *,
        attention_mask,
        token_type_ids,
        position_ids,
        cache,
        inputs_embeds: torch.Tensor | None = None,
    ) -> dict[LinearLayer, torch.Tensor]:
        captured: dict[tuple[str, int], torch.Tensor] = {}
        wanted = sum(len(calls) for calls in self._calls.values())
        handles = []

        def make_hook(name: str, calls: set[int]):
            seen = [0]

            def hook(module: nn.Module, args: tuple) -> None:
                # Each call of a module shared across depth (ALBERT) feeds its own block; the
                # first call reads the block's input (DeBERTa's shared-key attention calls q and
                # k again on its relative position table).
                if seen[0] in calls:
                    captured[(name, seen[0])] = args[0]
                seen[0] += 1
                if len(captured) == wanted:
                    raise _InputsCaptured

            return hook

        for name, calls in self._calls.items():
            module = self._compute.model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(make_hook(name, calls)))
        if position_ids is not None and not self._compute.takes_position_ids:
            handles.append(_place_positions(self._compute, position_ids.to(self.device)))
            position_ids = None
        kwargs: dict[str, Any] = (
            {"inputs_embeds": inputs_embeds}
            if inputs_embeds is not None
            else {"input_ids": input_ids.to(self.device)}
        )
        config = getattr(self._compute.model, "config", None)
        if inputs_embeds is not None and getattr(config, "is_encoder_decoder", False):
            # The hooks stop the pass in the encoder; the decoder only needs inputs to start.
            kwargs["decoder_inputs_embeds"] = inputs_embeds
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(self.device)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids.to(self.device)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids.to(self.device)
        if cache is not None:
            kwargs.update(past_key_values=cache, use_cache=True)
        try:
            with onednn_matmuls():
                self._compute.probe_forward(**kwargs)
        except _InputsCaptured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [layer.key for layer in self.layers if layer_key(layer) not in captured]
        if missing:
            raise RuntimeError(f"the forward pass never reached the inputs of {missing}")
        shape = tuple(
            input_ids.shape if input_ids is not None else kwargs["inputs_embeds"].shape[:-1]
        )
        return {layer: _per_position(captured[layer_key(layer)], shape) for layer in self.layers}


def layer_key(layer: LinearLayer) -> tuple[str, int]:
    """Returns which module call carries ``layer``'s input: its module's name and call index."""
    return layer.module_name, layer.call


def _place_positions(family: ArchitectureFamily, position_ids: torch.Tensor):
    """Makes the family's position table return the rows of ``position_ids`` (offset included),
    for a model that computes its positions from the input's shape (BART's encoder); returns the
    hook's handle."""
    table = family.position_embedding()
    if table is None:
        raise ValueError(f"{family.name} has no position table to place positions with")
    weight = table.get_parameter("weight")

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(position_ids, weight).to(output.dtype)

    return table.register_forward_hook(hook)


def _per_position(rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Returns a layer's input laid out (sequences, positions, features): some models (OPT's MLP)
    flatten the positions of every sequence into one axis before the layer."""
    if rows.dim() == 2 and rows.shape[0] == shape[0] * shape[1]:
        return rows.reshape(*shape, rows.shape[-1])
    return rows


def _crop(cache: DynamicCache, length: int) -> None:
    """Drops cached positions past ``length`` from every layer the last pass appended to."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.shape[-2] > length:
            # A DynamicCache's layers are DynamicLayer (or subclasses), which crop; transformers
            # types cache.layers as every kind of layer, some without crop.
            layer.crop(length - keys.shape[-2])  # type: ignore[union-attr]
