"""Which parameters a client shares: all of them, or some blocks and roles.

Partial exposure models federated set-ups that train or share only part of the model (Li, Xu and
Dras show that one layer, or one linear component, already leaks text). GPT-2 fuses q, k and v
into one parameter, so asking for any of them shares the whole fused ``c_attn``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradleak.errors import UnknownSpecError
from gradleak.models.families import ROLES, ArchitectureFamily


@dataclass(frozen=True)
class Exposure:
    """A rule that picks the shared parameters.

    Attributes:
        blocks: block indices to share (negative counts from the end); None shares every block and
            the parameters outside blocks (embeddings, final norm, head).
        roles: roles to share (see :data:`gradleak.models.families.ROLES`); None shares every role.
    """

    blocks: tuple[int, ...] | None = None
    roles: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.roles or ()) - set(ROLES))
        if unknown:
            raise UnknownSpecError(
                f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}."
            )

    @classmethod
    def parse(cls, text: str) -> Exposure:
        """Returns the exposure described by ``"all"`` or ``"blocks=0,1 roles=q,k,v"``."""
        text = text.strip()
        if text in ("", "all"):
            return cls()
        fields: dict[str, tuple] = {}
        for part in text.replace(";", " ").split():
            key, sep, value = part.partition("=")
            if not sep or key not in ("blocks", "roles"):
                raise UnknownSpecError(
                    f"cannot read exposure {text!r}; write 'all' or e.g. 'blocks=0,1 roles=q,k,v'."
                )
            items = [v for v in value.split(",") if v]
            try:
                fields[key] = tuple(int(v) for v in items) if key == "blocks" else tuple(items)
            except ValueError:
                raise UnknownSpecError(
                    f"blocks must be integers, got {value!r} in exposure {text!r}."
                ) from None
        return cls(**fields)

    def __str__(self) -> str:
        parts = []
        if self.blocks is not None:
            parts.append("blocks=" + ",".join(map(str, self.blocks)))
        if self.roles is not None:
            parts.append("roles=" + ",".join(self.roles))
        return " ".join(parts) or "all"

    def select(self, family: ArchitectureFamily) -> list[str]:
        """Returns the names of the parameters this rule shares, in the model's order.

        Raises:
            UnknownSpecError: a block index is out of range, or nothing is selected.
        """
        n = family.num_blocks
        blocks = None
        if self.blocks is not None:
            bad = [b for b in self.blocks if not -n <= b < n]
            if bad:
                raise UnknownSpecError(
                    f"block(s) {bad} out of range: the model has blocks 0..{n - 1}."
                )
            blocks = {b % n for b in self.blocks}
        roles = set(self.roles) if self.roles is not None else None
        chosen = [
            name
            for name, (block, param_roles) in family.parameter_roles().items()
            if (blocks is None or block in blocks) and (roles is None or param_roles & roles)
        ]
        if not chosen:
            raise UnknownSpecError(
                f"exposure {self} selects no parameter of this {family.name} model."
            )
        order = {name: i for i, (name, _) in enumerate(family.model.named_parameters())}
        return sorted(chosen, key=order.__getitem__)
