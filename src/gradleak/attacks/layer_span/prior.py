"""The public model's own next-token ranking, which orders the layer-span search's candidates.

A causal public model is a language model: a causal LM has its head, and a classifier fine-tuned
from one with tied embeddings keeps the head in its token table (the final hidden state times the
table). Its next-token distribution after a recovered prefix puts the true next token near the
top far more often than not, so the span test can try the likeliest tokens first. Nothing here is
a test: the order only decides what the span test sees first.

The ranking conditions on a context before the prefix: an instruction-tuned tokenizer's chat
template up to a user message's text (SmolLM2-Instruct's ``<|im_start|>user``), else its start
(or end) token. The probe never sees the context; the client's rows start at the text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from gradleak.attacks.dager.bag_order import has_language_prior
from gradleak.models.loading import PublicModel
from gradleak.models.probe import PrefixState, compute_family

#: How the context before a prefix is chosen (see :func:`context_ids`).
CONTEXTS = ("auto", "chat", "bos", "none")
_SENTINEL = "\u2063gradleak\u2063"


def has_next_token_head(public: PublicModel) -> bool:
    """Returns whether the public model can rank next tokens: a causal LM, or a causal model whose
    output embeddings are tied to its token table."""
    return public.family.causal and (public.task == "next_token" or has_language_prior(public))


def context_ids(tokenizer, mode: str) -> tuple[int, ...]:
    """Returns the token ids conditioning the first token: ``chat`` the chat template up to a user
    message's text, ``bos`` the start (else end) token, ``none`` nothing, ``auto`` chat where the
    tokenizer has a template, else bos."""
    if mode == "auto":
        mode = "chat" if getattr(tokenizer, "chat_template", None) else "bos"
    if mode == "chat":
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False
        )
        head = rendered.split(_SENTINEL)[0]
        return tuple(tokenizer(head, add_special_tokens=False)["input_ids"])
    if mode == "bos":
        start = tokenizer.bos_token_id
        start = tokenizer.eos_token_id if start is None else start
        return () if start is None else (int(start),)
    return ()


def end_ids(tokenizer, mode: str) -> tuple[int, ...]:
    """Returns the tokens that would follow a finished text: the end token, and under a chat
    context the template's first token after a user message's text (``<|im_end|>``)."""
    ends = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    if mode == "auto":
        mode = "chat" if getattr(tokenizer, "chat_template", None) else "bos"
    if mode == "chat":
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False
        )
        tail = tokenizer(rendered.split(_SENTINEL)[1], add_special_tokens=False)["input_ids"]
        ends += tail[:1]
    return tuple(dict.fromkeys(ends))


class NextTokenRanking:
    """Ranks the vocabulary after prefixes by the public model's next-token scores.

    Args:
        public: the public model (see :func:`has_next_token_head`).
        context: token ids before every prefix.
        ends: the tokens that would follow a finished text (:func:`end_ids`).
    """

    def __init__(
        self, public: PublicModel, context: Sequence[int], ends: Sequence[int] = ()
    ) -> None:
        self._family = compute_family(public.family)
        lm_head = getattr(self._family.model, "get_output_embeddings", None)
        head = lm_head() if lm_head is not None and public.task == "next_token" else None
        self._head: torch.nn.Module | None = head if isinstance(head, torch.nn.Module) else None
        self._table = self._family.embedding().weight
        self._device = self._table.device
        self._vocab = self._table.shape[0]
        # A model cut to fewer embeddings than its tokenizer (a test's small vocabulary) lacks
        # the special tokens at the end of the tokenizer's range.
        self.context = tuple(int(t) for t in context if int(t) < self._vocab)
        self.ends = torch.tensor([int(t) for t in ends if int(t) < self._vocab], dtype=torch.long)

    @torch.no_grad()
    def start(self, prefixes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, PrefixState]:
        """Returns the (P, V) rankings (token ids, likeliest first) after each of equally long
        ``prefixes``, and their state for :meth:`extend`."""
        ids = torch.tensor(
            [self.context + tuple(p) for p in prefixes], dtype=torch.long, device=self._device
        )
        cache = DynamicCache()
        if ids.shape[1] == 0:  # no context and the empty prefix: the unigram is unknown
            order = torch.arange(self._vocab).expand(len(prefixes), -1)
            return order, PrefixState(cache=cache, length=0)
        hidden = self._family.base(input_ids=ids, past_key_values=cache, use_cache=True)
        state = PrefixState(cache=cache, length=int(ids.shape[1]))
        return self._rank(hidden.last_hidden_state[:, -1]), state

    @torch.no_grad()
    def extend(self, state: PrefixState, tokens: torch.Tensor) -> tuple[torch.Tensor, PrefixState]:
        """Returns the rankings after appending one token to each prefix of ``state`` (consumed)."""
        if state.length == 0:
            return self.start([[int(t)] for t in tokens])
        ids = tokens.reshape(-1, 1).to(self._device)
        hidden = self._family.base(input_ids=ids, past_key_values=state.cache, use_cache=True)
        return self._rank(hidden.last_hidden_state[:, -1]), PrefixState(
            state.cache, state.length + 1
        )

    def _rank(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self._head(hidden) if self._head is not None else hidden @ self._table.T
        return torch.argsort(logits.float()[:, : self._vocab], dim=-1, descending=True).cpu()
