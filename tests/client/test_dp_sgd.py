"""DP-SGD through Opacus: the shared gradient is Opacus' clipped, noised, averaged p.grad."""

from __future__ import annotations

import pytest
import torch

from gradleak.client import ClientSettings, compute_update, simulate_update
from gradleak.client.defences import DPSGD, dp_epsilon
from gradleak.data import Batch

pytest.importorskip("opacus")

BATCH = Batch(
    texts=(
        "Call Maria at 555-0147 before noon.",
        "The rent is due on Friday.",
        "My PIN is 4821.",
        "Meet me at the station.",
    ),
    labels=(1, 0, 1, 0),
)


def _dp(public, batch=BATCH, **options):
    return simulate_update(public, batch, settings=ClientSettings(defence=("dp-sgd",), **options))


def _norm(tensors):
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values())).item()


def test_huge_clip_no_noise_equals_the_clean_gradient(tiny_models):
    # Checks Opacus' per-example machinery on the real model (GPT-2's wpe included).
    public = tiny_models("gpt2")
    dp = _dp(public, noise_multiplier=0.0, clip=1e6)
    clean = compute_update(public, BATCH)
    for n, g in clean.tensors.items():
        torch.testing.assert_close(dp.tensors[n], g, rtol=1e-3, atol=1e-6, msg=n)


def test_clipped_norm_bound(tiny_models):
    public, clip = tiny_models("gpt2"), 1e-3
    one = _dp(public, Batch(texts=BATCH.texts[:1], labels=(1,)), noise_multiplier=0.0, clip=clip)
    assert _norm(one.tensors) == pytest.approx(clip, rel=1e-3)  # one example: clipped to exactly C
    mean = _dp(public, noise_multiplier=0.0, clip=clip)
    assert _norm(mean.tensors) <= clip * (1 + 1e-4)
    assert _norm(compute_update(public, BATCH).tensors) > 10 * clip


def test_noise_scale_seed_and_epsilon(tiny_models):
    public, sigma, clip = tiny_models("gpt2"), 0.5, 1e-2
    clean = _dp(public, noise_multiplier=0.0, clip=clip)
    noised = _dp(public, noise_multiplier=sigma, clip=clip, noise_seed=7)
    diff = torch.cat([(noised.tensors[n] - clean.tensors[n]).reshape(-1) for n in clean.tensors])
    expected = sigma * clip / len(BATCH)
    assert diff.std().item() == pytest.approx(expected, rel=0.02)
    assert abs(diff.mean().item()) < 0.01 * expected
    again = _dp(public, noise_multiplier=sigma, clip=clip, noise_seed=7)
    other = _dp(public, noise_multiplier=sigma, clip=clip, noise_seed=8)
    name = "transformer.h.0.attn.c_attn.weight"
    assert all(torch.equal(noised.tensors[n], again.tensors[n]) for n in noised.tensors)
    assert not torch.equal(noised.tensors[name], other.tensors[name])
    record = noised.metadata.defence
    assert record["name"] == "dp-sgd" and record["noise_std_mean_gradient"] == pytest.approx(
        expected
    )
    assert "seed" not in record  # the noise seed stays secret
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.step(noise_multiplier=sigma, sample_rate=1.0)
    assert record["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5))
    assert clean.metadata.defence["epsilon"] is None


def test_fedavg_dp_steps_and_accounting(tiny_models):
    public = tiny_models("llama", "next_token")
    update = simulate_update(
        public,
        BATCH,
        settings=ClientSettings(
            algo="fedavg",
            local_epochs=2,
            mini_batch=2,
            lr=0.1,
            defence=("dp-sgd",),
            noise_multiplier=1.0,
            dp_delta=1e-6,
            dp_steps=100,
            dp_sample_rate=0.01,
        ),
    )
    record = update.metadata.defence
    assert update.metadata.kind == "weight_delta" and update.metadata.local_steps == 4
    assert record["steps"] == 100 and record["sample_rate"] == 0.01
    assert record["epsilon"] == pytest.approx(
        dp_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-6)
    )
    assert not any(
        hasattr(p, "grad_sample") or hasattr(p, "summed_grad") for p in public.model.parameters()
    )
    assert DPSGD().stage == "training"
