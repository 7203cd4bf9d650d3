"""Fixtures for the experiment runner: a tiny text file, a tiny model spec and a spy attack."""

from __future__ import annotations

import json

import pytest

from gradleak.attacks import CERTIFIED, Attack, Reconstruction, RecoveredSequence
from gradleak.attacks.registry import _ATTACKS, register_attack

GPT2 = "random:gpt2?n_layer=3&n_embd=64&n_head=2&n_positions=64"
TEXTS = [
    "Call Anna at 555-0142.",
    "My PIN is 4821.",
    "Meet me at the station.",
    "The code is blue fox.",
    "Rent is due Friday.",
    "Ben owes me ten euros.",
]


@pytest.fixture
def gpt2_spec() -> str:
    """Returns a tiny random GPT-2 on which DAGER takes about a second per short batch."""
    return GPT2


@pytest.fixture
def texts() -> list[str]:
    """Returns the texts of :func:`tiny_texts`."""
    return list(TEXTS)


@pytest.fixture
def tiny_texts(tmp_path):
    """Returns a JSONL file of six short private messages."""
    path = tmp_path / "tiny.jsonl"
    path.write_text(
        "".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(TEXTS))
    )
    return path


class SpyAttack(Attack):
    """Records what it is given and recovers a fixed text, certified."""

    name = "spy"
    calls: list[tuple] = []

    def __init__(self, text: str = "Call Anna at 555-0142.") -> None:
        self.text = text

    def reconstruct(self, *args, **kwargs) -> Reconstruction:
        SpyAttack.calls.append((args, kwargs))
        public = args[0]
        ids = tuple(public.tokenizer(self.text)["input_ids"])
        sequence = RecoveredSequence(ids, public.tokenizer.decode(list(ids)), CERTIFIED, (1e-7,))
        return Reconstruction(
            "spy", (sequence,), diagnostics={"seconds": {"guess": 0.0}, "rank": 3}
        )


@pytest.fixture
def spy_attack():
    """Registers the ``spy`` attack for one test and returns its class (``calls`` holds its
    inputs)."""
    SpyAttack.calls = []
    register_attack("spy", SpyAttack, force=True)
    yield SpyAttack
    _ATTACKS.pop("spy", None)
