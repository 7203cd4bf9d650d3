"""A family derived from the module tree: a subclass declares only the facts that are particular.

The blocks, every linear layer's role, the token and position embeddings, the embedding norm and
the token-type row are read from the model (see :mod:`structure`). What a subclass declares:
whether the model is causal, how positions enter (``positions``), where its position ids start,
token types, and how a fused query-key-value weight is laid out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

import torch
from torch import nn

from gradleak.errors import UnsupportedFamilyError
from gradleak.models.families.base import ArchitectureFamily, ModuleSlot
from gradleak.models.families.structure import (
    attention_role,
    block_linears,
    find_blocks,
    mlp_roles,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class DerivedFamily(ArchitectureFamily):
    """An architecture family whose layout is read from the model's own module tree."""

    #: "contiguous": a fused weight holds all queries, then keys, then values; "interleaved":
    #: heads or groups alternate, so each role reads the whole fused weight (its rows span the
    #: same inputs).
    fused_qkv_layout: ClassVar[str] = "contiguous"

    def __init__(self, model: nn.Module) -> None:
        self.config = getattr(_unwrap(model), "config", None)
        self._block_list: nn.ModuleList | None = None
        super().__init__(model)

    # -- structure ----------------------------------------------------------------------------
    def blocks(self) -> nn.ModuleList:
        if self._block_list is None:
            depth = getattr(self.config, "num_hidden_layers", None)
            self._block_list = find_blocks(self.base, depth)[1]
        return self._block_list

    def block_linears(self, block: nn.Module) -> dict[str, ModuleSlot]:
        linears = block_linears(block)
        slots: dict[str, ModuleSlot] = {}
        for linear in (found for found in linears if found.in_attention):
            role = attention_role(linear)
            if role == "qkv":
                slots.update(self._fused_qkv(linear.module))
            else:
                slots.setdefault(role, ModuleSlot(linear.module))
        width = self.hidden_size()
        mlp = mlp_roles([found for found in linears if not found.in_attention], width)
        if "mlp_gate_in" in mlp:
            module = mlp["mlp_gate_in"].module
            half = mlp["mlp_gate_in"].shape[0] // 2
            slots["mlp_gate"] = ModuleSlot(module, (0, half))
            slots["mlp_in"] = ModuleSlot(module, (half, 2 * half))
        slots.update(
            {role: ModuleSlot(found.module) for role, found in mlp.items() if role != "mlp_gate_in"}
        )
        return slots

    def embedding(self) -> nn.Embedding:
        # The bare transformer is a transformers model: its own accessor finds the token table.
        base = cast("PreTrainedModel", self.base)
        return cast(nn.Embedding, base.get_input_embeddings())

    def position_embedding(self) -> nn.Embedding | None:
        if self.positions != "learned":
            return None
        return self._outside_blocks(nn.Embedding, ("position", "wpe"))

    def embedding_norm(self) -> nn.Module | None:
        if self.causal:
            return None
        return self._beside_embedding("norm")

    def constant_embedding(self) -> torch.Tensor | None:
        table = self._beside_embedding("token_type")
        return None if table is None else table.get_parameter("weight").detach()[0]

    def hidden_size(self) -> int:
        """Returns the width of the rows the blocks read (the config's hidden size)."""
        return int(getattr(self.config, "hidden_size", self.embedding().embedding_dim))

    def _embedding_modules_params(self) -> list[nn.Parameter]:
        in_blocks = {id(p) for p in self.blocks().parameters()}
        return [
            param
            for name, param in self.base.named_parameters()
            if "embed" in name.lower() and id(param) not in in_blocks
        ]

    def qkv_layout(self) -> str:
        """Returns how this model's fused query-key-value weight is laid out."""
        return self.fused_qkv_layout

    # -- helpers ------------------------------------------------------------------------------
    def _fused_qkv(self, module: nn.Module) -> dict[str, ModuleSlot]:
        if self.qkv_layout() != "contiguous":
            return {role: ModuleSlot(module) for role in ("q", "k", "v")}
        total = int(module.get_parameter("weight").shape[0])
        if self.config is None:
            raise UnsupportedFamilyError(
                f"{self.name}: a fused query-key-value weight is split by the model config's "
                "number of attention heads, and this model has no config."
            )
        heads = int(self.config.num_attention_heads)
        head_dim = getattr(self.config, "head_dim", None) or self.hidden_size() // heads
        queries = heads * int(head_dim)
        keys = (total - queries) // 2
        return {
            "q": ModuleSlot(module, (0, queries)),
            "k": ModuleSlot(module, (queries, queries + keys)),
            "v": ModuleSlot(module, (queries + keys, total)),
        }

    def _outside_blocks(self, kind: type[nn.Module], words: tuple[str, ...]) -> nn.Embedding | None:
        in_blocks = {id(m) for m in self.blocks().modules()}
        for name, module in self.base.named_modules():
            leaf = name.rsplit(".", 1)[-1].lower()
            if isinstance(module, kind) and id(module) not in in_blocks:
                if any(word in leaf for word in words):
                    return cast(nn.Embedding, module)
        return None

    def _beside_embedding(self, word: str) -> nn.Module | None:
        """Returns the module named with ``word`` that shares the token embedding's parent."""
        name = self.module_name(self.embedding())
        parent = self.model.get_submodule(name.rsplit(".", 1)[0] if "." in name else "")
        for name, module in parent.named_children():
            if word in name.lower() and module is not self.embedding():
                return module
        return None


def _unwrap(model: nn.Module) -> nn.Module:
    get_base_model = getattr(model, "get_base_model", None)  # a PEFT wrapper
    return get_base_model() if callable(get_base_model) else model
