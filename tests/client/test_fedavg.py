"""FedAvg: local SGD in order over mini-batches; the update is the weight delta."""

from __future__ import annotations

import copy

import pytest
import torch

from gradleak.client import (
    ClientSettings,
    Exposure,
    batch_gradient,
    compute_fedavg_update,
    compute_update,
    minibatch_slices,
    simulate_update,
)
from gradleak.client.fedavg import sub_batch
from gradleak.data import Batch

BATCH = Batch(
    texts=(
        "Call Maria at 555-0147 before noon.",
        "The rent is due on Friday.",
        "My PIN is 4821.",
        "Meet me at the station.",
    ),
    labels=(1, 0, 1, 0),
)


def _weights(public):
    return {n: p.detach().clone() for n, p in public.model.named_parameters()}


def test_minibatch_slices_in_order():
    assert minibatch_slices(4, None) == [slice(0, 4)]
    assert minibatch_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert sub_batch(BATCH, slice(1, 3)).labels == (0, 1)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_one_step_equals_fedsgd_gradient_times_minus_lr(tiny_models, name):
    public, lr = tiny_models(name), 0.5
    before = _weights(public)
    update = compute_fedavg_update(public, BATCH, lr=lr)
    gradient = compute_update(public, BATCH)
    assert update.metadata.kind == "weight_delta" and update.metadata.local_steps == 1
    assert update.metadata.learning_rate == lr and update.metadata.extra["algo"] == "fedavg"
    for n, delta in update.tensors.items():
        torch.testing.assert_close(delta, -lr * gradient.tensors[n], rtol=1e-4, atol=1e-7, msg=n)
    for n, g in update.gradients().items():  # the server's pseudo-gradient is the gradient again
        torch.testing.assert_close(g, gradient.tensors[n], rtol=1e-4, atol=1e-6, msg=n)
    after = _weights(public)
    assert all(torch.equal(before[n], after[n]) for n in before), "weights must be restored"


def test_multi_step_matches_hand_sgd_and_records_steps(tiny_models):
    public, lr = tiny_models("gpt2"), 0.5
    update = simulate_update(
        public, BATCH, settings=ClientSettings(algo="fedavg", local_epochs=2, mini_batch=2, lr=lr)
    )
    assert update.metadata.local_steps == 4 and update.metadata.learning_rate == lr
    assert update.metadata.extra["local_epochs"] == 2 and update.metadata.extra["mini_batch"] == 2
    # The same four steps by hand on a copy.
    hand = copy.copy(public)
    hand.model = copy.deepcopy(public.model)
    names = list(update.tensors)
    params = dict(hand.model.named_parameters())
    start = {n: params[n].detach().clone() for n in names}
    for _ in range(2):
        for part in (slice(0, 2), slice(2, 4)):
            grads = batch_gradient(hand, sub_batch(BATCH, part), names=names)
            with torch.no_grad():
                for n in names:
                    params[n] -= lr * grads[n]
    one_step = compute_update(public, BATCH)
    name = "transformer.h.0.attn.c_attn.weight"
    for n in names:
        torch.testing.assert_close(
            update.tensors[n], params[n].detach() - start[n], rtol=1e-4, atol=1e-7
        )
    assert not torch.allclose(update.tensors[name], -4 * lr * one_step.tensors[name], rtol=1e-3)


def test_undisclosed_facts_are_none(tiny_models):
    public = tiny_models("gpt2")
    update = compute_fedavg_update(public, BATCH, lr=0.1, epochs=2, mini_batch=2, disclose=())
    meta = update.metadata
    assert meta.learning_rate is None and meta.local_steps is None and meta.batch_size is None
    assert (
        meta.extra["local_epochs"] is None
        and meta.extra["mini_batch"] is None
        and meta.extra["disclosed"] == []
    )
    shown = compute_fedavg_update(public, BATCH, disclose=("batch_size", "local_steps"))
    assert (
        shown.metadata.batch_size == 4
        and shown.metadata.local_steps == 1
        and shown.metadata.learning_rate is None
    )


def test_frozen_embeddings_and_blocks(tiny_models):
    public = tiny_models("gpt2")
    full = compute_update(public, BATCH)
    frozen = simulate_update(public, BATCH, settings=ClientSettings(freeze_embeddings=True))
    assert not {"transformer.wte.weight", "transformer.wpe.weight"} & set(frozen.tensors)
    assert set(full.tensors) - set(frozen.tensors) == {
        "transformer.wte.weight",
        "transformer.wpe.weight",
    }
    name = "transformer.h.0.attn.c_attn.weight"
    torch.testing.assert_close(frozen.tensors[name], full.tensors[name])
    assert frozen.metadata.extra["frozen"] == ["embedding"]
    blocks = compute_fedavg_update(
        public, BATCH, exposure=Exposure(blocks=(0, 1)), freeze_embeddings=True
    )
    assert {n.split(".")[2] for n in blocks.tensors} == {"0", "1"}
