"""Update defences (noise, pruning, quantisation), secure aggregation, the registry and metadata
round trips."""

from __future__ import annotations

import pytest
import torch

from gradleak.client import ClientSettings, compute_update, simulate_update
from gradleak.client.defences import (
    GaussianNoise,
    Quantization,
    TopKPruning,
    defence_class,
    defence_names,
    int8_symmetric,
    kept_count,
    prune_tensors,
    quantize_tensors,
    record_defence,
    register_defence,
    secure_aggregate,
)
from gradleak.client.defences.registry import _DEFENCES
from gradleak.data import Batch
from gradleak.errors import InvalidUpdateError, UnknownSpecError
from gradleak.update import ClientUpdate, UpdateMetadata, load_update, save_update

BATCH = Batch(
    texts=("Call Maria at 555-0147 before noon.", "The rent is due on Friday."), labels=(1, 0)
)


def _update(tensors, **metadata):
    metadata = {"model": "m", "family": "gpt2", "task": "seq_class", **metadata}
    return ClientUpdate(tensors=tensors, metadata=UpdateMetadata(**metadata))


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(40, 25, generator=g), "b": torch.randn(7, generator=g) * 10}


def test_gaussian_noise_scale_and_seed():
    zeros = _update({"w": torch.zeros(200, 500)})
    noised = GaussianNoise(sigma=1e-3, seed=1).apply(zeros)
    assert noised.tensors["w"].std().item() == pytest.approx(1e-3, rel=0.02)
    assert torch.equal(
        noised.tensors["w"], GaussianNoise(sigma=1e-3, seed=1).apply(zeros).tensors["w"]
    )
    assert not torch.equal(
        noised.tensors["w"], GaussianNoise(sigma=1e-3, seed=2).apply(zeros).tensors["w"]
    )
    assert noised.metadata.defence == {"name": "noise", "sigma": 1e-3}  # no seed: it is secret


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9, 0.99])
def test_pruning_keeps_exactly_the_top_fraction(ratio):
    tensors = _tensors()
    pruned = prune_tensors(tensors, ratio=ratio)
    for name, t in tensors.items():
        kept = pruned[name] != 0
        assert (
            int(kept.sum())
            == kept_count(t.numel(), ratio)
            == max(1, round(t.numel() * (1 - ratio)))
        )
        assert torch.equal(pruned[name][kept], t[kept])  # kept values are untouched
        assert t[kept].abs().min() >= t[~kept].abs().max() if (~kept).any() else True
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    total = sum(
        int((p != 0).sum()) for p in prune_tensors(tensors, ratio=0.9, scope="global").values()
    )
    assert total == kept_count(flat.numel(), 0.9)


def test_int8_error_is_at_most_half_a_step_and_fp16_rounds():
    tensors = _tensors()
    quantised = quantize_tensors(tensors, scheme="int8")
    for name, t in tensors.items():
        codes, scale = int8_symmetric(t)
        assert scale == pytest.approx(t.abs().max().item() / 127)
        assert (quantised[name] - t).abs().max().item() <= scale / 2 * (1 + 1e-5)
        assert len(torch.unique(quantised[name])) <= 255 and quantised[name].dtype == t.dtype
    assert torch.equal(quantize_tensors({"z": torch.zeros(3)}, scheme="int8")["z"], torch.zeros(3))
    half = quantize_tensors(tensors, scheme="fp16")
    assert torch.equal(half["a"], tensors["a"].half().float())


def test_secure_aggregation_sums():
    updates = [_update(_tensors(seed), batch_size=2, learning_rate=0.1) for seed in range(3)]
    server = secure_aggregate(updates)
    for name in updates[0].tensors:
        torch.testing.assert_close(server.tensors[name], sum(u.tensors[name] for u in updates))
    assert server.metadata.defence == {"name": "secure-aggregation", "clients": 3}
    assert server.metadata.batch_size == 6 and server.metadata.learning_rate == 0.1
    with pytest.raises(InvalidUpdateError, match="differs from update 0 in task"):
        secure_aggregate([updates[0], _update(_tensors(), task="next_token")])
    with pytest.raises(InvalidUpdateError, match="other tensors"):
        secure_aggregate([updates[0], _update({"a": torch.zeros(40, 25)})])


def test_chained_defences_record_in_order(tiny_models):
    public = tiny_models("gpt2")
    settings = ClientSettings(
        defence=("noise", "prune", "quantize"), sigma=1e-3, prune_ratio=0.5, quant="fp16"
    )
    update = simulate_update(public, BATCH, settings=settings)
    steps = update.metadata.defence["steps"]
    assert [s["name"] for s in steps] == ["noise", "prune", "quantize"]
    w = update.tensors["transformer.h.0.attn.c_attn.weight"]
    assert int((w != 0).sum()) == kept_count(w.numel(), 0.5)
    assert record_defence({"name": "x"}, {"name": "y"}) == {
        "name": "chain",
        "steps": [{"name": "x"}, {"name": "y"}],
    }


@pytest.mark.parametrize(
    "defence",
    [GaussianNoise(1e-4), TopKPruning(0.8, "global"), Quantization("int8"), "dp-sgd", "secagg"],
)
def test_defence_metadata_round_trips(tiny_models, tmp_path, defence):
    public = tiny_models("gpt2")
    if defence == "dp-sgd":
        pytest.importorskip("opacus")
        update = simulate_update(
            public,
            BATCH,
            settings=ClientSettings(
                algo="fedavg", mini_batch=1, defence=("dp-sgd", "quantize"), noise_multiplier=0.8
            ),
        )
    elif defence == "secagg":
        update = secure_aggregate(
            [compute_update(public, BATCH), compute_update(public, Batch(texts=("Hi.",)))]
        )
    else:
        update = defence.apply(compute_update(public, BATCH))
    back = load_update(save_update(update, tmp_path / "update"), model=public.model)
    assert back.metadata == update.metadata and back.metadata.defence is not None
    for name, t in update.tensors.items():
        assert torch.equal(back.tensors[name], t)


def test_registry():
    assert defence_names() == ["dp-sgd", "noise", "prune", "quantize"]
    assert defence_class("noise") is GaussianNoise
    with pytest.raises(UnknownSpecError, match="choose one of dp-sgd, noise, prune, quantize"):
        defence_class("blur")
    with pytest.raises(ValueError, match="already registered"):
        register_defence("noise", GaussianNoise)
    register_defence("noise2", GaussianNoise)
    try:
        assert "noise2" in defence_names() and ClientSettings(defence=("noise2",)).defence == (
            "noise2",
        )
    finally:
        _DEFENCES.pop("noise2")
