"""``gradleak demo`` scores as runs do: a sentence with the client's token ids is exact in both
tables."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from gradleak.cli.demo import score_table
from gradleak.models import load_tokenizer

TEXTS = ["Are we still on for dinner tonight?", "Hi Maya, call me after six."]


def test_an_uncased_models_exact_recovery_is_exact_in_the_score_table():
    tokenizer = load_tokenizer("minilm")  # uncased: recovered text has no capitals
    ids = [tuple(tokenizer(text)["input_ids"]) for text in TEXTS]
    sequences = [
        SimpleNamespace(token_ids=i, text=tokenizer.decode(list(i)), certified=True) for i in ids
    ]
    result = SimpleNamespace(sequences=sequences, texts=[s.text for s in sequences])
    assert all(s.text != t for s, t in zip(sequences, TEXTS, strict=True))  # case differs
    console = Console(width=200, record=True)
    console.print(score_table(TEXTS, result, tokenizer))
    assert "│   100.0 │   100.0 │   100.0 │           2 / 2 │" in console.export_text()
