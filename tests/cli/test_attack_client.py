"""``gradleak attack`` and ``sweep`` with client options: defences, FedAvg, config files."""

from __future__ import annotations

import json

import yaml


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


def test_attack_with_a_noise_defence_end_to_end(cli, gpt2_spec, tiny_texts, tmp_path):
    run = tmp_path / "run"
    args = [
        "attack",
        "--model",
        gpt2_spec,
        "--dataset",
        tiny_texts,
        "--batch-size",
        2,
        "--batches",
        1,
        "--out",
        run,
        "-q",
    ]
    # Noise far below the gradients' scale: DAGER's exact search (noise=off; the default treats a
    # noised update with the noise search) still recovers the batch exactly.
    code, out = cli(
        *args, "--defence", "noise", "--sigma", 1e-9, "--noise-seed", 3, "-o", "noise=off"
    )
    assert code == 0, out
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["client"]["defence"] == ["noise"] and written["client"]["sigma"] == 1e-9
    (record,) = _records(run)
    assert record["update"]["defence"] == {"name": "noise", "sigma": 1e-9}
    assert record["update"]["noise_seeds"] == [3] and record["metrics"]["exact_rate"] == 1.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["client"]["defence"] == ["noise"] and summary["dp_epsilon"] is None
    # Another defence in the same directory is refused, naming the change.
    code, out = cli(*args, "--defence", "noise", "--sigma", 1e-3)
    assert code == 2 and "client.sigma: 1e-09 -> 0.001" in out and "Traceback" not in out
    code, out = cli(*args)
    assert code == 2 and "client.defence: ['noise'] -> []" in out


def test_attack_with_fedavg_end_to_end(cli, gpt2_spec, tiny_texts, tmp_path):
    run = tmp_path / "run"
    # float64: in float32, W_final - W_start at lr 1e-4 rounds away the span DAGER needs.
    code, out = cli(
        "attack",
        "--model",
        gpt2_spec,
        "--dataset",
        tiny_texts,
        "--batch-size",
        2,
        "--batches",
        1,
        "--algo",
        "fedavg",
        "--local-epochs",
        2,
        "--mini-batch",
        1,
        "--lr",
        1e-4,
        "--dtype",
        "float64",
        "--out",
        run,
        "-q",
    )
    assert code == 0, out
    (record,) = _records(run)
    assert record["update"]["kind"] == "weight_delta" and record["update"]["local_steps"] == 4
    assert record["client"]["algo"] == "fedavg" and record["metrics"]["exact_rate"] == 1.0


def test_client_keys_in_a_config_file_and_command_line_overrides(
    cli, spy_attack, gpt2_spec, tiny_texts, tmp_path
):
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"model: '{gpt2_spec}'\ndataset: {tiny_texts}\nattack: spy\nbatch_size: 2\n"
        f"out: {tmp_path / 'run'}\nclient:\n  defence: [noise, quantize]\n  sigma: 1e-5\n"
        "  quant: fp16\n"
    )
    code, out = cli("attack", "--config", config, "--sigma", 2e-5, "--clients", 2, "-q")
    assert code == 0, out
    client = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["client"]
    assert (client["defence"], client["sigma"], client["quant"], client["clients"]) == (
        ["noise", "quantize"],
        2e-5,
        "fp16",
        2,
    )
    (record,) = _records(tmp_path / "run")
    assert record["update"]["defence"]["name"] == "secure-aggregation" and spy_attack.calls == 1
    # The written config.yaml reruns the same run: nothing left to do.
    code, out = cli(
        "attack", "--config", tmp_path / "run" / "config.yaml", "--out", tmp_path / "run", "-q"
    )
    assert code == 0 and spy_attack.calls == 1


def test_bad_client_options_are_one_message(cli, gpt2_spec, tmp_path):
    base = ("attack", "--model", gpt2_spec, "--out", tmp_path / "run")
    code, out = cli(*base, "--local-epochs", 2)
    assert code == 2 and "algo=fedavg" in out and "Traceback" not in out
    code, out = cli(*base, "--defence", "shred", "--clients", 2)
    assert code == 2 and "defence shred unknown" in out and "exceeds batch_size 1" in out
    assert not (tmp_path / "run").exists()  # refused before anything is written
    code, out = cli(*base, "--defence", "dp-sgd", "--sigma", 1e-5)
    assert code == 2 and "DP-SGD ignores it" in out and "--noise-multiplier" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: '{gpt2_spec}'\nsigma: 1e-5\n")
    code, out = cli("attack", "--config", bad)
    assert code == 2 and "client.sigma" in out


def test_sweep_over_a_client_setting(cli, spy_attack, gpt2_spec, tiny_texts, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"out: {tmp_path / 'sweep'}\nmodel: '{gpt2_spec}'\ndataset: {tiny_texts}\nattack: spy\n"
        "client: {defence: noise}\nclient.sigma: [1e-5, 5e-5]\n"
    )
    code, out = cli("sweep", grid, "--set", "client.noise_seed=4", "-q")
    assert code == 0, out
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == ["client.sigma-1e-5", "client.sigma-5e-5"] and spy_attack.calls == 2
    client = yaml.safe_load((tmp_path / "sweep" / runs[1] / "config.yaml").read_text())["client"]
    assert (client["defence"], client["sigma"], client["noise_seed"]) == (["noise"], 5e-5, 4)
    manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["config"]["client"]["sigma"] for r in manifest["runs"]] == [1e-5, 5e-5]
