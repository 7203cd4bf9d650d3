"""A public causal LM's next-token log-probabilities, as the subspace search's tie-breaker."""

from __future__ import annotations

import functools

import torch

from gradleak.models.loading import PublicModel, load_model


class NextTokenPrior:
    """Next-token log-probabilities of prefixes under a causal LM sharing the victim's tokenizer.

    Args:
        public: the prior's model, loaded with ``task="next_token"``.
    """

    def __init__(self, public: PublicModel) -> None:
        self.public = public
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    @classmethod
    def load(cls, spec: str, victim_tokenizer) -> NextTokenPrior:
        """Returns the prior on ``spec``.

        Raises:
            ValueError: its tokenizer is not the victim's (token ids would mean other words).
        """
        public = _load_lm(spec)
        tokenizer = public.tokenizer
        probe = list(range(min(len(tokenizer), 512)))
        if len(tokenizer) != len(victim_tokenizer) or tokenizer.convert_ids_to_tokens(
            probe
        ) != victim_tokenizer.convert_ids_to_tokens(probe):
            raise ValueError(f"the prior {spec!r} does not share the victim model's tokenizer")
        return cls(public)

    @torch.no_grad()
    def log_probs(self, prefixes: list[tuple[int, ...]]) -> torch.Tensor:
        """Returns (P, V) next-token log-probabilities after each prefix (cached per prefix)."""
        todo = [p for p in dict.fromkeys(prefixes) if p not in self._cache]
        for length in {len(p) for p in todo}:
            same = [p for p in todo if len(p) == length]
            ids = torch.tensor(same, device=next(self.public.model.parameters()).device)
            logits = self.public.model(input_ids=ids).logits[:, -1].float()
            for prefix, row in zip(same, torch.log_softmax(logits, -1).cpu(), strict=True):
                self._cache[prefix] = row
        return torch.stack([self._cache[p] for p in prefixes])


@functools.lru_cache(maxsize=2)
def _load_lm(spec: str) -> PublicModel:
    return load_model(spec, task="next_token")
