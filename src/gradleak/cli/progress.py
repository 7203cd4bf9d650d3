"""Progress display for runs: a rich progress bar on a terminal, one plain line per batch
elsewhere."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def run_progress(console: Console, label: str, *, quiet: bool = False):
    """Yields an ``on_event`` callback for :func:`gradleak.experiments.run_experiment`."""
    if quiet:
        yield lambda event: None
        return
    if not console.is_terminal:
        yield lambda event: _plain(console, label, event)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{label}: checking, loading data and model", total=None)

        def on_event(event: Any) -> None:
            if event.kind == "prepared":
                note = f" (resuming after {event.done})" if 0 < event.done < event.total else ""
                progress.update(
                    task,
                    total=event.total,
                    completed=event.done,
                    description=f"{label}: starting{note}",
                )
            elif event.kind == "batch_started":
                progress.update(task, description=f"{label}: batch {event.done + 1}")
            elif event.kind == "batch_done":
                rouge1 = event.record["metrics"]["rouge1"]
                progress.update(
                    task, completed=event.done, description=f"{label}: last ROUGE-1 {rouge1:.1f}"
                )
            elif event.kind == "finished":
                progress.update(task, completed=event.done, description=f"{label}: done")

        yield on_event


def _plain(console: Console, label: str, event: Any) -> None:
    if event.kind == "prepared" and 0 < event.done < event.total:
        console.print(f"{label}: resuming after {event.done} of {event.total} batches")
    elif event.kind == "batch_done":
        record = event.record
        console.print(
            f"{label}: batch {event.done}/{event.total}: ROUGE-1 "
            f"{record['metrics']['rouge1']:.1f}, ROUGE-2 {record['metrics']['rouge2']:.1f}, "
            f"{record['seconds']['total']:.1f} s"
        )
