"""LoRA through PEFT: only adapter tensors are shared; warm starts make lora_A's gradient
non-zero."""

from __future__ import annotations

import sys

import pytest
import torch

from gradleak.client import ClientSettings, LoraSpec, apply_lora, prepare_model, simulate_update
from gradleak.client.lora import lora_parameter_names
from gradleak.data import Batch
from gradleak.errors import MissingDependencyError
from gradleak.update import check_fits, load_update, save_update

pytest.importorskip("peft")

BATCH = Batch(
    texts=("Call Maria at 555-0147 before noon.", "The rent is due on Friday."), labels=(1, 0)
)


def _factor_norms(update, factor):
    return [t.norm().item() for n, t in update.tensors.items() if f".{factor}." in n]


def test_only_adapters_are_shared_and_lora_a_needs_a_warm_start(tiny_models):
    public = tiny_models("gpt2")
    settings = ClientSettings(lora_rank=4)
    start = prepare_model(public, settings)
    update = simulate_update(start, BATCH, settings=settings)
    wrapped = dict(start.model.named_parameters())
    assert (
        set(update.tensors) == set(lora_parameter_names(start)) and len(update.tensors) == 8
    )  # 4 blocks x A, B
    assert all(n in wrapped and (".lora_A." in n or ".lora_B." in n) for n in update.tensors)
    check_fits(update, start.model)
    assert update.metadata.exposure == "lora" and update.metadata.extra["lora"]["modules"] == [
        f"transformer.h.{b}.attn.c_attn" for b in range(4)
    ]
    assert max(_factor_norms(update, "lora_A")) == 0.0 and min(_factor_norms(update, "lora_B")) > 0
    warm = ClientSettings(lora_rank=4, lora_warmup_steps=2)
    warmed = simulate_update(public, BATCH, settings=warm)
    assert min(_factor_norms(warmed, "lora_A")) > 0
    assert not hasattr(public.model, "peft_config")  # the caller's model is untouched
    # The server rebuilds the round's adapter from the metadata alone, bit for bit.
    rebuilt = apply_lora(public, LoraSpec.from_dict(warmed.metadata.extra["lora"]))
    reference = dict(prepare_model(public, warm).model.named_parameters())
    assert all(torch.equal(p, reference[n]) for n, p in rebuilt.model.named_parameters())
    plain = simulate_update(
        start, BATCH, settings=ClientSettings()
    )  # a wrapped model shares adapters only
    assert set(plain.tensors) == set(update.tensors) and plain.metadata.extra["lora"]["rank"] == 4


def test_same_spec_same_adapter_and_adapter_folder_round_trip(tiny_models, tmp_path):
    public = tiny_models("llama")
    spec = LoraSpec(rank=2, targets=("q", "v"), blocks=(0, 1), warmup_steps=1, seed=3)
    a, b = apply_lora(public, spec), apply_lora(public, spec)
    names = lora_parameter_names(a)
    assert len(names) == 8 and all(".layers.0." in n or ".layers.1." in n for n in names)
    params_a, params_b = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert all(torch.equal(params_a[n], params_b[n]) for n in names)
    a.model.save_pretrained(tmp_path / "adapter")
    loaded = apply_lora(public, LoraSpec(adapter=str(tmp_path / "adapter")))
    params_c = dict(loaded.model.named_parameters())
    assert all(torch.equal(params_a[n], params_c[n]) for n in names)
    settings = ClientSettings(lora_adapter=str(tmp_path / "adapter"), algo="fedavg", lr=0.1)
    update = simulate_update(loaded, BATCH, settings=settings)
    assert update.metadata.kind == "weight_delta" and set(update.tensors) == set(names)
    back = load_update(save_update(update, tmp_path / "u"), model=loaded.model)
    assert back.metadata == update.metadata


def test_missing_extras_name_the_pip_command(monkeypatch):
    from gradleak.client._optional import require

    for module, extra in (("peft", "lora"), ("opacus", "dp")):
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(MissingDependencyError, match=rf"pip install 'gradleak\[{extra}\]'"):
            require(module)
