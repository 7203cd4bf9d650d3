"""``gradleak invert``: attack a saved ClientUpdate, as a server that captured it would."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command(
        help="Attack a saved ClientUpdate file and print (and optionally save) what it leaks."
    )(invert)


def invert(
    update_file: Path = typer.Argument(
        ..., help="A ClientUpdate (.safetensors with a gradleak header)."
    ),
    model: str = typer.Option(
        "", help="Model specification; default: the one named in the update."
    ),
    attack: str = typer.Option("dager", help="Attack name (see `gradleak list attacks`)."),
    out: Path = typer.Option(None, help="Folder for reconstruction.json."),
) -> None:
    from gradleak.attacks import create_attack
    from gradleak.cli.app import console
    from gradleak.cli.output import reconstruction_table
    from gradleak.experiments.rundir import check_writable, write_json_atomic
    from gradleak.models import load_model_for
    from gradleak.update import check_fits, load_update

    if out is not None:
        check_writable(out, option="--out folder")  # before the attack, not after
    update = load_update(update_file)
    attacker = create_attack(attack)
    public = load_model_for(update.metadata, spec=model or None)
    if "lora" in update.metadata.extra:  # the server also sent the (public, warm-started) adapters
        from gradleak.client.lora import LoraSpec, apply_lora

        public = apply_lora(public, LoraSpec.from_dict(update.metadata.extra["lora"]))
    check_fits(update, public.model, source=str(update_file), loaded=model or None)
    result = attacker.reconstruct(public, update)
    for part, title in ((result, None), (result.targets, "the decoder's targets:")):
        if part is None:  # only a sequence-to-sequence update has targets
            continue
        if title:
            console.print(title)
        console.print(reconstruction_table(part))
        if part.reason:
            console.print(f"[yellow]note:[/] {part.reason}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "reconstruction.json", result.to_dict())
        console.print(f"wrote {out / 'reconstruction.json'}")
