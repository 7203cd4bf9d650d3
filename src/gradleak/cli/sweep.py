"""``gradleak sweep``: one resumable run per combination of a grid's listed values."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = (
    "Run every combination of the values listed in GRID (a YAML file with the keys of `gradleak "
    "attack --config`, where a list is an axis, or a built-in grid such as dager-smollm2), one "
    "run directory each under the grid's `out` folder. A client setting makes an axis as a "
    "top-level client.KEY list, e.g. client.sigma: [1e-5, 5e-5]. --shard i/N runs the runs "
    "numbered i modulo N, for cluster job arrays. Rerunning resumes unfinished runs."
)


def register(app: typer.Typer) -> None:
    app.command(name="sweep", help=HELP)(sweep_command)


def sweep_command(
    grid: str = typer.Argument(..., help="The sweep file (YAML), or the name of a built-in grid."),
    out: Path = typer.Option(
        None, help="Folder of the run directories. (default: the grid's `out`, else runs/GRID)"
    ),
    shard: str = typer.Option(None, help="Run only shard i of N (i = 0 .. N-1), e.g. --shard 0/4."),
    set_values: list[str] = typer.Option(
        None,
        "--set",
        help="Override a grid key, KEY=VALUE, repeatable (e.g. --set batches=5; a list such as "
        "[1,2] makes an axis; client settings as client.KEY, e.g. --set client.sigma=[1e-5,5e-5]).",
    ),
    overwrite: bool = typer.Option(
        False, help="Delete earlier results of these runs instead of refusing a changed config."
    ),
    list_only: bool = typer.Option(
        False, "--list", help="Print the runs (of this shard) and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    from gradleak.cli.app import console
    from gradleak.cli.progress import run_progress
    from gradleak.experiments import (
        expand_grid,
        load_grid,
        parse_options,
        parse_shard,
        resolve_grid,
        run_experiment,
        select_shard,
        sweep_manifest,
    )
    from gradleak.experiments.rundir import check_writable, write_json_atomic
    from gradleak.report import RunResult, console_table

    path = resolve_grid(grid)
    values = load_grid(path, overrides=parse_options(set_values))
    root = out or Path(values.get("out") or Path("runs") / path.stem)
    runs = expand_grid(values, root=root, source=str(grid))
    selected = select_shard(runs, parse_shard(shard) if shard else None)
    if list_only:
        for run in selected:
            console.print(f"{run.index:4d}  {run.out}")
        console.print(
            f"{len(selected)} of {len(runs)} run(s)" + (f" in shard {shard}" if shard else "")
        )
        return
    check_writable(root, option="--out folder")
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "sweep.json", sweep_manifest(values, runs))
    results = []
    for position, run in enumerate(selected, start=1):
        label = f"[{position}/{len(selected)}] {run.name}"
        with run_progress(console, label, quiet=quiet) as on_event:
            summary = run_experiment(run.config, run.out, overwrite=overwrite, on_event=on_event)
        results.append(RunResult(run.out, run.name, summary, []))
    if not quiet:
        console.print(
            console_table(results, title=f"sweep {grid}" + (f", shard {shard}" if shard else ""))
        )
        console.print(f"make the HTML report and CSV with: gradleak report {root}")
