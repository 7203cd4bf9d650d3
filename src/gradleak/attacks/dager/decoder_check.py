"""An encoder-decoder's second witness: each certified sentence's rows at the decoder's block 0.

BART's decoder reads the sentence shifted right (its start token, then every token but the
last), and its block 0's self-attention reads (token, position) rows of it, whose q/k/v
gradients span them. A sentence the encoder search certified must put every one of those rows in
that span too. Rows of random sentences of the same lengths, from position 2 on (positions 0 and
1 hold the start token and [CLS] in every sentence), are the false side: a sentence any of whose
rows falls on their side of the largest log-gap loses its certificate. Where the decoder's span
is saturated or not shared, or no gap shows, the check says so in the diagnostics and changes
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from gradleak.attacks.base import Reconstruction
from gradleak.attacks.dager.oracle import input_side_gradient
from gradleak.attacks.span import span_basis
from gradleak.attacks.thresholds import largest_gap_split
from gradleak.attacks.verdict import Cause, CauseKind
from gradleak.models.loading import PublicModel
from gradleak.models.probe import LinearInputProbe

#: Random sentences per length on the false side.
_FALSE_PER_LENGTH = 16
#: A span within this many directions of the width certifies nothing (the paper's margin).
_MARGIN = 20


def confirm_on_decoder(
    public: PublicModel, gradients: Mapping[str, torch.Tensor], result: Reconstruction, seed: int
) -> Reconstruction:
    """Returns ``result`` with the certified sentences tested at the decoder's block 0: those
    that fail lose their certificate (``above_threshold``)."""
    layers = public.family.decoder_token_layers()
    certified = [s for s in result.sequences if s.certified]
    if public.task != "seq_class" or not layers or not certified:
        # A sequence-to-sequence decoder reads its own target, not the source.
        return result
    found = [
        g for g in (input_side_gradient(layer, gradients) for layer in layers) if g is not None
    ]
    if not found:
        return _noted(result, {"status": "not shared"})
    basis = span_basis(found)
    if basis.saturated or basis.rank >= basis.in_features - _MARGIN:
        return _noted(result, {"status": "saturated", "rank": basis.rank})
    probe = LinearInputProbe(public.family, [layers[0]])
    true = [basis.residuals(probe(torch.tensor([s.token_ids]))[layers[0]][0]) for s in certified]
    false = _false_residuals(probe, basis, {len(s.token_ids) for s in certified}, seed, public)
    split = largest_gap_split(torch.cat([*true, false]))
    if split is None or float(false.min()) < split.high:
        return _noted(result, {"status": "no gap", "rank": basis.rank})
    failed = {
        s.token_ids for s, r in zip(certified, true, strict=True) if float(r.max()) > split.low
    }
    cause = Cause(CauseKind.ABOVE_THRESHOLD, block=0, detail="decoder")
    sequences = tuple(
        replace(s, assurance=s.assurance.with_causes([cause])) if s.token_ids in failed else s
        for s in result.sequences
    )
    note = {"status": "tested", "rank": basis.rank, "confirmed": len(certified) - len(failed)}
    return _noted(replace(result, sequences=sequences), note)


def _false_residuals(
    probe: LinearInputProbe, basis, lengths: set[int], seed: int, public: PublicModel
) -> torch.Tensor:
    """Returns the residuals, from position 2 on, of random sentences of each length."""
    generator = torch.Generator().manual_seed(seed)
    vocab = public.family.embedding().num_embeddings
    out = []
    for length in sorted(n for n in lengths if n > 2):
        ids = torch.randint(vocab, (_FALSE_PER_LENGTH, length), generator=generator)
        rows = probe(ids)[probe.layers[0]][:, 2:]
        out.append(basis.residuals(rows).flatten())
    return torch.cat(out) if out else torch.ones(1)


def _noted(result: Reconstruction, note: dict[str, Any]) -> Reconstruction:
    return replace(result, diagnostics={**result.diagnostics, "decoder_check": note})
