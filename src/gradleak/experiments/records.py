"""The parts of a batch record: what the attack returned, how it scored, what the update was.

A record is one JSON line of ``records.jsonl``. The experiment runner and the Flower audit build
their records from these same parts, so ``gradleak report`` reads both alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gradleak.attacks import Reconstruction
from gradleak.scoring import BatchScore, score_batch
from gradleak.update import ClientUpdate

__all__ = [
    "describe_update",
    "dp_entries",
    "jsonable",
    "reconstruction_fields",
    "score_fields",
]


def reconstruction_fields(reconstruction: Reconstruction) -> dict[str, Any]:
    """Returns the record's view of a reconstruction: sequences with their verdicts, the causes
    stated (as JSON, each with its sentence), the reason they render, the family and search."""
    return {
        "reconstructions": [
            {
                "text": s.text,
                "token_ids": list(s.token_ids),
                "certified": s.certified,
                "causes": [c.to_dict() for c in s.assurance.causes],
                "max_residual": _finite(max(s.residuals)) if s.residuals else None,
                "confidence": s.confidence,
            }
            for s in reconstruction.sequences
        ],
        "certified": [s.certified for s in reconstruction.sequences],
        "causes": [c.to_dict() for c in reconstruction.all_causes],
        "reason": reconstruction.reason,
        "family": reconstruction.diagnostics.get("family"),
        "search": reconstruction.diagnostics.get("search"),
        "diagnostics": jsonable(
            {k: v for k, v in reconstruction.diagnostics.items() if k != "seconds"}
        ),
    }


def score_fields(
    texts: Sequence[str],
    reconstruction: Reconstruction,
    tokenizer: Any,
    *,
    max_length: int | None = None,
    matching: str = "hungarian",
    keep_special_tokens: bool = False,
) -> dict[str, Any]:
    """Returns the record's scoring fields for the client's true ``texts``.

    References are scored as the tokenizer's decoding of the ids the client trained on, the form
    an attack can recover at best: an uncased model cannot return capitals, and truncation
    (``max_length``) removes what the client never used. DAGER's code scores the same way.
    """
    truncate = {"truncation": True, "max_length": max_length} if max_length else {}
    reference_ids = [list(tokenizer(text, **truncate)["input_ids"]) for text in texts]
    references = [tokenizer.decode(ids) for ids in reference_ids]
    score = score_batch(
        references,
        reconstruction.texts,
        matching=matching,
        special_tokens=tokenizer.all_special_tokens,
        special_token_ids=tokenizer.all_special_ids,
        keep_special_tokens=keep_special_tokens,
        reference_tokens=reference_ids,
        reconstruction_tokens=[list(s.token_ids) for s in reconstruction.sequences],
    )
    return {
        "references": list(texts),
        "reference_token_ids": reference_ids,
        "metrics": {**score.metrics(), "certified_rate": _certified_rate(score, reconstruction)},
        "matching": score.matching,
        "pairs": [
            {
                "reference": p.reference,
                "reconstruction_index": p.reconstruction_index,
                "reconstruction": p.reconstruction,
                "rouge1": p.rouge1,
                "rouge2": p.rouge2,
                "rougeL": p.rougeL,
                "exact": p.exact,
                "token_accuracy": p.token_accuracy,
                "certified": p.reconstruction_index is not None
                and reconstruction.sequences[p.reconstruction_index].certified,
            }
            for p in score.pairs
        ],
    }


def describe_update(update: ClientUpdate, noise_seeds: Sequence[int] = ()) -> dict[str, Any]:
    """Returns what a record keeps of an update: its kind, size, defences and DP epsilon."""
    meta = update.metadata
    dp = dp_entries(meta.defence)
    return {
        "kind": meta.kind,
        "exposure": meta.exposure,
        "tensors": len(update.tensors),
        "values": sum(t.numel() for t in update.tensors.values()),
        "batch_size": meta.batch_size,
        "learning_rate": meta.learning_rate,
        "local_steps": meta.local_steps,
        "defence": jsonable(meta.defence),
        "dp_epsilon": max((e["epsilon"] for e in dp if e.get("epsilon") is not None), default=None),
        "dp_delta": dp[0].get("delta") if dp else None,
        "noise_seeds": list(noise_seeds),
    }


def dp_entries(defence: Any) -> list[dict[str, Any]]:
    """Returns every DP-SGD entry in an update's defence record (chains and aggregates searched)."""
    if isinstance(defence, (list, tuple)):
        return [e for item in defence for e in dp_entries(item)]
    if not isinstance(defence, Mapping):
        return []
    found = [dict(defence)] if defence.get("name") == "dp-sgd" else []
    for key in ("steps", "client_defence"):
        found += dp_entries(defence.get(key))
    return found


def jsonable(value: Any) -> Any:
    """Returns ``value`` as plain JSON values: tuples to lists, numpy and torch scalars to
    floats."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return _finite(value)
    try:
        return jsonable(value.item())
    except (AttributeError, ValueError):
        return str(value)


def _certified_rate(score: BatchScore, reconstruction: Reconstruction) -> float:
    """Returns the fraction of references matched to a certified reconstruction."""
    certified = [
        p.reconstruction_index is not None
        and reconstruction.sequences[p.reconstruction_index].certified
        for p in score.pairs
    ]
    return sum(certified) / len(certified)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
