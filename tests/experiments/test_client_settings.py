"""Client settings in runs: config keys, fingerprints, the runner's client, records and sweeps."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from gradleak.client import ClientSettings
from gradleak.data import Batch
from gradleak.experiments import (
    ConfigError,
    RunDirError,
    build_config,
    expand_grid,
    load_config_file,
    read_records,
    read_summary,
    run_experiment,
)
from gradleak.experiments.config import client_keys
from gradleak.experiments.records import dp_entries
from gradleak.experiments.runner import split_batch

GPT2 = "random:gpt2?n_layer=3&n_embd=64&n_head=2&n_positions=64"


def _config(data: Path, client=None, **changes):
    values = {"model": GPT2, "dataset": str(data), "attack": "spy", "batch_size": 2, "batches": 1}
    return build_config({**values, **({"client": client} if client else {}), **changes})


def _tensor_sum(update) -> float:
    return float(sum(t.double().sum() for t in update.tensors.values()))


# --- config -----------------------------------------------------------------------------------


def test_client_keys_come_from_a_mapping_dotted_keys_and_the_command_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "model: m\nbatch_size: 4\nclient:\n  algo: fedavg\n  local-epochs: 2\n"
        "  defence: noise,prune\n  sigma: 1e-5\nclient.lr: 1e-3\n"
    )
    config = build_config(load_config_file(path), {"client": {"mini_batch": 2, "lr": 5e-4}})
    client = config.client
    assert isinstance(client, ClientSettings) and config.client_settings() is client
    assert (client.algo, client.local_epochs, client.mini_batch) == ("fedavg", 2, 2)
    assert client.defence == ("noise", "prune") and client.sigma == 1e-5  # YAML's "1e-5" string
    assert client.lr == 5e-4  # the command line wins over the file's dotted key
    written = config.to_dict()["client"]
    assert list(written) == list(client_keys()) and written["clients"] == 1  # defaults filled
    assert (client.expose, client.max_length, client.noise_seed) == ("all", None, 0)


def test_a_yaml_client_block_round_trips_through_client_settings(tmp_path):
    text = (
        "model: m\nbatch_size: 2\nexpose: blocks=0\nclient:\n  algo: fedavg\n  local_epochs: 2\n"
        "  defence: [noise, quantize]\n  sigma: 1e-5\n  quant: fp16\n  noise_seed: 4\n"
        "  clients: 2\n"
    )
    block = yaml.safe_load(text)["client"]
    settings = ClientSettings.from_dict(block)
    assert (settings.defence, settings.sigma, settings.noise_seed) == (
        ("noise", "quantize"),
        1e-5,
        4,
    )
    assert ClientSettings.from_dict(yaml.safe_load(yaml.safe_dump(settings.to_dict()))) == settings
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    config = build_config(load_config_file(path))
    assert config.client == replace(settings, expose="blocks=0")
    written = yaml.safe_load(config.to_yaml())
    run_level = ("expose", "train_mode", "max_length")
    assert written["client"] == {
        k: v for k, v in config.client.to_dict().items() if k not in run_level
    }
    assert (written["expose"], written["train_mode"], written["max_length"]) == (
        "blocks=0",
        False,
        None,
    )
    assert {k: written["client"][k] for k in block} == {**block, "sigma": 1e-5}
    assert build_config(written).client == config.client


def test_run_level_settings_may_also_be_written_under_client():
    config = build_config({"model": "m", "client": {"expose": "blocks=0", "max_length": 8}})
    assert (config.expose, config.max_length) == ("blocks=0", 8)
    assert config.to_dict()["expose"] == "blocks=0" and "expose" not in config.to_dict()["client"]


def test_a_default_client_keeps_the_fingerprint_of_runs_made_before_it_existed():
    config = build_config({"model": "m"})
    assert config.client == ClientSettings()
    data = {k: v for k, v in config.to_dict().items() if k != "client"}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert config.fingerprint() == hashlib.sha256(text.encode()).hexdigest()[:12] == "e70c86836534"
    explicit = build_config(
        {"model": "m", "client": {"sigma": 1e-4, "defence": "none", "lr": 1e-4}}
    )
    assert explicit == config and explicit.fingerprint() == config.fingerprint()
    noisy = build_config({"model": "m", "client.defence": ["noise"], "client.sigma": 1e-5})
    assert noisy.fingerprint() != config.fingerprint()
    assert config.differences(noisy) == [
        "client.defence: [] -> ['noise']",
        "client.sigma: 0.0001 -> 1e-05",
    ]


def test_default_run_dirs_name_the_client():
    from gradleak.experiments import default_run_dir

    plain = build_config({"model": "m", "batch_size": 2})
    assert default_run_dir(plain).name == f"dager-demo-m-b2-{plain.fingerprint()}"
    client = {"algo": "fedavg", "defence": "noise,prune", "clients": 2}
    defended = build_config({"model": "m", "batch_size": 2, "client": client})
    assert (
        default_run_dir(defended).name
        == f"dager-demo-m-b2-fedavg-noise+prune-k2-{defended.fingerprint()}"
    )


def test_yaml_round_trip_with_a_client(tmp_path):
    config = build_config(
        {
            "model": "m",
            "batch_size": 3,
            "client": {
                "defence": ["dp-sgd", "quantize"],
                "clients": 3,
                "disclose": "none",
                "dp_delta": "1e-6",
            },
        }
    )
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    again = build_config(load_config_file(path))
    assert again == config and again.fingerprint() == config.fingerprint()
    assert again.client.disclose == () and again.client.dp_delta == 1e-6 and again.clients == 3


def test_bad_client_settings_are_all_named_before_anything_runs():
    with pytest.raises(
        ConfigError, match=r"sigma: client settings go under client:.*client\.sigma"
    ):
        build_config({"model": "m", "sigma": 1e-5})
    with pytest.raises(ConfigError, match="unknown key.*attack\\.x"):
        build_config({"model": "m", "attack.x": 1})
    with pytest.raises(ConfigError) as err:
        build_config({"model": "m", "client": {"local_epochs": 2, "bogus": 1}})
    text = str(err.value)
    assert "unknown key(s) bogus; the valid keys are algo, local_epochs," in text
    with pytest.raises(ConfigError, match="set algo=fedavg"):
        build_config({"model": "m", "client": {"local_epochs": 2}})
    with pytest.raises(ConfigError) as err:
        build_config(
            {"model": "m", "client": {"defence": "noise,shred", "sigma": -1}, "batch_size": 0}
        )
    assert "batch_size must be at least 1" in str(err.value)  # reported first, client checks wait
    with pytest.raises(ConfigError) as err:
        build_config({"model": "m", "client": {"defence": "noise,shred", "sigma": -1}})
    assert "sigma must be positive" in str(err.value) and "defence shred unknown" in str(err.value)
    with pytest.raises(ConfigError, match="client.clients 3 exceeds batch_size 2"):
        build_config({"model": "m", "batch_size": 2, "client": {"clients": 3}})
    with pytest.raises(ConfigError, match="client must be a mapping"):
        build_config({"model": "m", "client": "noise"})
    with pytest.raises(ConfigError, match="unknown role.*zz"):
        build_config({"model": "m", "expose": "roles=zz"})  # now checked before the run
    with pytest.raises(ConfigError, match="client settings"):
        build_config({"model": "m", "expose": "blocks=x"})


# --- the runner's client ----------------------------------------------------------------------


def test_defended_updates_are_recorded_and_a_resumed_run_redraws_the_same_noise(
    spy_attack, tiny_texts, tmp_path
):
    config = _config(tiny_texts, {"defence": "noise", "sigma": 1e-3, "noise_seed": 7}, batches=3)
    run_experiment(config, tmp_path / "full")
    full = [_tensor_sum(args[1]) for args, _ in spy_attack.calls]
    assert len(set(full)) == 3
    update = spy_attack.calls[0][0][1]
    assert update.metadata.defence == {"name": "noise", "sigma": 1e-3}  # the seed stays secret

    def crash_at_third_batch(event):
        if event.kind == "batch_started" and event.done == 2:
            raise KeyboardInterrupt

    spy_attack.calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "cut", on_event=crash_at_third_batch)
    run_experiment(config, tmp_path / "cut")
    assert [_tensor_sum(args[1]) for args, _ in spy_attack.calls] == full

    records = read_records(tmp_path / "full")
    assert [r["update"]["noise_seeds"] for r in records] == [[7], [8], [9]]  # one draw per batch
    assert records[0]["client"] == config.client.to_dict()
    assert records[0]["client"]["defence"] == ["noise"] and records[0]["client"]["noise_seed"] == 7
    assert records[0]["update"]["defence"] == {"name": "noise", "sigma": 1e-3}
    assert records[0]["update"]["kind"] == "gradient" and records[0]["update"]["dp_epsilon"] is None
    summary = read_summary(tmp_path / "full")
    assert summary["config"]["client"]["sigma"] == 1e-3 and summary["dp_epsilon"] is None


def test_a_changed_defence_is_refused_in_an_existing_run_dir(spy_attack, tiny_texts, tmp_path):
    run_experiment(_config(tiny_texts, {"defence": "noise"}), tmp_path)
    with pytest.raises(RunDirError, match=r"client\.defence: \['noise'\] -> \['prune'\]"):
        run_experiment(_config(tiny_texts, {"defence": "prune"}), tmp_path)
    with pytest.raises(RunDirError, match=r"client\.sigma: 0\.0001 -> 1e-05"):
        run_experiment(_config(tiny_texts, {"defence": "noise", "sigma": 1e-5}), tmp_path)
    assert run_experiment(_config(tiny_texts, {"defence": "noise"}), tmp_path)["complete"]


def test_fedavg_updates_reach_the_attack(spy_attack, tiny_texts, tmp_path):
    client = {"algo": "fedavg", "local_epochs": 2, "mini_batch": 1, "lr": 1e-3}
    run_experiment(_config(tiny_texts, client), tmp_path)
    ((args, _),) = spy_attack.calls
    meta = args[1].metadata
    assert (meta.kind, meta.local_steps, meta.learning_rate, meta.batch_size) == (
        "weight_delta",
        4,
        1e-3,
        None,
    )
    (record,) = read_records(tmp_path)
    assert record["update"]["kind"] == "weight_delta" and record["update"]["local_steps"] == 4


def test_secure_aggregation_splits_the_batch_and_the_server_sees_the_sum(
    spy_attack, tiny_texts, tmp_path
):
    run_experiment(_config(tiny_texts, {"clients": 3}, batch_size=5), tmp_path)
    ((args, _),) = spy_attack.calls
    update = args[1]
    assert update.metadata.defence == {"name": "secure-aggregation", "clients": 3}
    (record,) = read_records(tmp_path)
    assert len(record["references"]) == 5 and record["update"]["noise_seeds"] == [0, 1, 2]
    # The sum of the parts' gradients, as three clients would send them.
    from gradleak.client import prepare_model, simulate_update
    from gradleak.models import load_model

    config = _config(tiny_texts, {"clients": 3}, batch_size=5)
    public = prepare_model(load_model(GPT2, seed=config.seed), config.client_settings())
    batch = Batch(record["references"], labels=record["labels"])
    parts = [
        simulate_update(public, part, settings=config.client_settings())
        for part in split_batch(batch, 3)
    ]
    name = next(iter(update.tensors))
    torch.testing.assert_close(update.tensors[name], sum(p.tensors[name] for p in parts))


def test_split_batch_keeps_order_labels_and_indices():
    batch = Batch(texts=list("abcdefg"), labels=[0, 1] * 3 + [0], source="s", indices=range(10, 17))
    parts = split_batch(batch, 3)
    assert [p.texts for p in parts] == [tuple("abc"), tuple("de"), tuple("fg")]
    assert [p.indices for p in parts] == [(10, 11, 12), (13, 14), (15, 16)]
    assert sum((p.labels for p in parts), ()) == batch.labels and {p.source for p in parts} == {"s"}
    assert split_batch(batch, 1) == [batch]


def test_dp_sgd_epsilon_reaches_records_and_summary(spy_attack, tiny_texts, tmp_path):
    pytest.importorskip("opacus")
    config = _config(tiny_texts, {"defence": "dp-sgd", "noise_multiplier": 1.0}, batch_size=1)
    summary = run_experiment(config, tmp_path)
    (record,) = read_records(tmp_path)
    assert record["update"]["dp_epsilon"] > 0 and record["update"]["dp_delta"] == 1e-5
    assert summary["dp_epsilon"] == record["update"]["dp_epsilon"] and summary["dp_delta"] == 1e-5


def test_dp_entries_are_found_in_chains_and_aggregates():
    dp = {"name": "dp-sgd", "epsilon": 3.0}
    chain = {"name": "chain", "steps": [dp, {"name": "noise"}]}
    assert dp_entries(None) == [] and dp_entries({"name": "noise"}) == []
    assert dp_entries(chain) == [dp]
    assert dp_entries({"name": "secure-aggregation", "client_defence": chain}) == [dp]
    assert dp_entries({"name": "secure-aggregation", "client_defence": [dp, chain]}) == [dp, dp]


def test_with_lora_the_attack_gets_the_wrapped_model(spy_attack, tiny_texts, tmp_path):
    pytest.importorskip("peft")
    from gradleak.client.lora import is_lora

    llama = (
        "random:llama?num_hidden_layers=2&hidden_size=32&intermediate_size=64"
        "&num_attention_heads=4&num_key_value_heads=2"
    )
    config = _config(
        tiny_texts, {"lora_rank": 2, "lora_warmup_steps": 1}, model=llama, batch_size=1
    )
    run_experiment(config, tmp_path)
    ((args, _),) = spy_attack.calls
    public, update = args
    assert is_lora(public) and update.metadata.exposure == "lora"
    assert set(update.tensors) <= {name for name, _ in public.model.named_parameters()}
    assert all(".lora_" in name for name in update.tensors)


# --- sweeps -----------------------------------------------------------------------------------


def test_a_grid_sweeps_one_client_setting(tmp_path):
    grid = {
        "model": "m",
        "client": {"defence": ["noise", "quantize"]},
        "client.sigma": ["1e-5", 5e-5],
    }
    runs = expand_grid(grid, root=tmp_path)
    assert [r.name for r in runs] == ["client.sigma-1e-5", "client.sigma-5e-05"]
    assert [r.config.client.sigma for r in runs] == [1e-5, 5e-5]
    assert all(r.config.client.defence == ("noise", "quantize") for r in runs)  # not an axis
    chains = expand_grid(
        {"model": "m", "client.defence": ["none", "noise,prune", ["dp-sgd"]]}, root=tmp_path
    )
    assert [r.config.client.defence for r in chains] == [(), ("noise", "prune"), ("dp-sgd",)]
    with pytest.raises(ConfigError, match="client.sigma-0.*sigma must be positive"):
        expand_grid({"model": "m", "client.sigma": [1e-5, 0]}, root=tmp_path)
