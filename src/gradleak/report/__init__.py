"""Reports of experiments: tables, CSV and one self-contained HTML page.

Everything here reads only what runs wrote, ``summary.json`` and ``records.jsonl``; nothing
reruns a model or an attack, and nothing here is imported by the library below it.
"""

from gradleak.report.headline import headline
from gradleak.report.html import cause_messages, render_html, word_diff, write_html
from gradleak.report.load import RunResult, find_run_dirs, load_runs
from gradleak.report.plots import line_plot
from gradleak.report.tables import (
    CSV_FIELDS,
    console_summary,
    console_table,
    csv_rows,
    csv_text,
    format_pm,
    markdown_table,
    write_csv,
)

__all__ = [
    "CSV_FIELDS",
    "RunResult",
    "cause_messages",
    "console_summary",
    "console_table",
    "csv_rows",
    "csv_text",
    "find_run_dirs",
    "format_pm",
    "headline",
    "line_plot",
    "load_runs",
    "markdown_table",
    "render_html",
    "word_diff",
    "write_csv",
    "write_html",
]
