"""Which gradient tensors the optimisation matches: a selection over the update's tensors.

A selection is written as one string, in the style of the client's exposure rules:

- ``exposed`` (default): every tensor the update shares.
- ``all``: every parameter of the model; the update must share them all.
- ``blocks=0,3 roles=q,k,v biases=no``: by the family's role names (q, k, v, o, mlp_gate,
  mlp_in, mlp_out, norm, embedding, head); ``blocks`` alone takes every role of those blocks,
  ``roles`` alone every block (and, for norm/embedding/head, the parameters outside blocks).
  Each linear role is its own tensor, so GPT-2's fused ``c_attn`` is sliced into q, k and v;
  ``biases=no`` keeps the weights only, as the partial-gradient paper's component views do.
- ``names=a,b``: parameters by name.
- ``paper=ffn_output blocks=0``: the partial-gradient code's ``--grad_type`` with its substring
  matching on BERT names, quirks included (``ffn_output`` also matches the attention output).

The token-embedding matrix is never matched: the dummy input *is* a point in embedding space,
so no gradient reaches the table, and LAMP's code skips it the same way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from gradleak.errors import GradientNotExposedError, UnknownSpecError
from gradleak.models.families import LINEAR_ROLES, ROLES, ArchitectureFamily

#: The partial-gradient code's ``--grad_type`` values and the substrings each one matches.
PAPER_GRAD_TYPES: dict[str, tuple[str, ...] | None] = {
    "all_layers": None,
    "encoder": ("encoder",),
    "layer_encoder": ("",),
    "attn_query": ("attention.self.query.weight",),
    "attn_key": ("attention.self.key.weight",),
    "attn_value": ("attention.self.value.weight",),
    "attn_qkv": (
        "attention.self.query.weight",
        "attention.self.key.weight",
        "attention.self.value.weight",
    ),
    "attn_output": ("attention.output.dense.weight",),
    "ffn_fc": ("intermediate.dense.weight",),
    # The original matches the substring "output.dense.weight", which also hits
    # "attention.output.dense.weight": two tensors, kept on purpose in this faithful mode.
    "ffn_output": ("output.dense.weight",),
    "word_emb": ("embedding",),
}
_LAYER_FREE = ("all_layers", "encoder", "word_emb")  # grad types that ignore --attack_layer


@dataclass(frozen=True)
class TensorView:
    """One matched tensor: a parameter's gradient, or the slice of a fused one.

    Attributes:
        name: the parameter's name in ``model.named_parameters()``.
        label: a readable name, e.g. ``transformer.h.0.attn.c_attn.weight[q]``.
        ndim: the parameter's number of dimensions.
        out_axis: the axis of output features in the stored tensor (1 for Conv1D weights).
        out_slice: (start, stop) along ``out_axis``; None for the whole tensor.
    """

    name: str
    label: str
    ndim: int
    out_axis: int = 0
    out_slice: tuple[int, int] | None = None

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """Returns this view of ``tensor``, which may carry extra leading (batch) axes."""
        if self.out_slice is None:
            return tensor
        axis = tensor.dim() - self.ndim + self.out_axis
        start, stop = self.out_slice
        return tensor.narrow(axis, start, stop - start)


@dataclass(frozen=True)
class GradientSelection:
    """A rule choosing the matched tensors; see the module docstring for the syntax.

    Attributes:
        mode: "exposed", "all", "roles", "names" or "paper".
        blocks: block indices (negative counts from the end); None for every block.
        roles: family roles; None for every role.
        biases: keep the biases of selected linear roles.
        names: parameter names, for mode "names".
        paper: the partial-gradient code's grad type, for mode "paper".
    """

    mode: str = "exposed"
    blocks: tuple[int, ...] | None = None
    roles: tuple[str, ...] | None = None
    biases: bool = True
    names: tuple[str, ...] | None = None
    paper: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in ("exposed", "all", "roles", "names", "paper"):
            problems.append(f"unknown mode {self.mode!r}")
        unknown = sorted(set(self.roles or ()) - set(ROLES))
        if unknown:
            problems.append(f"unknown role(s) {', '.join(unknown)} (roles are {', '.join(ROLES)})")
        if self.mode == "paper" and self.paper not in PAPER_GRAD_TYPES:
            problems.append(
                f"unknown paper grad type {self.paper!r} (one of {', '.join(PAPER_GRAD_TYPES)})"
            )
        if self.mode == "names" and not self.names:
            problems.append("names= lists no parameter")
        if problems:
            raise UnknownSpecError(f"gradient selection {self}: " + "; ".join(problems) + ".")

    @classmethod
    def parse(cls, text: str | GradientSelection) -> GradientSelection:
        """Returns the selection written as ``text`` (see the module docstring)."""
        if isinstance(text, GradientSelection):
            return text
        text = str(text).strip()
        if text in ("", "exposed", "all"):
            return cls(mode=text or "exposed")
        blocks: tuple[int, ...] | None = None
        roles: tuple[str, ...] | None = None
        names: tuple[str, ...] | None = None
        paper: str | None = None
        biases = True
        for part in text.replace(";", " ").split():
            key, sep, value = part.partition("=")
            items = tuple(v for v in value.split(",") if v)
            if not sep or key not in ("blocks", "layers", "roles", "biases", "names", "paper"):
                raise UnknownSpecError(
                    f"cannot read gradient selection {text!r}; write 'exposed', 'all', "
                    f"'blocks=0 roles=q,k,v biases=no', 'names=A,B' or 'paper=ffn_output blocks=0'."
                )
            if key in ("blocks", "layers"):
                blocks = tuple(int(v) for v in items)
            elif key == "biases":
                biases = value.lower() not in ("no", "false", "0", "off")
            elif key == "paper":
                paper = value
            elif key == "roles":
                roles = items
            else:
                names = items
        mode = "paper" if paper is not None else "names" if names is not None else "roles"
        return cls(mode=mode, blocks=blocks, roles=roles, biases=biases, names=names, paper=paper)

    def __str__(self) -> str:
        if self.mode in ("exposed", "all"):
            return self.mode
        parts = [f"paper={self.paper}"] if self.mode == "paper" else []
        if self.names is not None:
            parts.append("names=" + ",".join(self.names))
        if self.blocks is not None:
            parts.append("blocks=" + ",".join(map(str, self.blocks)))
        if self.roles is not None:
            parts.append("roles=" + ",".join(self.roles))
        if not self.biases:
            parts.append("biases=no")
        return " ".join(parts) or "roles"

    def views(self, family: ArchitectureFamily, available: Collection[str]) -> list[TensorView]:
        """Returns the matched tensors, in the model's parameter order.

        Args:
            family: the architecture family of the public model.
            available: names of the tensors the update shares.

        Raises:
            UnknownSpecError: the selection picks nothing in this model, or names a block or
                parameter the model does not have.
            GradientNotExposedError: it picks a tensor the update does not share.
        """
        params = dict(family.model.named_parameters())
        skip = _unmatchable(family)
        if self.mode == "exposed":
            views = [_whole(n, params[n]) for n in params if n in available and n not in skip]
        elif self.mode == "all":
            views = [_whole(n, p) for n, p in params.items() if n not in skip]
        elif self.mode == "names":
            missing = [n for n in self.names or () if n not in params]
            if missing:
                raise UnknownSpecError(
                    f"the model has no parameter(s) {', '.join(missing)}; "
                    f"names come from model.named_parameters()."
                )
            chosen = self.names or ()
            views = [_whole(n, params[n]) for n in params if n in chosen and n not in skip]
        elif self.mode == "paper":
            views = [_whole(n, params[n]) for n in self._paper_names(family) if n not in skip]
        else:
            views = self._role_views(family, skip)
        if not views:
            raise UnknownSpecError(
                f"gradient selection '{self}' picks no matchable tensor of this {family.name} model"
                + (
                    " (paper= matches BERT parameter names only; use roles= for other families)"
                    if self.mode == "paper"
                    else ""
                )
                + "."
            )
        _check_exposed(self, views, available)
        return views

    def _blocks(self, family: ArchitectureFamily) -> set[int] | None:
        if self.blocks is None:
            return None
        n = family.num_blocks
        bad = [b for b in self.blocks if not -n <= b < n]
        if bad:
            raise UnknownSpecError(f"block(s) {bad} out of range: the model has blocks 0..{n - 1}.")
        return {b % n for b in self.blocks}

    def _role_views(self, family: ArchitectureFamily, skip: set[str]) -> list[TensorView]:
        blocks, roles = (
            self._blocks(family),
            set(self.roles) if self.roles is not None else set(ROLES),
        )
        params = dict(family.model.named_parameters())
        views = []
        for layer in family.linear_layers():
            if layer.role not in roles or (blocks is not None and layer.block not in blocks):
                continue
            out_axis = 1 if layer.transposed else 0
            views.append(
                TensorView(
                    layer.weight_name,
                    _label(layer.weight_name, layer),
                    2,
                    out_axis,
                    layer.out_slice,
                )
            )
            if self.biases and layer.bias_name is not None:
                views.append(
                    TensorView(
                        layer.bias_name, _label(layer.bias_name, layer), 1, 0, layer.out_slice
                    )
                )
        for name, (block, param_roles) in family.parameter_roles().items():
            other = param_roles - set(LINEAR_ROLES)
            in_blocks = block in blocks if blocks is not None else True
            if (
                other & roles
                and in_blocks
                and name not in skip
                and not param_roles & set(LINEAR_ROLES)
            ):
                views.append(_whole(name, params[name]))
        order = {n: i for i, n in enumerate(params)}
        return sorted(views, key=lambda v: (order[v.name], v.out_slice or (0, 0)))

    def _paper_names(self, family: ArchitectureFamily) -> list[str]:
        patterns = PAPER_GRAD_TYPES[self.paper or ""]
        blocks = sorted(self._blocks(family) or {0})  # the original's --attack_layer default is [0]
        names = []
        for name, _ in family.model.named_parameters():
            in_layer = any(f"encoder.layer.{b}." in name for b in blocks)
            if patterns is None:
                names.append(name)
            elif any(p in name for p in patterns) and (self.paper in _LAYER_FREE or in_layer):
                names.append(name)
        return names


def select_targets(
    views: list[TensorView], gradients: Mapping[str, torch.Tensor]
) -> list[torch.Tensor]:
    """Returns the observed tensor of each view, detached."""
    return [view.take(gradients[view.name]).detach() for view in views]


#: Observed tensors this far below the largest one are float noise around an exact zero.
NULL_RATIO = 1e-7


def drop_null(
    views: list[TensorView], targets: list[torch.Tensor]
) -> tuple[list[TensorView], list[torch.Tensor], list[str]]:
    """Returns the views and targets without tensors that are numerically zero, and their labels.

    Some gradients vanish for every input: a softmax ignores a shift of all scores, so the key
    bias gradient is exactly zero, and what the client sends is float noise. A cosine with noise
    is a random number, so such tensors would only add noise to the objective.
    """
    norms = [float(t.norm()) for t in targets]
    top = max(norms, default=0.0)
    keep = [i for i, n in enumerate(norms) if n > NULL_RATIO * top]
    dropped = [views[i].label for i in range(len(views)) if i not in set(keep)]
    return [views[i] for i in keep], [targets[i] for i in keep], dropped


def token_embedding_name(family: ArchitectureFamily) -> str:
    """Returns the name of the token-embedding matrix."""
    weight = family.embedding().weight
    return next(n for n, p in family.model.named_parameters() if p is weight)


def _unmatchable(family: ArchitectureFamily) -> set[str]:
    return {token_embedding_name(family)}


def _whole(name: str, param: torch.Tensor) -> TensorView:
    return TensorView(name, name, param.dim())


def _label(name: str, layer) -> str:
    return f"{name}[{layer.role}]" if layer.out_slice is not None else name


def _check_exposed(
    selection: GradientSelection, views: list[TensorView], available: Collection[str]
) -> None:
    missing = list(dict.fromkeys(v.name for v in views if v.name not in available))
    if not missing:
        return
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    raise GradientNotExposedError(
        f"gradient selection '{selection}' needs {len(missing)} tensor(s) the update does not "
        f"share ({shown}); select within the update's {len(available)} shared tensors (e.g. "
        "select=exposed) or expose more on the client."
    )
