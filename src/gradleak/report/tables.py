"""Summary tables of runs: rows for CSV, a Markdown table and a rich console table.

ROUGE values are percent, printed as mean ± 2 standard errors over batches, as the papers do.
Exact, certified and token-accuracy rates are stored as fractions and printed as percent.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradleak.report.load import RunResult

__all__ = [
    "CSV_FIELDS",
    "console_summary",
    "console_table",
    "csv_rows",
    "csv_text",
    "format_pm",
    "markdown_table",
    "table_rows",
    "write_csv",
]

_CONFIG_FIELDS = (
    "model",
    "dataset",
    "split",
    "sampler",
    "task",
    "attack",
    "batch_size",
    "expose",
    "seed",
)
_METRICS = ("rouge1", "rouge2", "rougeL", "exact_rate", "certified_rate", "token_accuracy")
CSV_FIELDS = (
    "run",
    *_CONFIG_FIELDS,
    "batches",
    "batches_planned",
    "complete",
    *[name for metric in _METRICS for name in (metric, f"{metric}_stderr")],
    "seconds_per_batch",
    "attack_seconds_per_batch",
    "gradleak",
    "device",
    "cpu",
    "gpu",
    "path",
)
_HEADERS = (
    "run",
    "model",
    "dataset",
    "B",
    "batches",
    "ROUGE-1",
    "ROUGE-2",
    "ROUGE-L",
    "exact %",
    "certified %",
    "s / batch",
)
_SHORT = {
    "ROUGE-1": "R-1",
    "ROUGE-2": "R-2",
    "certified %": "cert. %",
    "s / batch": "s/batch",
    "batches": "n",
}


#: CSV decimals by column: ROUGE in percent, rates as fractions, seconds.
_CSV_DECIMALS = {
    **{
        name: 2
        for metric in ("rouge1", "rouge2", "rougeL")
        for name in (metric, f"{metric}_stderr")
    },
    **{
        name: 4
        for metric in ("exact_rate", "certified_rate", "token_accuracy")
        for name in (metric, f"{metric}_stderr")
    },
    "seconds_per_batch": 3,
    "attack_seconds_per_batch": 3,
}


def format_pm(
    mean: float | None, stderr: float | None, *, scale: float = 1.0, n: int | None = None
) -> str:
    """Returns ``"mean ± 2·stderr"`` with one decimal (``-`` when there is no value).

    With one batch (``n`` 1) there is no spread to show, so it says ``"mean (n = 1)"``.
    """
    if mean is None:
        return "-"
    if n == 1:
        return f"{mean * scale:.1f} (n = 1)"
    return f"{mean * scale:.1f} ± {2 * (stderr or 0.0) * scale:.1f}"


def csv_rows(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Returns one flat dict per run with the :data:`CSV_FIELDS` keys."""
    rows = []
    for run in runs:
        summary, hardware = run.summary, run.summary.get("hardware", {})
        row: dict[str, Any] = {"run": run.name, "path": str(run.path)}
        row.update({key: run.config.get(key) for key in _CONFIG_FIELDS})
        for key in (
            "batches",
            "batches_planned",
            "complete",
            "seconds_per_batch",
            "attack_seconds_per_batch",
        ):
            row[key] = summary.get(key)
        for metric in _METRICS:
            row[metric], row[f"{metric}_stderr"] = (
                summary.get(metric),
                summary.get(f"{metric}_stderr"),
            )
        row["gradleak"] = summary.get("versions", {}).get("gradleak")
        row.update(device=hardware.get("device"), cpu=hardware.get("cpu"), gpu=hardware.get("gpu"))
        rows.append(_rounded(row))
    return rows


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    """Returns the row with its measured numbers rounded to what the measurement supports."""
    return {
        key: round(value, _CSV_DECIMALS[key])
        if key in _CSV_DECIMALS and isinstance(value, float)
        else value
        for key, value in row.items()
    }


