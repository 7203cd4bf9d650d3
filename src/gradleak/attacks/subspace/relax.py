"""The continuous step: an input embedding optimised towards the spans, then snapped to tokens.

At one position, for each live prefix, the new position's input embedding is a mixture of the
shortlist's token embeddings (softmax weights over logits). Its rows at blocks 0..L are computed
with the prefix's cache, and the logits follow the gradient of their summed log distances to the
blocks' spans. The heaviest tokens of the optimised mixture are the candidates the discrete step
rescores. Each iteration costs one forward and backward pass of P rows (P prefixes), where
scoring the shortlist discretely costs P x shortlist rows.
"""

from __future__ import annotations

import torch

from gradleak.attacks.subspace.spans import ProjectedSpan
from gradleak.models.probe import LinearInputProbe, PrefixState

#: Initial logit per decade of block-0 residual: a token ten times closer starts e^4 heavier.
_INIT_SHARPNESS = 4.0


def relaxed_candidates(
    probe: LinearInputProbe,
    spans: list[ProjectedSpan],
    state: PrefixState | None,
    shortlist: torch.Tensor,
    token_scores: torch.Tensor,
    *,
    prefixes: int,
    steps: int,
    lr: float,
    snap: int,
) -> torch.Tensor:
    """Returns (prefixes, snap) token ids: the heaviest of each prefix's optimised mixture.

    ``token_scores`` are the shortlist's block-0 log residuals, which set the starting weights;
    ``spans`` are the blocks whose rows ``probe`` computes (block 0 included).
    """
    embeddings = probe.embedding_weight[shortlist.to(probe.device)].detach().float()
    start = -_INIT_SHARPNESS * (token_scores - token_scores.min()).float()
    logits = start.to(embeddings.device).repeat(prefixes, 1).requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad()
            mixture = torch.softmax(logits, dim=-1) @ embeddings
            rows = probe.embedded_rows(state, mixture)
            loss = sum(span.log_residuals(rows[span.layer]).sum() for span in spans)
            loss.backward()  # type: ignore[union-attr]
            optimiser.step()
    top = torch.topk(logits.detach(), min(snap, len(shortlist)), dim=-1).indices.cpu()
    return shortlist[top]
