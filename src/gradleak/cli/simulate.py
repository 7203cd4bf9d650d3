"""``gradleak simulate``: what a client would share, saved as a ClientUpdate file."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command(help="Simulate one client's FedSGD update on texts and save it (safetensors + JSON header).")(simulate)


def simulate(
    out: Path = typer.Argument(..., help="Where to write the update (.safetensors)."),
    model: str = typer.Option(..., help="Model specification (bundled alias, random:ARCH, path, hub id)."),
    dataset: str = typer.Option("demo", help="Dataset name (demo, cola, sst2, rotten_tomatoes, hub id) or local file."),
    text_field: str = typer.Option("", help="Text column of a local file (guessed when obvious)."),
    split: str = typer.Option("train", help="Dataset split."),
    batch_size: int = typer.Option(4, min=1, help="Sequences in the client's batch."),
    seed: int = typer.Option(0, help="Seed of the sampler and of the model's head."),
    task: str = typer.Option("seq_class", help="seq_class or next_token."),
    expose: str = typer.Option("all", help="Shared parameters: 'all' or e.g. 'blocks=0,1 roles=q,k,v'."),
    truth: Path = typer.Option(None, help="Also write the batch's texts here (JSON) for later scoring."),
) -> None:
    from gradleak.cli.app import console
    from gradleak.client import Exposure, compute_update
    from gradleak.data import load_texts, sample_batches
    from gradleak.models import load_model
    from gradleak.update import save_update

    source = load_texts(dataset, split=split, text_field=text_field or None)
    batch = sample_batches(source, protocol="random", batch_size=batch_size, n_batches=1, seed=seed)[0]
    public = load_model(model, task=task, seed=seed)
    update = compute_update(public, batch, exposure=Exposure.parse(expose))
    path = save_update(update, out)
    console.print(f"wrote {path}: {len(update.tensors)} tensors, exposure {update.metadata.exposure}")
    if truth is not None:
        truth.parent.mkdir(parents=True, exist_ok=True)
        truth.write_text(json.dumps({"texts": list(batch.texts), "labels": list(batch.labels or [])}, indent=1))
        console.print(f"wrote the ground truth to {truth} (keep it away from the attacker)")
