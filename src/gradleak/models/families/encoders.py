"""BERT-shaped encoders beyond BERT: the facts each declares beyond its module tree.

All normalise the sum of their token, position (and token-type) embeddings before block 0, which
the derived family finds beside the token embedding. RoBERTa counts positions from
padding_idx + 1; DistilBERT has no token types; ELECTRA projects its embeddings from E to d
(the projection runs inside the model, before block 0).
"""

from __future__ import annotations

from gradleak.models.families.derived import DerivedFamily


class RobertaFamily(DerivedFamily):
    """RoBERTa: BERT's layout, positions counted from padding_idx + 1."""

    name = "roberta"
    model_types = ("roberta",)
    causal = False
    positions = "learned"
    token_types = True

    def position_offset(self) -> int:
        table = self.position_embedding()
        padding = getattr(table, "padding_idx", None)
        return 0 if padding is None else int(padding) + 1


class DistilBertFamily(DerivedFamily):
    """DistilBERT: no token types."""

    name = "distilbert"
    model_types = ("distilbert",)
    causal = False
    positions = "learned"


class ElectraFamily(DerivedFamily):
    """ELECTRA: BERT's layout behind an embedding projection."""

    name = "electra"
    model_types = ("electra",)
    causal = False
    positions = "learned"
    token_types = True
