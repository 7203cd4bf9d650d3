"""A language-model prior: how natural a candidate text is, under any causal LM.

LAMP scores its discrete moves with an auxiliary GPT-2 that shares BERT's vocabulary. Here the
prior reads *text*: candidates are decoded with the victim's tokenizer and re-tokenised with the
prior's, so any causal LM serves (by default the bundled SmolLM2). Scores are the mean token
negative log-likelihood (what LAMP's code calls perplexity), computed for many texts per
forward pass and cached, since the same orderings come back round after round.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from gradleak.models.loading import PublicModel, load_model


class LanguageModelPrior:
    """Mean next-token NLL of texts under a causal language model.

    Args:
        public: a model loaded with ``task="next_token"``.
        prefix: text put before every candidate (e.g. a document-start token); by default none,
            and a text's first token is not scored.
        chunk_size: texts per forward pass.
        cache_size: texts remembered.
    """

    def __init__(
        self,
        public: PublicModel,
        *,
        prefix: str | None = None,
        chunk_size: int = 64,
        cache_size: int = 200_000,
    ) -> None:
        if public.task != "next_token":
            raise ValueError(f"the prior {public.spec!r} must be loaded with task='next_token'")
        self.public, self.prefix, self.chunk_size = public, prefix or "", chunk_size
        self.cache: dict[str, float] = {}
        self.cache_size = cache_size

    @classmethod
    def load(
        cls, spec: str, *, prefix: str | None = None, device: torch.device | str = "cpu"
    ) -> LanguageModelPrior:
        """Returns the prior built on the causal LM ``spec`` (cached per spec and device)."""
        return cls(_load_lm(spec, str(device)), prefix=prefix)

    def __repr__(self) -> str:
        return f"LanguageModelPrior({self.public.spec!r})"

    def nll(self, texts: Sequence[str]) -> torch.Tensor:
        """Returns each text's mean token negative log-likelihood (0 for texts of one token)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start : start + self.chunk_size]
            for text, value in zip(chunk, self._score(chunk), strict=True):
                self.cache[text] = value
        if len(self.cache) > self.cache_size:
            self.cache.clear()
            return self.nll(texts)
        return torch.tensor([self.cache[t] for t in texts], dtype=torch.float64)

    @torch.no_grad()
    def _score(self, texts: list[str]) -> list[float]:
        tokenizer, model = self.public.tokenizer, self.public.model
        device = next(model.parameters()).device
        encoded = tokenizer([self.prefix + t for t in texts], padding=True, return_tensors="pt")
        ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), ids[:, 1:], reduction="none"
        )
        counted = mask[:, 1:].clone()
        if self.prefix:
            prefix_len = len(tokenizer(self.prefix, add_special_tokens=False)["input_ids"])
            counted[:, : max(prefix_len - 1, 0)] = 0
        totals = (nll * counted).sum(-1) / counted.sum(-1).clamp_min(1)
        return totals.tolist()


@functools.lru_cache(maxsize=2)
def _load_lm(spec: str, device: str) -> PublicModel:
    public = load_model(spec, task="next_token")
    # transformers types the decorated PreTrainedModel.to as if unbound (self first): a wrong stub.
    public.model.to(device)  # type: ignore[arg-type]
    return public
