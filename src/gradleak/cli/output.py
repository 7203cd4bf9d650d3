"""How the command line shows reconstructions: rich tables beside the originals."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from gradleak.attacks import Reconstruction


def reconstruction_table(result: Reconstruction, *, exact: Sequence[bool] | None = None) -> Table:
    """Returns a table of recovered texts with their certified flags (and exactness, when known)."""
    table = Table(
        title=f"{result.attack}: {len(result.sequences)} sequence(s) recovered", show_lines=False
    )
    table.add_column("#", justify="right")
    table.add_column("recovered")
    table.add_column("certified")
    table.add_column("max residual", justify="right")
    if exact is not None:
        table.add_column("exact")
    for i, seq in enumerate(result.sequences):
        row = [
            str(i),
            seq.text,
            "yes" if seq.certified else "best-effort",
            f"{max(seq.residuals):.1e}" if seq.residuals else "-",
        ]
        if exact is not None:
            row.append("yes" if exact[i] else "no")
        table.add_row(*row)
    return table
