"""attack, sweep and report, run as a user would: files written, resumed, refused, reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
import yaml


def _records(run_dir):
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_attack_then_report(cli, gpt2_spec, tiny_texts, tmp_path):
    run = tmp_path / "run"
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
        "--out",
        run,
    )
    assert code == 0, out
    summary = json.loads((run / "summary.json").read_text())
    for key in (
        "rouge1",
        "rouge2",
        "rougeL",
        "rouge1_stderr",
        "rouge2_stderr",
        "rougeL_stderr",
        "exact_rate",
        "certified_rate",
        "batches",
        "seconds_per_batch",
        "versions",
        "hardware",
    ):
        assert key in summary, key
    assert (summary["rouge1"], summary["exact_rate"], summary["certified_rate"]) == (
        100.0,
        1.0,
        1.0,
    )
    (record,) = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert sorted(r["text"] for r in record["reconstructions"]) == sorted(record["references"])
    assert record["certified"] == [True, True] and record["seconds"]["attack"] > 0

    code, out = cli("report", run)
    assert code == 0, out
    root = ET.fromstring((run / "report.html").read_text().removeprefix("<!DOCTYPE html>\n"))
    cells = ["".join(td.itertext()) for td in root.find(".//table[@class='summary']/tbody/tr")]
    assert cells[0] == "run" and cells[5] == "100.0 (n = 1)"
    assert "100.0" in (run / "results.csv").read_text().splitlines()[1]
    code, out = cli("report", run, "--format", "markdown", "--no-files")
    assert code == 0 and out.startswith("| run | model |") and "| 100.0 (n = 1) |" in out


def test_config_file_overrides_and_refusals(cli, spy_attack, gpt2_spec, tiny_texts, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"model: '{gpt2_spec}'\ndataset: {tiny_texts}\nattack: spy\nbatch-size: 2\nbatches: 2\n"
        f"out: {tmp_path / 'from-file'}\n"
    )
    code, out = cli("attack", "--config", config, "--batches", 1, "-q")
    assert code == 0, out
    written = yaml.safe_load((tmp_path / "from-file" / "config.yaml").read_text())
    assert (written["batch_size"], written["batches"], written["sampler"]) == (2, 1, "random")
    code, out = cli("attack", "--config", config, "--batches", 1, "--seed", 7)
    assert code == 2 and "different config (seed: 101 -> 7)" in out and "--overwrite" in out
    assert "Traceback" not in out
    code, out = cli("attack", "--config", config, "--batches", 1, "--seed", 7, "--overwrite", "-q")
    assert code == 0 and spy_attack.calls == 2
    code, out = cli("attack", "--config", config, "--batch-size", 0)
    assert code == 2 and "batch_size must be at least 1, got 0" in out and "Traceback" not in out
    code, out = cli("attack", "--config", config, "--attack", "dager", "-o", "bogus=1")
    assert code == 2 and "has no option 'bogus'; valid options: " in out
    code, out = cli("attack", "--config", config, "--attack", "dager", "-o", "max_length=0")
    assert code == 2 and "cannot be configured with {'max_length': 0}" in out


def test_sweep_in_shards_then_report(cli, spy_attack, gpt2_spec, tiny_texts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"model: '{gpt2_spec}'\ndataset: {tiny_texts}\nattack: spy\nbatches: 1\n"
        "batch_size: [1, 2, 3]\nseed: 5\n"
    )
    code, out = cli("sweep", grid, "--list", "--shard", "1/2", "--set", "seed=[0]")
    assert code == 0 and "1 of 3 run(s) in shard 1/2" in out and spy_attack.calls == 0
    assert "batch_size-2_seed-0" in out
    code, out = cli("sweep", grid, "--shard", "0/2", "-q", "--set", "seed=[0]")
    assert code == 0, out
    root = (
        tmp_path / "runs" / "grid"
    )  # the default: runs/<grid file name>, in the current directory
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "batch_size-1_seed-0",
        "batch_size-3_seed-0",
    ]
    assert spy_attack.calls == 2
    code, out = cli("sweep", grid, "--shard", "1/2", "-q", "--set", "seed=[0]")
    code, out = cli(
        "sweep", grid, "-q", "--set", "seed=[0]"
    )  # everything done: resumes, attacks nothing
    assert code == 0 and spy_attack.calls == 3
    assert len(json.loads((root / "sweep.json").read_text())["runs"]) == 3
    code, out = cli("report", root, "--format", "csv")
    rows = [line for line in out.splitlines() if line.startswith(("run,model,", "batch_size-"))]
    assert code == 0 and len(rows) == 4 and (root / "report.html").exists()


def test_killed_run_resumes_to_the_same_results(cli, gpt2_spec, tiny_texts, tmp_path):
    args = [
        "attack",
        "--model",
        gpt2_spec,
        "--dataset",
        str(tiny_texts),
        "--batches",
        "2",
        "--seed",
        "3",
        "-q",
    ]
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from gradleak.cli import main; main(sys.argv[1:])",
            *args,
            "--out",
            str(killed),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    records = killed / "records.jsonl"
    deadline = time.monotonic() + 240
    while not (records.exists() and records.read_text().count("\n") >= 1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run ended or stalled before its first record")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # in the middle of the second batch
    process.wait()
    assert records.read_text().count("\n") == 1
    with records.open("a") as handle:
        handle.write('{"batch": 1, "config": "')  # as if the kill had hit the write itself
    code, out = cli(*args, "--out", killed)
    assert code == 0, out
    code, out = cli(*args, "--out", tmp_path / "whole")
    assert code == 0, out
    assert _records(killed) == _records(tmp_path / "whole") and len(_records(killed)) == 2
    timeless = ("updated_at", "seconds_per_batch", "attack_seconds_per_batch")
    summaries = [json.loads((d / "summary.json").read_text()) for d in (killed, tmp_path / "whole")]
    assert [{k: v for k, v in s.items() if k not in timeless} for s in summaries][0] == {
        k: v for k, v in summaries[1].items() if k not in timeless
    }


@pytest.mark.parametrize(
    "command", ["attack", "sweep", "report", "demo", "invert", "simulate", "list"]
)
def test_every_command_has_help(cli, command):
    code, out = cli(command, "--help")
    assert code == 0 and "Usage" in out
