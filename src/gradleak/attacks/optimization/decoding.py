"""From continuous dummy embeddings back to tokens: the nearest allowed token by cosine."""

from __future__ import annotations

import re
from typing import Any

import torch

#: Vocabulary entries that are placeholders, not text (BERT's [unused0], Gemma's <unused0>).
_PLACEHOLDER = re.compile(r"^[\[<]unused\d+[\]>]$")


def allowed_tokens(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """Returns a (vocab_size,) mask of the tokens a reconstruction may contain.

    Special tokens, placeholder entries and embedding rows past the tokenizer's vocabulary are
    excluded, as LAMP excludes BERT's ids 1-99 and 104-998.
    """
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    allowed[: min(vocab_size, len(tokenizer))] = True
    for token_id in tokenizer.all_special_ids:
        if 0 <= token_id < vocab_size:
            allowed[token_id] = False
    for token, token_id in tokenizer.get_vocab().items():
        if 0 <= token_id < vocab_size and _PLACEHOLDER.match(token):
            allowed[token_id] = False
    return allowed


class NearestTokens:
    """Cosine nearest-token decoding over the allowed part of an embedding table."""

    def __init__(
        self, embedding: torch.Tensor, allowed: torch.Tensor, *, chunk_rows: int = 4096
    ) -> None:
        weight = embedding.detach()
        self.ids = torch.nonzero(allowed.to(weight.device)).flatten()
        self.unit = torch.nn.functional.normalize(weight[self.ids], dim=-1)
        self.mean_norm = float(weight[self.ids].norm(dim=-1).mean())
        self.chunk_rows = chunk_rows

    @torch.no_grad()
    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """Returns the token id nearest (by cosine) to each vector of (..., d)."""
        flat = torch.nn.functional.normalize(
            vectors.detach().reshape(-1, vectors.shape[-1]), dim=-1
        )
        out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        for start in range(0, flat.shape[0], self.chunk_rows):
            chunk = flat[start : start + self.chunk_rows].to(self.unit.dtype)
            out[start : start + self.chunk_rows] = self.ids[(chunk @ self.unit.T).argmax(-1)]
        return out.reshape(vectors.shape[:-1])
