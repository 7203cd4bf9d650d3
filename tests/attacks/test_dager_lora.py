"""DAGER on LoRA updates: the A factor's gradient spans the layer inputs (needs tokens < rank)."""

from __future__ import annotations

import pytest

from gradleak.attacks.dager import Dager
from gradleak.client import ClientSettings, prepare_model, simulate_update
from gradleak.data import Batch
from gradleak.models import load_model

pytest.importorskip("peft")

GPT2 = "random:gpt2?n_layer=3&n_embd=128&n_head=4&n_positions=64"
TEXTS = ("Call Maria at noon.", "The rent is due.")


def test_trained_adapter_update_is_inverted_exactly():
    settings = ClientSettings(lora_rank=32, lora_warmup_steps=3)
    start = prepare_model(load_model(GPT2), settings)
    update = simulate_update(start, Batch(texts=TEXTS, labels=(0, 1)), settings=settings)
    assert all(".lora_" in name for name in update.tensors)
    result = Dager().reconstruct(start, update)
    truth = sorted(tuple(start.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert sorted(s.token_ids for s in result.sequences) == truth and result.certified
