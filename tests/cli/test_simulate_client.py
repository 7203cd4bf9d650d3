"""``gradleak simulate`` with client options: FedAvg, defences, secure aggregation, LoRA."""

from __future__ import annotations

import json

import pytest
from helpers import TINY

from gradleak.update import load_update


def test_fedavg_with_chained_defences(cli, tmp_path, tiny_texts):
    out = tmp_path / "u.safetensors"
    code, text = cli(
        "simulate",
        out,
        "--model",
        TINY["gpt2"],
        "--dataset",
        tiny_texts,
        "--batch-size",
        2,
        "--algo",
        "fedavg",
        "--local-epochs",
        2,
        "--mini-batch",
        1,
        "--lr",
        0.01,
        "--defence",
        "noise,prune",
        "--defence",
        "quantize",
        "--sigma",
        1e-5,
        "--disclose",
        "none",
    )
    assert code == 0, text
    assert "weight_delta" in text and "noise + prune + quantize" in text
    meta = load_update(out).metadata
    assert meta.kind == "weight_delta" and meta.learning_rate is None and meta.local_steps is None
    assert [s["name"] for s in meta.defence["steps"]] == ["noise", "prune", "quantize"]


def test_dp_sgd_reports_epsilon_and_secure_aggregation_sums_clients(cli, tmp_path, tiny_texts):
    pytest.importorskip("opacus")
    out, truth = tmp_path / "u.safetensors", tmp_path / "truth.json"
    code, text = cli(
        "simulate",
        out,
        "--model",
        TINY["gpt2"],
        "--dataset",
        tiny_texts,
        "--batch-size",
        1,
        "--defence",
        "dp-sgd",
        "--noise-multiplier",
        1.0,
        "--clients",
        2,
        "--truth",
        truth,
    )
    assert code == 0, text
    assert "epsilon" in text
    meta = load_update(out).metadata
    assert meta.defence["name"] == "secure-aggregation" and meta.defence["clients"] == 2
    assert meta.defence["client_defence"]["name"] == "dp-sgd"
    assert len(json.loads(truth.read_text())["texts"]) == 2


def test_lora_update(cli, tmp_path, tiny_texts):
    pytest.importorskip("peft")
    out = tmp_path / "u.safetensors"
    code, text = cli(
        "simulate",
        out,
        "--model",
        TINY["llama"],
        "--dataset",
        tiny_texts,
        "--batch-size",
        2,
        "--lora-rank",
        2,
        "--lora-targets",
        "q",
        "--lora-warmup-steps",
        1,
    )
    assert code == 0, text
    update = load_update(out)
    assert update.metadata.exposure == "lora" and all(".lora_" in n for n in update.tensors)
    assert update.metadata.extra["lora"]["targets"] == ["q"]


def test_bad_client_options_are_one_line(cli, tmp_path):
    code, text = cli("simulate", tmp_path / "u", "--model", TINY["gpt2"], "--local-epochs", 3)
    assert (
        code == 2
        and "Invalid client settings" in text
        and "algo=fedavg" in text
        and "Traceback" not in text
    )
    code, text = cli("list", "defences")
    assert code == 0 and "dp-sgd" in text and "quantize" in text
