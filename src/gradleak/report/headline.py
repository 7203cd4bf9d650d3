"""The report's first sentence: what leaked, counted over every scored batch of every run."""

from __future__ import annotations

from collections.abc import Sequence

from gradleak.report.load import RunResult

__all__ = ["headline"]

_EXAMPLE_LENGTH = 80


def headline(runs: Sequence[RunResult]) -> str:
    """Returns one sentence saying how many private texts leaked word for word, with the first.

    Counts the scored pairs of every record (each reference once); runs without ground truth
    (an audit) count the sequences recovered instead.
    """
    pairs = [pair for run in runs for record in run.records for pair in record.get("pairs", [])]
    if not pairs:
        return _unscored(runs)
    exact = [pair for pair in pairs if pair.get("exact")]
    certified = sum(bool(pair.get("certified")) for pair in exact)
    text = (
        f"Leaked: {len(exact)} of {len(pairs)} private texts recovered word for word "
        f"({100 * len(exact) / len(pairs):.0f} %), {certified} of them certified"
    )
    if exact:
        text += f"; first: \u201c{_shorten(str(exact[0].get('reference', '')))}\u201d"
    return text + "."


def _unscored(runs: Sequence[RunResult]) -> str:
    recovered = [
        rec for run in runs for record in run.records for rec in record.get("reconstructions", [])
    ]
    if not recovered:
        return "Nothing recovered yet: no batch is done."
    certified = sum(bool(rec.get("certified")) for rec in recovered)
    return (
        f"Recovered {len(recovered)} sequences, {certified} of them certified "
        "(no ground truth was given to score them)."
    )


def _shorten(text: str) -> str:
    return text if len(text) <= _EXAMPLE_LENGTH else text[: _EXAMPLE_LENGTH - 1] + "\u2026"
