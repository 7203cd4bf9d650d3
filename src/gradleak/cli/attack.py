"""``gradleak attack``: attack sampled batches and write a resumable run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from gradleak.cli.client_options import with_client_options

HELP = (
    "Attack the updates of clients training on sampled batches; write DIR/config.yaml, one line "
    "per batch to DIR/records.jsonl and DIR/summary.json. Rerunning the same command resumes an "
    "interrupted run. Options given here override --config; the client training and defence "
    "options are the keys of its client: mapping."
)


def register(app: typer.Typer) -> None:
    app.command(name="attack", help=HELP)(attack_command)


@with_client_options
def attack_command(
    model: str = typer.Option(
        None, help="Model specification (bundled alias, random:ARCH, path, hub id)."
    ),
    dataset: str = typer.Option(
        None,
        help=(
            "demo, cola, sst2, rotten_tomatoes, a .jsonl/.csv/.txt file or a hub id. "
            "(default: demo)"
        ),
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", help="Texts per client batch. (default: 1)"
    ),
    batches: int = typer.Option(
        None, "--batches", "-n", help="Number of batches to attack. (default: 1)"
    ),
    attack: str = typer.Option(None, help="Attack name (gradleak list attacks). (default: dager)"),
    task: str = typer.Option(
        None,
        help="Client task: seq_class, next_token (decoders) or seq2seq (encoder-decoders; each "
        "text is its own target). (default: seq_class)",
    ),
    seed: int = typer.Option(
        None, help="Seed of the sampler and the model's head. (default: 101, the papers')"
    ),
    out: Path = typer.Option(
        None, help="Run directory. (default: runs/ATTACK-DATASET-MODEL-bB-HASH)"
    ),
    config: Path = typer.Option(
        None, "--config", "-c", help="YAML file with the same keys (batch_size or batch-size)."
    ),
    overwrite: bool = typer.Option(
        False, help="Delete earlier results in --out instead of refusing them."
    ),
    split: str = typer.Option(None, help="Dataset split. (default: train)"),
    text_field: str = typer.Option(
        None, help="Text column of a local file (guessed when obvious)."
    ),
    sampler: str = typer.Option(
        None, help="dager, lamp, random or auto (dager for the papers' datasets). (default: auto)"
    ),
    dtype: str = typer.Option(
        None, help="Model dtype: float32, float64, bfloat16, float16. (default: float32)"
    ),
    device: str = typer.Option(None, help="cpu, cuda, cuda:N or auto. (default: cpu)"),
    matching: str = typer.Option(
        None, help="Match reconstructions to references: hungarian or dager. (default: hungarian)"
    ),
    keep_special_tokens: bool = typer.Option(
        None,
        "--keep-special-tokens/--strip-special-tokens",
        help="Score with special tokens kept, as the papers did. (default: strip)",
    ),
    attack_option: list[str] = typer.Option(
        None,
        "--attack-option",
        "-o",
        help="Attack setting KEY=VALUE, repeatable (e.g. -o max_frontier=512).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    client: dict[str, Any] | None = None,
) -> None:
    from gradleak.cli.app import console
    from gradleak.cli.progress import run_progress
    from gradleak.experiments import (
        build_config,
        default_run_dir,
        load_config_file,
        parse_options,
        run_experiment,
    )
    from gradleak.report import console_summary

    file_values = load_config_file(config) if config is not None else {}
    cli_values = dict(
        model=model,
        dataset=dataset,
        split=split,
        text_field=text_field,
        batch_size=batch_size,
        batches=batches,
        sampler=sampler,
        seed=seed,
        task=task,
        attack=attack,
        dtype=dtype,
        device=device,
        matching=matching,
        keep_special_tokens=keep_special_tokens,
        attack_options=parse_options(attack_option),
        client=client or None,
    )
    run_config = build_config(
        file_values, cli_values, source=str(config) if config else "the config file"
    ).resolved()
    run_dir = out or (
        Path(file_values["out"]) if file_values.get("out") else default_run_dir(run_config)
    )
    if not quiet:
        console.print(f"run directory: {run_dir}")
    with run_progress(console, run_config.attack, quiet=quiet) as on_event:
        summary = run_experiment(run_config, run_dir, overwrite=overwrite, on_event=on_event)
    if not quiet:
        console.print(
            console_summary(
                summary,
                title=f"{run_config.attack} on {run_config.dataset}, B = {run_config.batch_size}",
            )
        )
        console.print(
            f"wrote {run_dir}/config.yaml, records.jsonl, summary.json; "
            f"make an HTML report with: gradleak report {run_dir}"
        )
