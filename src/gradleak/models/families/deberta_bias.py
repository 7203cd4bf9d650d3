"""DeBERTa's relative-position attention terms, computed only for the offsets an input uses.

Transformers' ``DisentangledSelfAttention.disentangled_attention_bias`` projects the whole
relative-position table (``2 x position_buckets`` rows, 512 in DeBERTa-v3) through the query and
key projections, copies it once per sentence and head, and scores every query against every
table row before gathering the few columns a sentence's offsets pick. A search that probes
thousands of 9-token candidates spends most of its time there. :func:`short_attention_bias`
computes the same terms from the table rows the offsets pick (at most ``2L - 1`` for length
``L``), broadcast over the sentences instead of copied.

:class:`ShortAttentionBias` swaps it in for the probe's forward passes only (the client's
gradient is the library's own), and only on modules where it matched the library's output on a
check input to float precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch
from torch import nn
from transformers.models.deberta_v2 import modeling_deberta_v2 as hf

#: Largest difference from the library's terms, relative to their largest magnitude, accepted.
_TOLERANCE = 1e-5
#: The check input: sentences, length (past none of the buckets' log range: it tests the
#: gather, which is the same at any length), seed.
_CHECK_SHAPE = (3, 11)
_CHECK_SEED = 0


def short_attention_bias(
    attention: Any,
    query_layer: torch.Tensor,
    key_layer: torch.Tensor,
    relative_pos: torch.Tensor | None,
    rel_embeddings: torch.Tensor,
    scale_factor: int,
) -> torch.Tensor | int:
    """Returns ``attention.disentangled_attention_bias(...)``'s value, projecting only the
    relative-position rows that ``relative_pos`` picks (same arguments, same layout)."""
    if relative_pos is None:
        relative_pos = hf.build_relative_position(
            query_layer,
            key_layer,
            bucket_size=attention.position_buckets,
            max_position=attention.max_relative_positions,
        )
    while relative_pos.dim() < 4:
        relative_pos = relative_pos.unsqueeze(0 if relative_pos.dim() == 2 else 1)
    span = attention.pos_ebd_size
    relative_pos = relative_pos.to(device=query_layer.device, dtype=torch.long)
    types = attention.pos_att_type
    c2p_pos = torch.clamp(relative_pos + span, 0, span * 2 - 1) if "c2p" in types else None
    p2c_pos = None
    if "p2c" in types:
        # The library's argument order (buckets and maximum exchanged) is kept on purpose: it
        # only matters where keys and queries differ in length.
        r_pos = hf.build_rpos(
            query_layer,
            key_layer,
            relative_pos,
            attention.max_relative_positions,
            attention.position_buckets,
        )
        p2c_pos = torch.clamp(-r_pos + span, 0, span * 2 - 1)
    picked = [p for p in (c2p_pos, p2c_pos) if p is not None]
    if not picked:
        return 0  # the library's value where no position term is configured
    used = torch.unique(torch.cat([p.flatten() for p in picked]))
    rows = rel_embeddings[0 : span * 2][used]
    heads = attention.num_attention_heads
    sentences = query_layer.size(0) // heads
    score: torch.Tensor | int = 0
    if c2p_pos is not None:
        projection = attention.key_proj if attention.share_att_key else attention.pos_key_proj
        pos_key = _project(attention, projection, rows)
        query = query_layer.view(sentences, heads, *query_layer.shape[1:])
        c2p_att = torch.matmul(query, pos_key.transpose(-1, -2))
        index = torch.searchsorted(used, c2p_pos.contiguous())
        index = index.expand(sentences, heads, query_layer.size(1), relative_pos.size(-1))
        c2p_att = torch.gather(c2p_att, dim=-1, index=index).flatten(0, 1)
        scale = hf.scaled_size_sqrt(pos_key, scale_factor)
        score = score + c2p_att / scale.to(dtype=c2p_att.dtype)
    if p2c_pos is not None:
        projection = attention.query_proj if attention.share_att_key else attention.pos_query_proj
        pos_query = _project(attention, projection, rows)
        key = key_layer.view(sentences, heads, *key_layer.shape[1:])
        p2c_att = torch.matmul(key, pos_query.transpose(-1, -2))
        length = key_layer.size(-2)
        index = torch.searchsorted(used, p2c_pos.contiguous())
        index = index.expand(sentences, heads, length, length)
        p2c_att = torch.gather(p2c_att, dim=-1, index=index).flatten(0, 1).transpose(-1, -2)
        scale = hf.scaled_size_sqrt(pos_query, scale_factor)
        score = score + p2c_att / scale.to(dtype=p2c_att.dtype)
    return score


def _project(attention: Any, projection: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Returns table rows through ``projection``, laid out (heads, rows, head size)."""
    return attention.transpose_for_scores(projection(rows[None]), attention.num_attention_heads)


class ShortAttentionBias:
    """Swaps :func:`short_attention_bias` into a DeBERTa model's attention modules while the
    probe runs, on each module where it matched the library's terms on a check input.

    The checks run here, once: run inside the probe's pass, their projections of the table would
    reach the probe's hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        modules = [
            m
            for m in model.modules()
            if isinstance(m, hf.DisentangledSelfAttention) and m.relative_attention
        ]
        encoder = next((m for m in model.modules() if isinstance(m, hf.DebertaV2Encoder)), None)
        with torch.no_grad():
            table = None if encoder is None else encoder.get_rel_embedding()
        self._passed: list[Any] = [m for m in modules if table is not None and _matches(m, table)]
        self._modules: list[Any] = modules

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within the block, every module that passed its check computes the short terms."""
        for module in self._passed:
            module.disentangled_attention_bias = MethodType(short_attention_bias, module)
        try:
            yield
        finally:
            for module in self._passed:
                del module.disentangled_attention_bias

    def matches(self) -> list[bool]:
        """Returns, per relative attention module, whether the short terms matched."""
        return [any(m is p for p in self._passed) for m in self._modules]


@torch.no_grad()
def _matches(attention: Any, rel_embeddings: torch.Tensor) -> bool:
    """Returns whether the short terms equal the library's on random queries and keys."""
    sentences, length = _CHECK_SHAPE
    heads = attention.num_attention_heads
    generator = torch.Generator().manual_seed(_CHECK_SEED)
    weight = attention.query_proj.weight
    shape = (sentences * heads, length, attention.attention_head_size)
    query = torch.randn(shape, generator=generator).to(weight)
    key = torch.randn(shape, generator=generator).to(weight)
    factor = 1 + sum(t in attention.pos_att_type for t in ("c2p", "p2c"))
    try:
        reference = attention.disentangled_attention_bias(query, key, None, rel_embeddings, factor)
        short = short_attention_bias(attention, query, key, None, rel_embeddings, factor)
    except (RuntimeError, ValueError, AttributeError, IndexError):
        return False
    if not isinstance(reference, torch.Tensor) or not isinstance(short, torch.Tensor):
        return False
    if reference.shape != short.shape:
        return False
    largest = float(reference.abs().max())
    return float((reference - short).abs().max()) <= _TOLERANCE * max(largest, 1e-30)
