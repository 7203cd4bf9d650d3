"""Reading a transformer's module tree: its blocks, and each block's linear layers by role.

Every Hugging Face transformer keeps its blocks in one ``nn.ModuleList`` and names its linear
layers after what they do (``q_proj``, ``query``, ``q_lin``; ``fc1``, ``up_proj``,
``dense_h_to_4h``). Attention layers sit under a module whose name mentions attention; the
rest of a block's linear layers form its MLP, told apart by name (``gate``) or by shape (the
MLP's input layer reads d features, its output layer writes d).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_QUERY = ("q_proj", "query_proj", "query", "q_lin", "q", "wq")
_KEY = ("k_proj", "key_proj", "key", "k_lin", "k", "wk")
_VALUE = ("v_proj", "value_proj", "value", "v_lin", "v", "wv")
_FUSED_QKV = ("qkv_proj", "query_key_value", "c_attn", "wqkv", "qkv")


@dataclass(frozen=True)
class FoundLinear:
    """A linear module of a block, with its path relative to the block."""

    path: str
    module: nn.Module

    @property
    def leaf(self) -> str:
        """Returns the module's own name (the last part of its path), lower-cased."""
        return self.path.rsplit(".", 1)[-1].lower()

    @property
    def in_attention(self) -> bool:
        """Returns whether the module sits inside an attention submodule."""
        parents = self.path.lower().split(".")[:-1]
        return any("attn" in part or "attention" in part for part in parents)

    @property
    def shape(self) -> tuple[int, int]:
        """Returns the weight's (out, in) shape as ``nn.Linear`` lays it out."""
        out_features, in_features = self.module.get_parameter("weight").shape
        return int(out_features), int(in_features)


def find_blocks(base: nn.Module, depth: int | None) -> tuple[str, nn.ModuleList]:
    """Returns the path and the ModuleList of the transformer's blocks.

    The blocks are the longest ModuleList of modules of one class directly holding linear
    layers in their subtree; with ``depth`` (the config's layer count) a list of that length wins.

    Raises:
        ValueError: the model has no such list.
    """
    candidates = [
        (path, module)
        for path, module in base.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(child) for child in module}) == 1
        and any(isinstance(m, nn.Linear) for m in module[0].modules())
    ]
    if not candidates:
        raise ValueError(f"{type(base).__name__} has no list of transformer blocks")
    return max(candidates, key=lambda c: (len(c[1]) == depth, len(c[1]), -c[0].count(".")))


def block_linears(block: nn.Module) -> list[FoundLinear]:
    """Returns the block's linear modules (2-D weights, Linear or Conv1D), in registration
    order."""
    return [
        FoundLinear(path, module)
        for path, module in block.named_modules()
        if path
        and isinstance(getattr(module, "weight", None), nn.Parameter)
        and module.get_parameter("weight").dim() == 2
        and not isinstance(module, nn.Embedding)
    ]


def attention_role(linear: FoundLinear) -> str:
    """Returns "q", "k", "v", "qkv" (fused) or "o" for a linear layer inside attention."""
    for role, names in (("qkv", _FUSED_QKV), ("q", _QUERY), ("k", _KEY), ("v", _VALUE)):
        if linear.leaf in names:
            return role
    return "o"


def mlp_roles(linears: list[FoundLinear], width: int) -> dict[str, FoundLinear]:
    """Returns the MLP's layers by role: "mlp_gate", "mlp_in", "mlp_out" or "mlp_gate_in"
    (gate and input fused, gate first)."""
    roles: dict[str, FoundLinear] = {}
    for linear in linears:
        out_features, in_features = linear.shape
        if "gate_up" in linear.leaf:
            roles["mlp_gate_in"] = linear
        elif "gate" in linear.leaf:
            roles["mlp_gate"] = linear
        elif in_features == width and "mlp_in" not in roles:
            roles["mlp_in"] = linear
        elif out_features == width:
            roles["mlp_out"] = linear
    return roles
