"""DAGER on FedAvg weight deltas: one step is FedSGD; several steps are recovered but never
certified."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.dager import Dager
from gradleak.client import ClientSettings, simulate_update
from gradleak.data import Batch
from gradleak.models import load_model

GPT2 = "random:gpt2?n_layer=3&n_embd=128&n_head=4&n_positions=64"
TEXTS = ("Call Maria at 555-0147 before noon.", "The rent is due on Friday.")


@pytest.fixture(scope="module")
def gpt2_double():
    return load_model(GPT2, dtype=torch.float64)


def recovered(public, update):
    result = Dager().reconstruct(public, update)
    truth = sorted(tuple(public.tokenizer(t)["input_ids"]) for t in TEXTS)
    return result, sorted(s.token_ids for s in result.sequences) == truth


def test_one_local_step_is_certified(gpt2_double):
    settings = ClientSettings(algo="fedavg", local_epochs=1, lr=1e-4)
    result, exact = recovered(
        gpt2_double,
        simulate_update(gpt2_double, Batch(texts=TEXTS, labels=(0, 1)), settings=settings),
    )
    assert exact and result.certified


def test_several_local_steps_are_recovered_as_best_effort(gpt2_double):
    settings = ClientSettings(algo="fedavg", local_epochs=2, mini_batch=1, lr=1e-4)
    update = simulate_update(gpt2_double, Batch(texts=TEXTS, labels=(0, 1)), settings=settings)
    assert update.metadata.local_steps == 4
    result, exact = recovered(gpt2_double, update)
    assert exact
    assert not result.certified and "weight delta over 4 local steps" in result.reason


def test_a_multi_step_delta_is_never_counted_from_its_rank(gpt2_double):
    from gradleak.attacks.dager.accounting import batch_size

    batch = Batch(texts=TEXTS, labels=(0, 1))
    several = ClientSettings(algo="fedavg", local_epochs=2, mini_batch=1, lr=1e-4)
    update = simulate_update(gpt2_double, batch, settings=several)
    assert batch_size(gpt2_double, update, update.gradients()) is None
    one = simulate_update(gpt2_double, batch)
    assert batch_size(gpt2_double, one, one.gradients()).value == 2
