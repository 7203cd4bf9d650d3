"""ClientSettings validate themselves; simulate_update with defaults is FedSGD."""

from __future__ import annotations

from dataclasses import fields

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
        ({"defence": ("dp-sgd",), "sigma": 1e-5}, "noise_multiplier (--noise-multiplier)"),
        ({"clients": 0}, "clients must be at least 1"),
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


def test_sigma_goes_with_the_noise_defence():
    chained = ClientSettings(defence=("dp-sgd", "noise"), sigma=1e-5, noise_multiplier=0.5)
    assert chained.sigma == 1e-5 and ClientSettings(defence="dp-sgd").sigma == 1e-4


def test_an_unknown_key_is_one_error_naming_the_valid_keys():
    with pytest.raises(ClientSettingsError) as info:
        ClientSettings.from_dict({"sigmaa": 1e-5, "algo": "fedavg"})
    text = str(info.value)
    assert "unknown key(s) sigmaa; the valid keys are algo, local_epochs" in text
    assert "\n" not in text and all(f.name in text for f in fields(ClientSettings))


def test_from_dict_reads_field_names_as_yaml_and_the_command_line_write_them():
    settings = ClientSettings.from_dict(
        {
            "local-epochs": 2,
            "algo": "fedavg",
            "defence": ["noise,prune"],
            "lr": 1,
            "dp_delta": "1e-6",
        }
    )
    assert (settings.local_epochs, settings.defence, settings.lr) == (2, ("noise", "prune"), 1.0)
    assert settings.dp_delta == 1e-6 and ClientSettings.from_dict(settings.to_dict()) == settings
    assert ClientSettings(disclose="none", lora_targets="none").disclose == ()
