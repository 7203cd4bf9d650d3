"""RunConfig: defaults, YAML file values overridden by the command line, validation,
fingerprints."""

from __future__ import annotations

import pytest

from gradleak.experiments import ConfigError, RunConfig, build_config, load_config_file
from gradleak.experiments.config import parse_option_value, parse_options
from gradleak.experiments.naming import default_run_dir


def test_command_line_overrides_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "model: smollm2-135m\nbatch-size: 4\nbatches: 10\nattack_options: "
        "{max_frontier: 64, seed: 1}\n"
    )
    config = build_config(
        load_config_file(path), {"batch_size": 16, "seed": None, "attack_options": {"seed": 2}}
    )
    assert (config.model, config.batch_size, config.batches, config.seed) == (
        "smollm2-135m",
        16,
        10,
        101,
    )
    assert config.attack_options == {"max_frontier": 64, "seed": 2}


def test_unknown_keys_and_bad_values_are_all_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*batchsize.*known keys: .*batch_size"):
        build_config({"model": "m", "batchsize": 4})
    with pytest.raises(ConfigError) as err:
        build_config({"model": "m", "batch_size": 0, "batches": "ten", "task": "mlm"})
    assert "batch_size must be at least 1" in str(
        err.value
    ) and "batches must be an integer" in str(err.value)
    with pytest.raises(ConfigError, match="task 'mlm' is not one of seq_class, next_token"):
        build_config({"model": "m", "task": "mlm"})
    with pytest.raises(ConfigError, match="No model given: pass --model"):
        build_config({}, {"dataset": "demo"})


def test_resolution_fingerprint_and_yaml_round_trip(tmp_path):
    cola = build_config({"model": "m", "dataset": "cola"}).resolved()
    demo = build_config({"model": "m", "dataset": "demo"}).resolved()
    assert (cola.sampler, demo.sampler, demo.device) == ("dager", "random", "cpu")
    path = tmp_path / "config.yaml"
    path.write_text(cola.to_yaml())
    again = build_config(load_config_file(path))
    assert again == cola and again.fingerprint() == cola.fingerprint()
    assert cola.fingerprint() != demo.fingerprint()
    assert cola.differences(demo) == ["dataset: 'cola' -> 'demo'", "sampler: 'dager' -> 'random'"]
    assert default_run_dir(cola).name == f"dager-cola-m-b1-{cola.fingerprint()}"


def test_option_values_parse_like_yaml():
    assert parse_option_value("1e-5") == 1e-5 and parse_option_value("512") == 512
    assert parse_option_value("null") is None and parse_option_value("abc") == "abc"
    assert parse_options(["tau1=1e-5", "rank=None"]) == {"tau1": 1e-5, "rank": "None"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_options(["tau1"])


def test_config_fields_have_help():
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(RunConfig))
