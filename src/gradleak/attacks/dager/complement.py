"""Completing an exact prefix search that left sequences missing, with the ranked search.

A decoder's sequence block sees some rows only faintly: in a shallow model the last block meets
most positions only through the last token's attention, and those rows' directions come out of
the spectrum tilted by float32 noise. The exact search then stops short of them (rightly: they
do not pass the certifying test), and the batch would read as leaking less than it does. The
ranked search, with its peeling, orders candidates by the MLP down-projection spans and peels
every sentence whose own gradient fits the update, so it reads many of them. Its sentences join
the exact ones best-effort; nothing the exact search certified is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from gradleak.attacks.base import Reconstruction
from gradleak.attacks.verdict import CauseKind


def left_missing(result: Reconstruction) -> bool:
    """Returns whether an exact search states that sequences may be missing."""
    return any(c.kind is CauseKind.MISSING_SEQUENCES for c in result.causes)


def complement(
    exact: Reconstruction, ranked: Callable[[], Reconstruction | None]
) -> Reconstruction:
    """Returns ``exact`` with what ``ranked`` finds that it lacks.

    The exact search's sequences come first and keep their verdicts; the ranked search's new
    ones follow, best-effort with its causes. The exact search's statement that sequences may
    be missing is dropped once the ranked search adds any (the batch is recounted against its
    size afterwards), and kept otherwise.
    """
    found = ranked()
    if found is None:
        return exact
    known = {s.token_ids for s in exact.sequences}
    new = tuple(s for s in found.sequences if s.token_ids not in known)
    diagnostics = {**exact.diagnostics, "complement": {**found.diagnostics, "added": len(new)}}
    if not new:
        return replace(exact, diagnostics=diagnostics)
    causes = tuple(c for c in exact.causes if c.kind is not CauseKind.MISSING_SEQUENCES)
    return replace(
        exact, sequences=(*exact.sequences, *new), causes=causes, diagnostics=diagnostics
    )
