"""``gradleak simulate``: what a client would share, saved as a ClientUpdate file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from gradleak.cli.client_options import with_client_options


def register(app: typer.Typer) -> None:
    app.command(
        help="Simulate a client's update on texts (FedSGD or FedAvg, LoRA, defences) and save it "
        "(safetensors + JSON header)."
    )(simulate)


@with_client_options
def simulate(
    out: Path = typer.Argument(..., help="Where to write the update (.safetensors)."),
    model: str = typer.Option(
        ..., help="Model specification (bundled alias, random:ARCH, path, hub id)."
    ),
    dataset: str = typer.Option(
        "demo", help="Dataset name (demo, cola, sst2, rotten_tomatoes, hub id) or local file."
    ),
    text_field: str = typer.Option("", help="Text column of a local file (guessed when obvious)."),
    split: str = typer.Option("train", help="Dataset split."),
    batch_size: int = typer.Option(4, min=1, help="Sequences in the client's batch."),
    seed: int = typer.Option(0, help="Seed of the sampler and of the model's head."),
    task: str = typer.Option(
        "seq_class",
        help="seq_class, next_token (decoders) or seq2seq (encoder-decoders: the source to the "
        "encoder, the target to the decoder; each text is its own target).",
    ),
    truth: Path = typer.Option(
        None, help="Also write the batch's texts here (JSON) for later scoring."
    ),
    client: dict[str, Any] | None = None,
) -> None:
    from gradleak.cli.app import console
    from gradleak.client import ClientSettings, prepare_model, simulate_update
    from gradleak.client.defences import secure_aggregate
    from gradleak.data import load_texts, sample_batches
    from gradleak.experiments.rundir import check_writable
    from gradleak.models import load_model
    from gradleak.update import save_update

    check_writable(out.parent, option="path for the update")  # before the work, not after
    if truth is not None:
        check_writable(truth.parent, option="--truth path")
    settings = ClientSettings.from_dict(client)
    clients, noise_seed = settings.clients, settings.noise_seed
    source = load_texts(dataset, split=split, text_field=text_field or None)
    batches = sample_batches(
        source, protocol="random", batch_size=batch_size, n_batches=clients, seed=seed
    )
    public = prepare_model(load_model(model, task=task, seed=seed), settings)
    # Each client draws its own noise: seeds noise_seed, noise_seed + 1, ...
    updates = [
        simulate_update(public, batch, settings=replace(settings, noise_seed=noise_seed + i))
        for i, batch in enumerate(batches)
    ]
    update = secure_aggregate(updates) if clients > 1 else updates[0]
    path = save_update(update, out)
    console.print(
        f"wrote {path}: {len(update.tensors)} tensors ({update.metadata.kind}), "
        f"exposure {update.metadata.exposure}, defence {_defence_summary(update.metadata.defence)}"
    )
    if truth is not None:
        truth.parent.mkdir(parents=True, exist_ok=True)
        texts = [t for b in batches for t in b.texts]
        labels = [label for b in batches for label in (b.labels or [])]
        truth.write_text(json.dumps({"texts": texts, "labels": labels}, indent=1))
        console.print(f"wrote the ground truth to {truth} (keep it away from the attacker)")


def _defence_summary(defence: dict | None) -> str:
    if defence is None:
        return "none"
    steps = defence["steps"] if defence.get("name") == "chain" else [defence]
    parts = []
    for step in steps:
        eps = (
            f" (epsilon {step['epsilon']:.3g} at delta {step['delta']:g})"
            if step.get("epsilon")
            else ""
        )
        parts.append(step["name"] + eps)
    return " + ".join(parts)
