"""A run's summary: metric means and standard errors over its batch records, with provenance."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gradleak.experiments.config import RunConfig, build_config
from gradleak.scoring import summarize

__all__ = ["SUMMARY_FORMAT", "SUMMARY_METRICS", "changed_settings", "summarize_run"]

SUMMARY_FORMAT = "gradleak.summary/1"
#: Metrics summarised over batches. ROUGE values are percent; the rates and accuracy are 0 to 1.
SUMMARY_METRICS = ("rouge1", "rouge2", "rougeL", "exact_rate", "certified_rate", "token_accuracy")


def summarize_run(
    config: RunConfig, records: Sequence[Mapping[str, Any]], *, environment: Mapping[str, Any]
) -> dict[str, Any]:
    """Returns the summary of a run's records: each metric's mean and standard error, and more.

    Each metric ``m`` of :data:`SUMMARY_METRICS` gives ``m`` (the mean over batches) and
    ``m_stderr`` (sample standard deviation over sqrt(batches)); the papers print mean ± 2
    standard errors. ``seconds_per_batch`` is the median wall time of a whole batch (client
    update, attack and scoring), ``attack_seconds_per_batch`` the median time of the attack alone.
    All are None while no batch is done; metrics are None when no record was scored (an audit
    that was not given the clients' texts). ``dp_epsilon`` is the largest epsilon (at ``dp_delta``)
    of the batches' DP-SGD updates, None when no DP-SGD ran; the client settings are in
    ``config["client"]``. ``families``, ``searches`` and ``causes`` count the batches by the
    architecture family and the search the attack took, and by each cause it stated.
    """
    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "config": config.to_dict(),
        "settings_changed": changed_settings(config),
        "config_fingerprint": config.fingerprint(),
        "batches": len(records),
        "batches_planned": config.batches,
        "complete": len(records) == config.batches,
        "references": sum(len(r.get("references", ())) for r in records),
        "sequences_recovered": sum(len(r["reconstructions"]) for r in records),
        "families": _counts(r.get("family") for r in records),
        "searches": _counts(r.get("search") for r in records),
        "causes": _counts(c["cause"] for r in records for c in r.get("causes", ())),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    scored = [r for r in records if r.get("metrics")]  # an audit without ground truth has none
    for name in SUMMARY_METRICS:
        if scored:
            result = summarize(r["metrics"][name] for r in scored)
            summary[name], summary[f"{name}_stderr"] = result.mean, result.stderr
        else:
            summary[name] = summary[f"{name}_stderr"] = None
    summary["seconds_per_batch"] = _median(r["seconds"]["total"] for r in records)
    summary["attack_seconds_per_batch"] = _median(r["seconds"]["attack"] for r in records)
    dp = [r.get("update", {}) for r in records]
    epsilons = [u["dp_epsilon"] for u in dp if u.get("dp_epsilon") is not None]
    summary["dp_epsilon"] = max(epsilons) if epsilons else None
    summary["dp_delta"] = next((u["dp_delta"] for u in dp if u.get("dp_delta") is not None), None)
    summary["versions"] = dict(environment.get("versions", {}))
    summary["hardware"] = dict(environment.get("hardware", {}))
    return summary


def _counts(values: Iterable[Any]) -> dict[str, int]:
    """Returns how often each value occurs, None left out, most frequent first."""
    counts = Counter(v for v in values if v is not None)
    return dict(counts.most_common())


def changed_settings(config: RunConfig) -> dict[str, Any]:
    """Returns the settings that differ from a default run on the same model and dataset.

    Keys of mappings are flat (``client.sigma``, ``attack_options.max_frontier``), so a report
    can show them as one table of what was chosen.
    """
    default = build_config({"model": config.model, "dataset": config.dataset}).resolved()
    base = _flat(default.to_dict())
    return {k: v for k, v in _flat(config.to_dict()).items() if k not in base or base[k] != v}


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _median(values) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None
