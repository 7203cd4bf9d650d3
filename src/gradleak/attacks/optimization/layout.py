"""Where the dummy tokens sit: lengths, the tokenizer's fixed special tokens, padding.

The optimised variables are the *free* positions of each sequence; special tokens the
tokenizer always adds (BERT's [CLS] ... [SEP]) are fixed to their true embeddings, as LAMP's
``fix_special_tokens`` does, and shorter sequences are padded. Encoders pad on the right;
causal models on the left with explicit position ids, so the last position of every row is a
real token (the classification heads read it, and ``inputs_embeds`` hides padding from them)
while each real token keeps the position it has with right padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradleak.errors import GradleakError


def special_frame(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Returns the special token ids the tokenizer puts before and after any text."""
    with_special = list(tokenizer("hello world", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("hello world", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return tuple(with_special[:start]), tuple(with_special[start + len(plain) :])
    return (), ()


@dataclass(frozen=True)
class SequenceLayout:
    """The token grid of a dummy batch.

    Attributes:
        lengths: tokens per sequence, special tokens included.
        prefix: special ids before each text.
        suffix: special ids after each text.
        pad_id: id of padding positions.
        left_pad: pad on the left (causal models) instead of the right.
    """

    lengths: tuple[int, ...]
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    pad_id: int = 0
    left_pad: bool = False

    def __post_init__(self) -> None:
        shortest = len(self.prefix) + len(self.suffix) + 1
        if not self.lengths or min(self.lengths) < shortest:
            raise GradleakError(
                f"sequence lengths {list(self.lengths)} leave no free token between the "
                f"{shortest - 1} special tokens; pass lengths of at least {shortest}."
            )

    @property
    def batch_size(self) -> int:
        """Returns the number of sequences."""
        return len(self.lengths)

    @property
    def width(self) -> int:
        """Returns the padded length T."""
        return max(self.lengths)

    @property
    def free_lengths(self) -> tuple[int, ...]:
        """Returns the number of optimised positions of each sequence."""
        fixed = len(self.prefix) + len(self.suffix)
        return tuple(n - fixed for n in self.lengths)

    def grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (fixed ids with -1 where free, free-slot index, attention mask), each (B, T)."""
        b, t = self.batch_size, self.width
        ids = torch.full((b, t), self.pad_id, dtype=torch.long)
        slot = torch.zeros((b, t), dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.long)
        for row, (n, free) in enumerate(zip(self.lengths, self.free_lengths, strict=True)):
            start = t - n if self.left_pad else 0
            tokens = [*self.prefix, *([-1] * free), *self.suffix]
            ids[row, start : start + n] = torch.tensor(tokens)
            mask[row, start : start + n] = 1
            first = start + len(self.prefix)
            slot[row, first : first + free] = torch.arange(free)
        return ids, slot, mask

    def position_ids(self) -> torch.Tensor | None:
        """Returns explicit position ids for left padding (None when positions are 0..T-1)."""
        if not self.left_pad or len(set(self.lengths)) == 1:
            return None
        _, _, mask = self.grid()
        return (mask.cumsum(-1) - 1).clamp_min(0)


class DummyInputs:
    """Turns free embeddings (B, F, d) into the model's full ``inputs_embeds`` (B, T, d).

    Fixed positions take the true embeddings of their ids; the assembly is out-of-place and
    works on extra leading axes and under ``torch.func.vmap``.
    """

    def __init__(self, layout: SequenceLayout, embedding: torch.nn.Embedding) -> None:
        self.layout = layout
        ids, slot, mask = layout.grid()
        device = embedding.weight.device
        self.fixed_ids = ids.to(device)
        self.free = (ids == -1).to(device)
        self.slot = slot.to(device)
        self.attention_mask = mask.to(device)
        # Next-token targets: real tokens with a real token before them (a right-padded row's
        # first token is never predicted; with left padding a pad position would precede it).
        first = self.attention_mask.cumsum(-1) == 1
        self.targets = self.attention_mask.bool() & ~(first & self.attention_mask.bool())
        positions = layout.position_ids()
        self.position_ids = positions.to(device) if positions is not None else None
        with torch.no_grad():
            self.template = embedding(self.fixed_ids.clamp_min(0)).detach()
            self.template = self.template.masked_fill(self.free[..., None], 0.0)
        self.hidden = embedding.embedding_dim

    @property
    def free_shape(self) -> tuple[int, int, int]:
        """Returns (B, F, d) of the optimised tensor."""
        return self.layout.batch_size, max(self.layout.free_lengths), self.hidden

    def assemble(self, free: torch.Tensor) -> torch.Tensor:
        """Returns ``inputs_embeds`` with ``free`` (..., B, F, d) placed at the free positions."""
        lead = free.shape[:-3]
        index = self.slot[..., None].expand(*lead, *self.slot.shape, self.hidden)
        placed = free.gather(-2, index)
        return torch.where(self.free[..., None], placed, self.template)

    def full_ids(self, free_ids: torch.Tensor) -> torch.Tensor:
        """Returns (..., B, T) token ids: the fixed ids, and ``free_ids`` (..., B, F) where free."""
        lead = free_ids.shape[:-2]
        placed = free_ids.gather(-1, self.slot.expand(*lead, *self.slot.shape))
        return torch.where(self.free, placed, self.fixed_ids)

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """Returns the attention mask (and position ids) every forward pass needs."""
        kwargs = {"attention_mask": self.attention_mask}
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids
        return kwargs

    def sequences(self, full_ids: torch.Tensor) -> list[list[int]]:
        """Returns each row's ids without padding."""
        mask = self.attention_mask.bool().cpu()
        return [row[m].tolist() for row, m in zip(full_ids.cpu(), mask, strict=False)]

    def free_ids(self, full_ids: torch.Tensor) -> list[list[int]]:
        """Returns each row's ids at its free positions."""
        free = self.free.cpu()
        return [row[m].tolist() for row, m in zip(full_ids.cpu(), free, strict=False)]


def split_total(total: int, batch_size: int) -> tuple[int, ...]:
    """Returns ``batch_size`` lengths summing to ``total``, as even as possible."""
    base, extra = divmod(total, batch_size)
    return tuple(base + (i < extra) for i in range(batch_size))


def as_lengths(value: int | Sequence[int], batch_size: int) -> tuple[int, ...]:
    """Returns per-sequence lengths from one length (for every sequence) or a list."""
    if isinstance(value, int):
        return (value,) * batch_size
    lengths = tuple(int(v) for v in value)
    if len(lengths) != batch_size:
        raise GradleakError(
            f"got {len(lengths)} sequence lengths for a batch of {batch_size}; give one per "
            "sequence."
        )
    return lengths
