"""Frozen parts: which parameters a client trains, and so shares.

A frozen parameter is neither trained nor shared (its delta is zero and a real client does not
send it). Two common set-ups: frozen embeddings (FILM's proposed defence, which DAGER shows does
not help, DAGER §3.4) and training only some blocks (:class:`Exposure` with ``blocks=``).
Parameters are picked by name through the family, never by position.
"""

from __future__ import annotations

from gradleak.client.exposure import Exposure
from gradleak.errors import UnknownSpecError
from gradleak.models.families import ArchitectureFamily


def embedding_names(family: ArchitectureFamily) -> list[str]:
    """Returns the names of the token (and position / token-type) embedding parameters."""
    return [name for name, (_, roles) in family.parameter_roles().items() if "embedding" in roles]


def trainable_names(
    family: ArchitectureFamily, *, exposure: Exposure | None = None, freeze_embeddings: bool = False
) -> list[str]:
    """Returns the names of the parameters the client trains and shares, in the model's order.

    Raises:
        UnknownSpecError: the rule selects nothing once the frozen parts are removed.
    """
    names = (exposure or Exposure()).select(family)
    if freeze_embeddings:
        frozen = set(embedding_names(family))
        names = [n for n in names if n not in frozen]
        if not names:
            raise UnknownSpecError(
                f"exposure {exposure} selects only embeddings, which are frozen; share more."
            )
    return names


def describe_frozen(freeze_embeddings: bool) -> list[str]:
    """Returns the frozen roles recorded in the update's metadata (``extra["frozen"]``)."""
    return ["embedding"] if freeze_embeddings else []
