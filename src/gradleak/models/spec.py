"""Model specifications: the one string a user types to name a model, parsed.

Accepted forms, tried in this order:

- a bundled alias: ``minilm``, ``smollm2-135m``;
- ``random:ARCH`` with optional config overrides, e.g. ``random:gpt2?n_layer=2&n_embd=64&seed=1``
  (a randomly initialised model of a named architecture; ``tokenizer=PATH`` picks its tokenizer);
- a path to a ``.gguf`` file;
- a path to a local model directory (one holding ``config.json``);
- anything else: a Hugging Face hub id, optionally ``ID@REVISION``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from gradleak.models.bundled import BUNDLED

RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model specification.

    Attributes:
        text: what the user typed; stored in every update so the attacker can rebuild the model.
        kind: "bundled", "random", "gguf", "directory" or "hub".
        target: the alias, architecture, path or hub id.
        options: ``random:`` config overrides (strings, converted on use).
        revision: hub revision after ``@``, if any.
    """

    text: str
    kind: str
    target: str
    options: dict[str, str] = field(default_factory=dict)
    revision: str | None = None


def parse_model_spec(text: str) -> ModelSpec:
    """Returns the parsed form of a model specification string."""
    text = text.strip()
    if not text:
        raise ValueError(
            "the model specification is empty; name a model, e.g. --model smollm2-135m"
        )
    if text in BUNDLED:
        return ModelSpec(text=text, kind="bundled", target=text)
    if text.startswith(RANDOM_PREFIX):
        arch, _, query = text[len(RANDOM_PREFIX) :].partition("?")
        return ModelSpec(text=text, kind="random", target=arch, options=dict(parse_qsl(query)))
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        return ModelSpec(text=text, kind="gguf", target=str(path))
    if path.is_dir():
        return ModelSpec(text=text, kind="directory", target=str(path))
    hub_id, _, revision = text.partition("@")
    return ModelSpec(text=text, kind="hub", target=hub_id, revision=revision or None)
