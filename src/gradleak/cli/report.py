"""``gradleak report``: tables, a CSV and one self-contained HTML page from run directories."""

from __future__ import annotations

from pathlib import Path

import typer

FORMATS = ("table", "markdown", "csv")


def register(app: typer.Typer) -> None:
    app.command(
        name="report",
        help="Summarise run directories (or folders of them, e.g. a sweep): print a table "
        "and write one self-contained HTML report and a CSV. Reads only "
        "summary.json and records.jsonl.",
    )(report_command)


def report_command(
    dirs: list[Path] = typer.Argument(..., help="Run directories, or folders holding them."),
    html: Path = typer.Option(
        None, help="HTML file. (default: DIR/report.html for one DIR, else ./gradleak-report.html)"
    ),
    csv: Path = typer.Option(None, help="CSV file. (default: results.csv beside the HTML file)"),
    output_format: str = typer.Option(
        "table", "--format", help="What to print: table, markdown or csv."
    ),
    no_files: bool = typer.Option(
        False, "--no-files", help="Only print; write neither HTML nor CSV."
    ),
    title: str = typer.Option("gradleak report", help="Title of the HTML page."),
) -> None:
    from gradleak.cli.app import console, errors
    from gradleak.errors import UnknownSpecError
    from gradleak.report import (
        console_table,
        csv_text,
        headline,
        load_runs,
        markdown_table,
        write_csv,
        write_html,
    )

    if output_format not in FORMATS:
        raise UnknownSpecError(
            f"unknown --format {output_format!r}; choose one of {', '.join(FORMATS)}."
        )
    runs = load_runs(dirs)
    if output_format == "table":
        console.print(console_table(runs))
        console.print(headline(runs))
    else:  # plain text on stdout, for pipes and docs
        typer.echo(
            markdown_table(runs) if output_format == "markdown" else csv_text(runs), nl=False
        )
    if no_files:
        return
    html = html or (dirs[0] / "report.html" if len(dirs) == 1 else Path("gradleak-report.html"))
    csv = csv or html.with_name("results.csv")
    write_csv(runs, csv)
    write_html(runs, html, title=title)
    (console if output_format == "table" else errors).print(f"wrote {html} and {csv}")
