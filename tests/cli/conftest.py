"""Fixtures for command tests: a tiny text file, a tiny model spec, a spy attack and a CLI
runner."""

from __future__ import annotations

import json

import pytest

from gradleak.attacks import CERTIFIED, Attack, Reconstruction, RecoveredSequence
from gradleak.attacks.registry import _ATTACKS, register_attack

TEXTS = [
    "Call Anna at 555-0142.",
    "My PIN is 4821.",
    "Meet me at the station.",
    "The code is blue fox.",
]


@pytest.fixture
def gpt2_spec() -> str:
    """Returns a tiny random GPT-2 on which DAGER takes about a second per short batch."""
    return "random:gpt2?n_layer=3&n_embd=64&n_head=2&n_positions=64"


@pytest.fixture
def tiny_texts(tmp_path):
    """Returns a JSONL file of four short private messages."""
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


class SpyAttack(Attack):
    """Counts its calls and recovers one fixed text, certified."""

    name = "spy"
    calls = 0

    def reconstruct(self, public, update) -> Reconstruction:
        SpyAttack.calls += 1
        ids = tuple(public.tokenizer(TEXTS[0])["input_ids"])
        return Reconstruction("spy", (RecoveredSequence(ids, TEXTS[0], CERTIFIED, (1e-7,)),))


@pytest.fixture
def spy_attack():
    """Registers the ``spy`` attack for one test and returns its class."""
    SpyAttack.calls = 0
    register_attack("spy", SpyAttack, force=True)
    yield SpyAttack
    _ATTACKS.pop("spy", None)


@pytest.fixture
def cli(capsys):
    """Returns a function running ``gradleak ARGS...`` in-process: (exit code, stdout + stderr)."""
    from gradleak.cli import main

    def run(*args: str) -> tuple[int, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run
