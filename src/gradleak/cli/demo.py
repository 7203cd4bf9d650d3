"""``gradleak demo``: one client, one update, one attack, on the built-in private messages."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

if TYPE_CHECKING:
    from gradleak.attacks import Reconstruction

DEFAULT_MODEL = "smollm2-135m"


def register(app: typer.Typer) -> None:
    app.command(
        help="Simulate one client on built-in private messages and show what DAGER recovers "
        "from its update."
    )(demo)


def demo(
    model: str = typer.Option(
        DEFAULT_MODEL, help="Model specification (bundled alias, random:ARCH, path, hub id)."
    ),
    batch_size: int = typer.Option(
        4, min=1, help="How many private messages the client trains on."
    ),
    task: str = typer.Option(
        "seq_class",
        help="Client task: seq_class, next_token (decoders) or seq2seq (encoder-decoders; each "
        "text is its own target).",
    ),
    save: str = typer.Option("", help="Also save the client's update to this .safetensors file."),
) -> None:
    from gradleak.attacks.dager import Dager
    from gradleak.cli.app import console
    from gradleak.cli.output import reconstruction_table
    from gradleak.client import compute_update
    from gradleak.data import Batch, load_texts
    from gradleak.models import load_model
    from gradleak.update import save_update

    console.print(
        f"[bold]1. The server sends the model[/] {model!r} "
        "(first use of a GGUF model converts it once)."
    )
    started = time.perf_counter()
    public = load_model(model, task=task)
    console.print(f"   loaded {public.family!r} in {time.perf_counter() - started:.1f} s")

    source = load_texts("demo")
    batch = Batch(texts=source.texts[:batch_size], labels=source.labels[:batch_size], source="demo")
    console.print(
        f"[bold]2. A client computes one gradient step on {len(batch)} private messages[/] "
        "and shares it."
    )
    started = time.perf_counter()
    update = compute_update(public, batch)
    shared = sum(t.numel() for t in update.tensors.values())
    console.print(
        f"   shares {len(update.tensors)} tensors ({shared / 1e6:.1f} M values) in "
        f"{time.perf_counter() - started:.1f} s; metadata: model={update.metadata.model}, "
        f"task={update.metadata.task}, kind={update.metadata.kind}, "
        f"exposure={update.metadata.exposure}"
    )
    if save:
        console.print(f"   saved to {save_update(update, save)}")

    console.print("[bold]3. The server runs DAGER on the update alone.[/]")
    result = Dager().reconstruct(public, update)
    exact_ids = {tuple(public.tokenizer(t)["input_ids"]) for t in batch.texts}
    console.print(
        reconstruction_table(result, exact=[seq.token_ids in exact_ids for seq in result.sequences])
    )
    if result.reason:
        console.print(f"[yellow]note:[/] {result.reason}")
    if result.targets is not None:  # sequence-to-sequence: each text was also its own target
        console.print("   the decoder's targets:")
        targets = result.targets
        console.print(
            reconstruction_table(
                targets, exact=[seq.token_ids in exact_ids for seq in targets.sequences]
            )
        )
        if targets.reason:
            console.print(f"[yellow]note:[/] {targets.reason}")
    seconds = result.diagnostics.get("seconds", {})
    console.print("   time per stage: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))

    console.print(score_table(batch.texts, result, public.tokenizer))


def score_table(texts: Sequence[str], result: Reconstruction, tokenizer: Any) -> Table:
    """Returns the demo's score table, scored as runs are scored.

    References are the texts as the client's tokens decode (an uncased model cannot return
    capitals), so a sentence counts as exact here when its token ids are the client's, as in the
    reconstruction table's "exact" column.
    """
    from gradleak.experiments.records import score_fields

    metrics = score_fields(texts, result, tokenizer)["metrics"]
    table = Table(
        title="4. Scored against the client's messages (only here does ground truth appear)"
    )
    for name in ("ROUGE-1", "ROUGE-2", "ROUGE-L", "exact sentences"):
        table.add_column(name, justify="right")
    table.add_row(
        f"{metrics['rouge1']:.1f}",
        f"{metrics['rouge2']:.1f}",
        f"{metrics['rougeL']:.1f}",
        f"{metrics['exact_rate'] * len(texts):.0f} / {len(texts)}",
    )
    return table
