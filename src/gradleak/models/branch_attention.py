"""Shared work in a probe's branch: many one-token extensions of many prefixes in one pass.

:meth:`~gradleak.models.probe.LinearInputProbe.branch` feeds C candidates side by side after P
cached prefixes of length t, with a mask that lets each candidate see its prefix and itself only.
A general attention kernel computes the whole (C, t + C) score matrix per head and masks away
all of the (C, C) block but its diagonal: with a bag of a few hundred tokens after a prefix of a
few dozen, nine tenths of its work. This module's attention computes exactly the unmasked part,
the scores against the prefix's keys and each candidate's score against its own key, in one
softmax; the values are weighted the same way. It is the same arithmetic as the masked
attention (to float rounding), and the block-0 queries, keys and values it reads are the model's
own (rotated, normed, grouped as the model computed them).

:func:`branch_attention` switches a model to it for one call where the model's attention modules
dispatch through transformers' :class:`~transformers.AttentionInterface`; a model with its own
attention code (no dispatch) keeps it, and a call this kernel cannot reproduce (attention sinks,
a sliding window shorter than the prefix) goes to the model's own kernel (a registered one, or
its eager attention) with the mask.

Block 0's input rows of a candidate depend on the token and its position only, so every prefix
feeds the embeddings, block 0's norms and its query, key and value projections the same C rows:
:func:`projected_once` runs those modules on the first prefix's rows and repeats the result (a
view), where the rows are indeed equal.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from gradleak.models.forwards import replaced_forwards

#: The name this module's attention is registered under in transformers' interface.
BRANCH_ATTENTION = "gradleak_branch"

#: The implementation the model had before the switch: the kernel for calls this one declines.
_ORIGINAL: contextvars.ContextVar[str] = contextvars.ContextVar("original", default="eager")


def branch_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of C candidate queries (P, H, C, hd) over keys (P, KVH, t + C, hd) whose first
    t are the prefix's and the last C the candidates' own; returns (P, C, H, hd) as
    transformers' kernels do."""
    n_new, length = query.shape[2], key.shape[2] - query.shape[2]
    window = kwargs.get("sliding_window")
    if kwargs.get("s_aux") is not None or (window is not None and length + 1 > window):
        return _original_kernel(module)(
            module, query, key, value, attention_mask, dropout, scaling, softcap=softcap, **kwargs
        )
    n_prefix, heads, _, head_dim = query.shape
    groups = heads // key.shape[1]
    scale = head_dim**-0.5 if scaling is None else scaling
    # Queries grouped by the key head they share: (P, KVH, groups, C, hd).
    grouped = query.reshape(n_prefix, key.shape[1], groups, n_new, head_dim)
    prefix_keys, own_keys = key[:, :, :length], key[:, :, length:]
    prefix_logits = torch.einsum("pkgcd,pkld->pkgcl", grouped, prefix_keys)
    own_logits = torch.einsum("pkgcd,pkcd->pkgc", grouped, own_keys)
    logits = torch.cat([prefix_logits, own_logits[..., None]], dim=-1) * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    weights = torch.softmax(logits.float(), dim=-1).to(query.dtype)
    output = torch.einsum("pkgcl,pkld->pkgcd", weights[..., :length], value[:, :, :length])
    output.addcmul_(weights[..., length:], value[:, :, length:][:, :, None])
    return output.reshape(n_prefix, heads, n_new, head_dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(BRANCH_ATTENTION, branch_attention_forward)


@contextlib.contextmanager
def branch_attention(model: nn.Module) -> Iterator[bool]:
    """Makes ``model``'s attention modules use :func:`branch_attention_forward` while the
    context is open, where they dispatch through transformers' interface; yields whether they
    do."""
    config: Any = model.config
    original: str = config._attn_implementation
    if not _dispatches(model) or (original != "eager" and original not in ALL_ATTENTION_FUNCTIONS):
        yield False
        return
    config._attn_implementation = BRANCH_ATTENTION
    token = _ORIGINAL.set(original)
    try:
        yield True
    finally:
        config._attn_implementation = original
        _ORIGINAL.reset(token)


@contextlib.contextmanager
def projected_once(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Runs each of ``modules`` on its input's first batch row only and repeats the output
    along the batch while the context is open, wherever the input's batch rows are all equal."""
    with replaced_forwards(modules, _once):
        yield


def _once(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def first_row_only(rows: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Other inputs (OPT's positions take the mask first and the ids as a keyword) may vary.
        if args or kwargs or len(rows) < 2 or not _rows_equal(rows):
            return forward(rows, *args, **kwargs)
        once = forward(rows[:1], *args, **kwargs)
        # A view, not a copy: the next module reads it as it would the repeated rows.
        return once.expand(len(rows), *once.shape[1:])

    return first_row_only


def _rows_equal(rows: torch.Tensor) -> bool:
    """Returns whether all of ``rows``' batch rows are equal (free where they are one row
    repeated by :func:`_once`)."""
    return rows.stride(0) == 0 or torch.equal(rows, rows[:1].expand_as(rows))


def _dispatches(model: nn.Module) -> bool:
    """Returns whether ``model``'s attention modules look their kernel up in transformers'
    interface (their modeling module imports it), so switching the config's implementation
    reaches them and nothing else."""
    return any(
        hasattr(module, "layer_idx")
        and "ALL_ATTENTION_FUNCTIONS" in vars(sys.modules[type(module).__module__])
        for module in model.modules()
    )


def _original_kernel(module: nn.Module):
    """Returns the kernel ``module`` used before the switch: a registered one, or its modeling
    module's own eager attention."""
    name = _ORIGINAL.get()
    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    return vars(sys.modules[type(module).__module__])["eager_attention_forward"]
