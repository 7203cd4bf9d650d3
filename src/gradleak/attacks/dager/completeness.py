"""Whether the sequences a prefix search ended on are whole, or were cut short.

A causal prefix search ends a sequence where no token extends it. Every token it kept passed the
span test, but a sequence whose next true row failed the test (a weak spectral direction left out
of the basis, a threshold set too tight) ends early, and its proved prefix is not the client's
sequence. The span tells when that can have happened: each distinct prefix found is one row of
the sequence block's input, and the span's rank counts the batch's rows, so a rank above the
rows found means rows that no recovered sequence explains.

Where rows are unexplained, a sequence is still shown whole when its own gradient fits the update
exactly (:func:`gradleak.attacks.peel.fit_share`): a cut sentence's gradient differs at every row,
since a classifier pools its last position. A sequence not shown whole is best-effort.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from gradleak.attacks.peel import fit_share
from gradleak.attacks.verdict import Cause, CauseKind
from gradleak.models.loading import PublicModel


def distinct_rows(sequences: Sequence[tuple[int, ...]]) -> int:
    """Returns how many distinct prefixes (rows of a causal block's input) the sequences hold."""
    return len({ids[: n + 1] for ids in sequences for n in range(len(ids))})


def unexplained_rows(rank: int, sequences: Sequence[tuple[int, ...]]) -> int:
    """Returns how many of the span's ``rank`` rows no prefix of ``sequences`` explains."""
    return max(0, rank - distinct_rows(sequences))


def cut_short(
    public: PublicModel,
    gradients: Mapping[str, torch.Tensor],
    sequences: Sequence[tuple[int, ...]],
    *,
    unexplained: int,
) -> dict[tuple[int, ...], Cause]:
    """Returns, for each sequence that may have been cut short, the cause that says so.

    Nothing is returned when every row is explained. Next-token updates are left to the target
    reader (:mod:`gradleak.attacks.dager.targets`), whose whole-batch fit shows the same.
    """
    if unexplained == 0 or public.task == "next_token":
        return {}
    cause = Cause(CauseKind.MAY_CONTINUE, count=unexplained)
    return {ids: cause for ids in sequences if fit_share(public, gradients, ids) is None}
