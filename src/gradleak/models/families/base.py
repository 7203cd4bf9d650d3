"""The contract every architecture family fulfils: where the linear layers are, and what they see.

A family is the only place that knows model-specific facts (fused projections, transposed Conv1D
weights, position schemes, token types). Attacks and clients ask the family by *role* and never
branch on the family's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from gradleak.errors import GradientNotExposedError

#: Linear roles inside a transformer block, in forward order.
LINEAR_ROLES: tuple[str, ...] = ("q", "k", "v", "o", "mlp_gate", "mlp_in", "mlp_out")
#: Roles of parameters that are not block linear layers.
OTHER_ROLES: tuple[str, ...] = ("norm", "embedding", "head")
ROLES: tuple[str, ...] = LINEAR_ROLES + OTHER_ROLES


@dataclass(frozen=True)
class LinearLayer:
    """One linear map ``y = x W^T`` of one block, located by name in the full model.

    Attributes:
        block: index of the transformer block.
        role: one of :data:`LINEAR_ROLES`.
        module_name: dotted name of the module whose input is ``x`` (for hooks).
        weight_name: name of the weight in ``model.named_parameters()``.
        bias_name: name of the bias, or None.
        in_features: size of one input row.
        out_features: number of output features of this role (a slice of a fused weight).
        out_slice: (start, stop) of this role's output features inside a fused weight, or None.
        transposed: the weight is stored (in, out), as GPT-2's Conv1D does.
        call: which call of the module in one forward pass feeds this block (a block shared
            across depth, as ALBERT's, runs its modules once per block).
        shared_by: how many blocks run this module (1 unless shared across depth); its gradient
            is then the sum over those blocks, and spans all of their inputs.
    """

    block: int
    role: str
    module_name: str
    weight_name: str
    bias_name: str | None
    in_features: int
    out_features: int
    out_slice: tuple[int, int] | None = None
    transposed: bool = False
    call: int = 0
    shared_by: int = 1

    @property
    def key(self) -> str:
        """Returns a short label such as ``"3.q"``."""
        return f"{self.block}.{self.role}"

    def weight_gradient(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Returns this layer's weight gradient laid out (out, in), sliced from a fused weight if
        needed.

        Raises:
            GradientNotExposedError: the update does not share this layer's weight.
        """
        if self.weight_name not in tensors:
            raise GradientNotExposedError(
                f"the update does not share {self.weight_name} (block {self.block}, role "
                f"{self.role}); expose it on the client or pick a layer the update shares."
            )
        grad = tensors[self.weight_name]
        if self.transposed:
            grad = grad.T
        if self.out_slice is not None:
            grad = grad[self.out_slice[0] : self.out_slice[1]]
        return grad


@dataclass(frozen=True)
class PreNormBlock:
    """What :mod:`gradleak.models.extension` needs of a pre-norm block besides its linear layers.

    Attributes:
        attention_norm: the LayerNorm before attention.
        mlp_norm: the LayerNorm before the MLP.
        activation: the MLP's elementwise activation, the model's own.
        heads: attention heads (keys and values have as many).
        scaling: the factor on query-key products.
    """

    attention_norm: nn.LayerNorm
    mlp_norm: nn.LayerNorm
    activation: Callable[[torch.Tensor], torch.Tensor]
    heads: int
    scaling: float


@dataclass(frozen=True)
class ModuleSlot:
    """A linear module of a block, and which rows of its output belong to a role (fused weights)."""

    module: nn.Module
    out_slice: tuple[int, int] | None = None


class ArchitectureFamily(ABC):
    """Model-specific knowledge for one architecture family, bound to one model instance.

    Subclasses set the class attributes and implement the four abstract accessors; everything else
    (naming parameters, classifying them by role, listing linear layers) is derived here.
    """

    name: ClassVar[str]
    #: ``config.model_type`` values this family handles.
    model_types: ClassVar[tuple[str, ...]]
    #: Causal decoder (prefixes can be extended with a KV cache) or bidirectional encoder.
    causal: ClassVar[bool]
    #: An encoder-decoder: these blocks are its encoder's, and :meth:`decoder_side` views its
    #: decoder (a sequence-to-sequence client trains both).
    encoder_decoder: ClassVar[bool] = False
    #: "learned" absolute position embeddings added to the input rows; "rotary" (or ALiBi) inside
    #: a decoder's attention; "relative" inside an encoder's attention. Only "learned" puts a
    #: position in the block-0 input rows.
    positions: ClassVar[str]
    #: The model takes token type ids (BERT's segment embeddings).
    token_types: ClassVar[bool] = False
    #: Linear weights are stored (in, out) (GPT-2's Conv1D).
    transposed_weights: ClassVar[bool] = False
    #: The bare transformer's forward takes ``position_ids``; where it computes positions from
    #: the input's shape (BART's encoder), the probe places positions at the position table.
    takes_position_ids: ClassVar[bool] = True
    #: A classifier reads its last block at one pooled position per sequence, so that block's MLP
    #: gradient has one row per sequence (not so where the head reads another stack, as BART's
    #: decoder, or where the last block is shared across depth, as ALBERT's).
    last_block_pooled: ClassVar[bool] = True
    #: Attribute names of a classification head on the task model, tried in order.
    head_names: ClassVar[tuple[str, ...]] = ("score", "classifier")

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.base = _base_model(model)
        self._names = {id(m): n for n, m in model.named_modules()}
        self._param_names = {id(p): n for n, p in model.named_parameters()}
        self._layers = self._collect_linear_layers()

    # -- what a subclass supplies -------------------------------------------------------------
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """Returns the transformer blocks in order."""

    @abstractmethod
    def block_linears(self, block: nn.Module) -> dict[str, ModuleSlot]:
        """Returns the block's linear modules by role."""

    @abstractmethod
    def embedding(self) -> nn.Embedding:
        """Returns the token embedding table."""

    def position_embedding(self) -> nn.Embedding | None:
        """Returns the learned position embedding table, or None (rotary positions)."""
        return None

    def position_offset(self) -> int:
        """Returns the position id the model gives a sequence's first token (RoBERTa counts from
        padding_idx + 1); explicit position ids are this plus the position."""
        return 0

    def pooled_mlp(self) -> list[LinearLayer]:
        """Returns the MLP layers of the block a classifier pools its rows from, where only the
        pooled rows have a gradient: the last block's (T5's decoder's last block)."""
        last = self.num_blocks - 1
        roles = ("mlp_in", "mlp_gate", "mlp_out")
        return [self._layers[(last, role)] for role in roles if (last, role) in self._layers]

    def table_reading_roles(self) -> tuple[str, ...]:
        """Returns the roles whose projections also read rows that are no token's (DeBERTa's
        shared-key attention projects its relative position table with q and k), so their
        gradients span more than the block's input rows."""
        return ()

    def embedding_norm(self) -> nn.Module | None:
        """Returns the LayerNorm that normalises the embedding sum before block 0 with no residual
        around it (BERT), or None."""
        return None

    def embedding_projection(self) -> nn.Module | None:
        """Returns the linear map from the embedding width E to d that runs before block 0
        (ALBERT's factorised embedding), or None; its gradient spans block 0's rows in E."""
        return None

    def token_layer(self) -> LinearLayer | None:
        """Returns the layer whose span tests block 0's tokens where block 0's q/k/v cannot:
        blocks shared across depth sum every depth's gradient, so their span holds every depth's
        rows, while an embedding projection's holds block 0's alone (E wide: it saturates past E
        distinct rows). None where block 0's q/k/v test tokens."""
        projection = self.embedding_projection()
        if projection is None or self.linear_layer(0, "q").shared_by == 1:
            return None
        return self._describe(0, "embedding", ModuleSlot(projection))

    def decoder_token_layers(self) -> tuple[LinearLayer, ...]:
        """Returns the q/k/v layers of an encoder-decoder's decoder block 0 (its self-attention,
        reading (token, position) rows of the shifted input), or () for a model with no decoder
        beside the blocks attacked."""
        return ()

    def decoder_side(self) -> ArchitectureFamily | None:
        """Returns an encoder-decoder's decoder seen as a causal family of its own (its blocks,
        positions and a cross-attention query per block), or None."""
        return None

    def probe_forward(self, **inputs: Any) -> Any:
        """Runs the bare transformer on the probe's inputs (the decoder side feeds its decoder
        alone, see :mod:`gradleak.models.families.decoder_side`)."""
        return self.base(**inputs)

    def constant_embedding(self) -> torch.Tensor | None:
        """Returns what every token's embedding sum holds besides its token and position rows
        (BERT's first token type), or None."""
        return None

    def pre_norm_block(self, index: int) -> PreNormBlock | None:
        """Returns block ``index``'s norms, activation and attention shape where it is a plain
        pre-norm block (``x + attn(norm(x))``, then an MLP ``act(W norm(h))``), which
        :mod:`gradleak.models.extension` computes in factored form; None otherwise."""
        return None

    def hidden_size(self) -> int:
        """Returns the model's hidden size d."""
        return self.embedding().embedding_dim

    # -- derived ------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Returns the number of transformer blocks."""
        return len(self.blocks())

    def linear_layers(self) -> list[LinearLayer]:
        """Returns every linear layer of every block, in forward order."""
        return list(self._layers.values())

    def has_linear_layer(self, block: int, role: str) -> bool:
        """Returns whether this block has a linear layer with this role."""
        return (block % self.num_blocks if block < 0 else block, role) in self._layers

    def linear_layer(self, block: int, role: str) -> LinearLayer:
        """Returns the linear layer with this role in this block.

        Raises:
            KeyError: no such block or role in this model.
        """
        if block < 0:
            block += self.num_blocks
        try:
            return self._layers[(block, role)]
        except KeyError:
            roles = sorted({r for _, r in self._layers})
            raise KeyError(
                f"{self.name} has no linear layer ({block}, {role!r}); blocks "
                f"0..{self.num_blocks - 1}, roles {roles}"
            ) from None

    def module_name(self, module: nn.Module) -> str:
        """Returns the dotted name of a submodule of the bound model."""
        return self._names[id(module)]

    def weight_name(self, module: nn.Module) -> str:
        """Returns the parameter name of a submodule's weight (the key of its gradient in an
        update)."""
        return f"{self.module_name(module)}.weight"

    def parameter_roles(self) -> dict[str, tuple[int | None, frozenset[str]]]:
        """Returns, for every parameter name, its block (None outside blocks) and its roles."""
        roles: dict[str, tuple[int | None, frozenset[str]]] = {}
        for layer in self._layers.values():
            for name in (layer.weight_name, layer.bias_name):
                if name is not None:
                    prev = roles.get(name, (layer.block, frozenset()))[1]
                    roles[name] = (layer.block, prev | {layer.role})
        for index, block in enumerate(self.blocks()):
            for param in block.parameters():
                name = self._param_names[id(param)]
                roles.setdefault(name, (index, frozenset({"norm"})))
        embedding_params = {id(p) for p in self._embedding_modules_params()}
        for name, param in self.model.named_parameters():
            if name not in roles:
                role = (
                    "embedding" if id(param) in embedding_params else _outer_role(self.model, name)
                )
                roles[name] = (None, frozenset({role}))
        return roles

    def classification_head(self) -> nn.Module | None:
        """Returns the task model's classification head, or None for a language-model head."""
        for attr in self.head_names:
            head = getattr(self.model, attr, None)
            if isinstance(head, nn.Module):
                return head
        return None

    def _embedding_modules_params(self) -> list[nn.Parameter]:
        return list(self.embedding().parameters())

    def _collect_linear_layers(self) -> dict[tuple[int, str], LinearLayer]:
        layers: dict[tuple[int, str], LinearLayer] = {}
        blocks = list(self.blocks())
        for index, block in enumerate(blocks):
            call = sum(earlier is block for earlier in blocks[:index])
            shared_by = sum(other is block for other in blocks)
            for role in LINEAR_ROLES:
                slot = self.block_linears(block).get(role)
                if slot is not None:
                    layer = self._describe(index, role, slot)
                    layers[(index, role)] = replace(layer, call=call, shared_by=shared_by)
        return layers

    def _describe(self, block: int, role: str, slot: ModuleSlot) -> LinearLayer:
        weight = slot.module.get_parameter("weight")
        in_features, total_out = (
            (weight.shape[0], weight.shape[1])
            if self.transposed_weights
            else (weight.shape[1], weight.shape[0])
        )
        start, stop = slot.out_slice if slot.out_slice is not None else (0, total_out)
        bias = getattr(slot.module, "bias", None)
        return LinearLayer(
            block=block,
            role=role,
            module_name=self.module_name(slot.module),
            weight_name=self._param_names[id(weight)],
            bias_name=self._param_names[id(bias)] if isinstance(bias, nn.Parameter) else None,
            in_features=int(in_features),
            out_features=int(stop - start),
            out_slice=slot.out_slice,
            transposed=self.transposed_weights,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(blocks={self.num_blocks}, d={self.hidden_size()}, "
            f"causal={self.causal}, positions={self.positions!r})"
        )


def _base_model(model: nn.Module) -> nn.Module:
    """Returns the bare transformer inside a task model (GPT2Model inside GPT2LMHeadModel, ...)."""
    get_base_model = getattr(model, "get_base_model", None)  # a PEFT wrapper
    if callable(get_base_model):
        model = get_base_model()
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


def _outer_role(model: nn.Module, name: str) -> str:
    leaf_owner = name.rsplit(".", 1)[0]
    module = model.get_submodule(leaf_owner) if leaf_owner != name else model
    return "norm" if "norm" in type(module).__name__.lower() else "head"
