"""The demo, simulate, invert and list commands, run as a user would."""

from __future__ import annotations

import json

import pytest

from gradleak.cli import main

GPT2 = "random:gpt2?n_layer=3&n_embd=128&n_head=4&n_positions=64"


def run(capsys, *args: str) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_demo_recovers_the_messages(capsys):
    code, out = run(capsys, "demo", "--model", GPT2, "--batch-size", "2")
    assert code == 0, out
    assert "2 sequence(s) recovered" in out and "100.0" in out


def test_simulate_then_invert(capsys, tmp_path):
    update = tmp_path / "update.safetensors"
    truth = tmp_path / "truth.json"
    code, out = run(
        capsys, "simulate", str(update), "--model", GPT2, "--batch-size", "2", "--truth", str(truth)
    )
    assert code == 0, out
    code, out = run(capsys, "invert", str(update), "--out", str(tmp_path / "inv"))
    assert code == 0, out
    recovered = json.loads((tmp_path / "inv" / "reconstruction.json").read_text())
    texts = json.loads(truth.read_text())["texts"]
    assert sorted(s["text"] for s in recovered["sequences"]) == sorted(texts)
    assert all(s["certified"] for s in recovered["sequences"])


def test_bad_input_is_one_line_not_a_traceback(capsys, tmp_path):
    code, out = run(capsys, "invert", str(tmp_path / "missing.safetensors"))
    assert code == 2 and "error: no update file" in out and "Traceback" not in out
    code, out = run(capsys, "demo", "--model", "no-such/model")
    assert code == 2 and "could not find model" in out


@pytest.mark.parametrize("what", ["models", "attacks", "families", "datasets"])
def test_list(capsys, what):
    code, out = run(capsys, "list", what)
    assert code == 0 and out.strip()


def test_help_works(capsys):
    code, out = run(capsys, "--help")
    assert code == 0 and "demo" in out and "invert" in out


def test_usage_errors_are_short(capsys):
    code, out = run(capsys, "demo", "--bogus")
    assert code == 2 and "No such option" in out and "Traceback" not in out
