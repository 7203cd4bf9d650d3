"""``gradleak simulate``: what a client would share, saved as a ClientUpdate file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer

CLIENT = "Client training"
DEFENCES = "Defences"


def register(app: typer.Typer) -> None:
    app.command(help="Simulate a client's update on texts (FedSGD or FedAvg, LoRA, defences) and save it "
                     "(safetensors + JSON header).")(simulate)


def simulate(
    out: Path = typer.Argument(..., help="Where to write the update (.safetensors)."),
    model: str = typer.Option(..., help="Model specification (bundled alias, random:ARCH, path, hub id)."),
    dataset: str = typer.Option("demo", help="Dataset name (demo, cola, sst2, rotten_tomatoes, hub id) or local file."),
    text_field: str = typer.Option("", help="Text column of a local file (guessed when obvious)."),
    split: str = typer.Option("train", help="Dataset split."),
    batch_size: int = typer.Option(4, min=1, help="Sequences in the client's batch."),
    seed: int = typer.Option(0, help="Seed of the sampler and of the model's head."),
    task: str = typer.Option("seq_class", help="seq_class or next_token."),
    expose: str = typer.Option("all", help="Trained and shared parameters: 'all' or e.g. 'blocks=0,1 roles=q,k,v'."),
    truth: Path = typer.Option(None, help="Also write the batch's texts here (JSON) for later scoring."),
    algo: str = typer.Option("fedsgd", help="fedsgd (one gradient) or fedavg (local SGD, weight delta).",
                             rich_help_panel=CLIENT),
    local_epochs: int = typer.Option(1, help="FedAvg local epochs E.", rich_help_panel=CLIENT),
    mini_batch: int = typer.Option(None, help="FedAvg mini-batch size b (default: the whole batch).",
                                   rich_help_panel=CLIENT),
    lr: float = typer.Option(1e-4, help="FedAvg learning rate.", rich_help_panel=CLIENT),
    disclose: str = typer.Option("learning_rate,local_epochs,local_steps,mini_batch",
                                 help="Facts the server is told ('none' for nothing): batch_size, learning_rate, "
                                      "local_epochs, local_steps, mini_batch.", rich_help_panel=CLIENT),
    freeze_embeddings: bool = typer.Option(False, help="Keep the embeddings frozen (not shared).",
                                           rich_help_panel=CLIENT),
    lora_rank: int = typer.Option(None, help="Train LoRA adapters of this rank (PEFT); only they are shared.",
                                  rich_help_panel=CLIENT),
    lora_targets: str = typer.Option(None, help="Roles with adapters, e.g. q,v (default: the family's).",
                                     rich_help_panel=CLIENT),
    lora_warmup_steps: int = typer.Option(0, help="Warm the adapter up this many steps on seeded random tokens.",
                                          rich_help_panel=CLIENT),
    lora_adapter: str = typer.Option(None, help="A saved PEFT adapter folder to start from.", rich_help_panel=CLIENT),
    clients: int = typer.Option(1, min=1, help="Secure aggregation: save the sum of this many clients' updates.",
                                rich_help_panel=CLIENT),
    defence: list[str] = typer.Option([], help="dp-sgd, noise, prune or quantize; repeat or comma-separate to chain.",
                                      rich_help_panel=DEFENCES),
    noise_multiplier: float = typer.Option(1.0, help="DP-SGD noise multiplier sigma.", rich_help_panel=DEFENCES),
    clip: float = typer.Option(1.0, help="DP-SGD per-example clipping bound C.", rich_help_panel=DEFENCES),
    dp_delta: float = typer.Option(1e-5, help="DP delta for the reported epsilon.", rich_help_panel=DEFENCES),
    dp_sample_rate: float = typer.Option(None, help="Sampling rate stated to the accountant.",
                                         rich_help_panel=DEFENCES),
    dp_steps: int = typer.Option(None, help="Steps stated to the accountant.", rich_help_panel=DEFENCES),
    sigma: float = typer.Option(1e-4, help="Std of plain Gaussian noise (defence 'noise').", rich_help_panel=DEFENCES),
    prune_ratio: float = typer.Option(0.9, help="Fraction of entries pruned (defence 'prune').",
                                      rich_help_panel=DEFENCES),
    quant: str = typer.Option("int8", help="int8 or fp16 (defence 'quantize').", rich_help_panel=DEFENCES),
    noise_seed: int = typer.Option(0, help="Seed of the defences' noise (kept out of the update).",
                                   rich_help_panel=DEFENCES),
) -> None:
    from gradleak.cli.app import console
    from gradleak.client import ClientSettings, prepare_model, simulate_update
    from gradleak.client.defences import secure_aggregate
    from gradleak.data import load_texts, sample_batches
    from gradleak.models import load_model
    from gradleak.update import save_update

    settings = ClientSettings(
        algo=algo, local_epochs=local_epochs, mini_batch=mini_batch, lr=lr,
        disclose=() if disclose.strip() == "none" else disclose, expose=expose,
        freeze_embeddings=freeze_embeddings, lora_rank=lora_rank, lora_targets=lora_targets,
        lora_warmup_steps=lora_warmup_steps, lora_adapter=lora_adapter, defences=",".join(defence),
        noise_multiplier=noise_multiplier, clip=clip, dp_delta=dp_delta, dp_sample_rate=dp_sample_rate,
        dp_steps=dp_steps, sigma=sigma, prune_ratio=prune_ratio, quant=quant, seed=noise_seed,
    )
    source = load_texts(dataset, split=split, text_field=text_field or None)
    batches = sample_batches(source, protocol="random", batch_size=batch_size, n_batches=clients, seed=seed)
    public = prepare_model(load_model(model, task=task, seed=seed), settings)
    # Each client draws its own noise: seeds noise_seed, noise_seed + 1, ...
    updates = [simulate_update(public, batch, settings=replace(settings, seed=noise_seed + i))
               for i, batch in enumerate(batches)]
    update = secure_aggregate(updates) if clients > 1 else updates[0]
    path = save_update(update, out)
    console.print(f"wrote {path}: {len(update.tensors)} tensors ({update.metadata.kind}), "
                  f"exposure {update.metadata.exposure}, defence {_defence_summary(update.metadata.defence)}")
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
        eps = f" (epsilon {step['epsilon']:.3g} at delta {step['delta']:g})" if step.get("epsilon") else ""
        parts.append(step["name"] + eps)
    return " + ".join(parts)
