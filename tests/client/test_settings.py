"""ClientSettings validate themselves; simulate_update with defaults is FedSGD."""

from __future__ import annotations

import pytest
import torch

from gradleak.client import ClientSettings, ClientSettingsError, compute_update, simulate_update
from gradleak.data import Batch

BATCH = Batch(
    texts=("Call Maria at 555-0147 before noon.", "The rent is due on Friday."), labels=(1, 0)
)


def test_defaults_are_fedsgd(tiny_models):
    public = tiny_models("bert")
    update, reference = simulate_update(public, BATCH), compute_update(public, BATCH)
    assert update.metadata.kind == "gradient" and set(update.tensors) == set(reference.tensors)
    for n, t in reference.tensors.items():
        torch.testing.assert_close(update.tensors[n], t)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"algo": "fedprox"}, "algo 'fedprox' is not one of fedsgd, fedavg"),
        ({"local_epochs": 3}, "apply to algo fedavg only"),
        ({"algo": "fedavg", "lr": 0}, "lr must be positive"),
        ({"defence": ("noise", "dp-sgd")}, "must come first"),
        ({"defence": ("blur",)}, "defence blur unknown"),
        ({"disclose": ("labels",)}, "disclose labels unknown"),
        ({"prune_ratio": 1.0}, "prune_ratio must lie in [0, 1)"),
        ({"lora_targets": ("q",)}, "need lora_rank or lora_adapter"),
        ({"lora_rank": 4, "expose": "roles=q"}, "not expose roles="),
        ({"lora_rank": 4, "lora_targets": ("norm",)}, "not linear roles"),
        ({"lora_adapter": "x", "lora_rank": 4}, "brings its own rank"),
        ({"expose": "layers=1"}, "cannot read exposure"),
        ({"mini_batch": "4"}, "mini_batch must be an integer"),
    ],
)
def test_bad_settings_are_one_line_errors(options, message):
    with pytest.raises(ClientSettingsError) as info:
        ClientSettings(**options)
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("Invalid client settings: ")


def test_all_problems_reported_together_and_strings_split():
    with pytest.raises(ClientSettingsError, match="lr must be positive.*sigma must be positive"):
        ClientSettings(algo="fedavg", lr=-1.0, sigma=0.0)
    settings = ClientSettings(defence="noise,prune", disclose="learning_rate")
    assert settings.defence == ("noise", "prune") and settings.disclose == ("learning_rate",)
    assert settings.to_dict()["defence"] == ["noise", "prune"]