def csv_text(runs: Sequence[RunResult]) -> str:
    """Returns the runs' summaries as comma-separated values: a header line, then a row per run."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(runs))
    return buffer.getvalue()


def write_csv(runs: Sequence[RunResult], path: str | Path) -> Path:
    """Writes :func:`csv_text` of the runs to ``path`` and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(csv_text(runs), encoding="utf-8")
    return path


def table_rows(runs: Sequence[RunResult]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Returns the headers and the formatted cells of the headline table."""
    rows = []
    for run in runs:
        s = run.summary
        batches = str(s.get("batches", 0))
        if not s.get("complete"):
            batches += f" of {s.get('batches_planned')}"
        seconds, n = s.get("seconds_per_batch"), s.get("batches")
        rows.append(
            (
                run.name,
                str(run.config.get("model", "")),
                str(run.config.get("dataset", "")),
                str(run.config.get("batch_size", "")),
                batches,
                format_pm(s.get("rouge1"), s.get("rouge1_stderr"), n=n),
                format_pm(s.get("rouge2"), s.get("rouge2_stderr"), n=n),
                format_pm(s.get("rougeL"), s.get("rougeL_stderr"), n=n),
                format_pm(s.get("exact_rate"), s.get("exact_rate_stderr"), scale=100, n=n),
                format_pm(s.get("certified_rate"), s.get("certified_rate_stderr"), scale=100, n=n),
                "-" if seconds is None else f"{seconds:.2f}",
            )
        )
    return _HEADERS, rows


def markdown_table(runs: Sequence[RunResult]) -> str:
    """Returns the headline table in Markdown (one row per run)."""
    headers, rows = table_rows(runs)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def console_table(runs: Sequence[RunResult], *, title: str = "gradleak results"):
    """Returns the headline table as a ``rich.table.Table``, compact enough for 80 columns.

    ROUGE-L is left out (the Markdown table, CSV and HTML have it), numbers never wrap, and with
    several runs the model, dataset, batch-size and batches columns are left out when every run
    has the same value: the title names it instead.
    """
    from rich import box
    from rich.table import Table

    headers, rows = table_rows(runs)
    rows = [tuple(cell.replace(" ± ", "±") for cell in row) for row in rows]
    keep = [i for i, h in enumerate(headers) if h != "ROUGE-L"]
    if len(rows) > 1:
        constant = [i for i in (1, 2, 3, 4) if len({row[i] for row in rows}) == 1]
        if constant:
            title += " (" + ", ".join(f"{headers[i]}: {rows[0][i]}" for i in constant) + ")"
        keep = [i for i in keep if i not in constant]
    table = Table(title=title, box=box.SIMPLE_HEAVY, pad_edge=False, collapse_padding=True)
    for i in keep:
        header = _SHORT.get(headers[i], headers[i])
        if i >= 3:  # numbers: never wrapped or cut
            width = max(len(header), *(len(row[i]) for row in rows))
            table.add_column(header, justify="right", no_wrap=True, min_width=width)
        else:
            table.add_column(header, overflow="fold", min_width=6)
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table


def console_summary(summary: Mapping[str, Any], *, title: str = "summary"):
    """Returns one run's headline metrics as a two-column ``rich.table.Table``."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    n = summary.get("batches")
    batches = f"{n} of {summary.get('batches_planned')}"
    seconds = summary.get("seconds_per_batch")

    def pm(name: str, scale: float = 1.0) -> str:
        return format_pm(summary.get(name), summary.get(f"{name}_stderr"), scale=scale, n=n)

    for name, value in (
        ("batches", batches),
        ("ROUGE-1 (%)", pm("rouge1")),
        ("ROUGE-2 (%)", pm("rouge2")),
        ("ROUGE-L (%)", pm("rougeL")),
        ("exact (%)", pm("exact_rate", 100)),
        ("certified (%)", pm("certified_rate", 100)),
        ("seconds per batch (median)", "-" if seconds is None else f"{seconds:.2f}"),
    ):
        table.add_row(name, value)
    return table
