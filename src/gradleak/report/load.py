"""Reading finished or running experiments back: only ``summary.json`` and ``records.jsonl``.

The report never reruns anything and imports neither torch nor the attack code, so it can be
built anywhere the run directories are copied to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError

__all__ = ["RunResult", "find_run_dirs", "load_runs"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
RECORDS_FILE = "records.jsonl"


@dataclass(frozen=True)
class RunResult:
    """One run directory as the report sees it.

    Attributes:
        path: The run directory.
        name: Its path relative to the folder it was found under (the folder's name for a run
            given directly).
        summary: The parsed ``summary.json``.
        records: The parsed lines of ``records.jsonl`` (a half-written last line is skipped).
    """

    path: Path
    name: str
    summary: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def config(self) -> dict[str, Any]:
        """Returns the run's resolved config (from the summary)."""
        return self.summary.get("config", {})


def find_run_dirs(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """Returns ``(run directory, display name)`` for each run at or below the given paths.

    Raises:
        GradleakError: A path does not exist or holds no run directory.
    """
    found: list[tuple[Path, str]] = []
    for given in paths:
        given = Path(given)
        if not given.is_dir():
            raise GradleakError(
                f"{str(given)!r} is not a directory; give run directories or folders holding them."
            )
        if (given / SUMMARY_FILE).is_file():
            found.append((given, given.resolve().name))
            continue
        runs = sorted(p.parent for p in given.rglob(SUMMARY_FILE))
        if not runs:
            raise GradleakError(
                f"{str(given)!r} holds no {SUMMARY_FILE}; is it a gradleak run or sweep folder?"
            )
        found += [(run, str(run.relative_to(given))) for run in runs]
    seen, unique = set(), []
    for run, name in found:
        if run.resolve() not in seen:
            seen.add(run.resolve())
            unique.append((run, name))
    return unique


def load_runs(paths: Iterable[str | Path]) -> list[RunResult]:
    """Returns every run found at or below ``paths`` (see :func:`find_run_dirs`), in order.

    Raises:
        GradleakError: A path holds no run, or a summary or record file is damaged.
    """
    return [_load_run(path, name) for path, name in find_run_dirs(paths)]


def _load_run(path: Path, name: str) -> RunResult:
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text(encoding="utf-8"))
    except ValueError as err:
        raise GradleakError(f"{str(path / SUMMARY_FILE)!r} is not valid JSON: {err}") from None
    return RunResult(
        path=path, name=name, summary=summary, records=_read_records(path / RECORDS_FILE)
    )


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number >= len(lines) - 1:  # a write cut short by a crash; the run will redo it
                logger.warning("Skipping a half-written last record in %s.", path)
                continue
            raise GradleakError(
                f"{str(path)!r} line {number} is not valid JSON; the file is damaged."
            ) from None
    return records
