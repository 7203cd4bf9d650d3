"""Edges a new user hits: Ctrl-C, typos, unwritable outputs, unknown attack options."""

from __future__ import annotations

import errno
import json
import tempfile

import pytest

from gradleak.experiments import runner
from gradleak.experiments.rundir import lock_run_dir

RESUME = "interrupted; rerun the same command to resume"


@pytest.fixture
def run_cli(cli):
    """Returns ``cli`` with its output on one line, as rich wraps it to the terminal's width."""

    def one_line(*args) -> tuple[int, str]:
        code, out = cli(*args)
        return code, " ".join(out.split())

    return one_line


def _interrupt_second_batch(monkeypatch) -> None:
    """Makes the run's second batch raise KeyboardInterrupt, as Ctrl-C would."""
    real = runner.run_batch

    def run_batch(index, *args, **kwargs):
        if index == 1:
            raise KeyboardInterrupt
        return real(index, *args, **kwargs)

    monkeypatch.setattr(runner, "run_batch", run_batch)


def _attack(gpt2_spec, tiny_texts, out, *extra):
    return (
        "attack",
        "--model",
        gpt2_spec,
        "--dataset",
        tiny_texts,
        "--attack",
        "spy",
        "--batches",
        2,
        "--out",
        out,
        "-q",
        *extra,
    )


def test_ctrl_c_during_attack_exits_130_and_the_rerun_resumes(
    run_cli, spy_attack, gpt2_spec, tiny_texts, tmp_path, monkeypatch
):
    out_dir = tmp_path / "run"
    _interrupt_second_batch(monkeypatch)
    code, out = run_cli(*_attack(gpt2_spec, tiny_texts, out_dir))
    assert code == 130 and out.strip() == RESUME
    lines = (out_dir / "records.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(line)["batch"] for line in lines[:-1]] == [0]
    with lock_run_dir(out_dir):  # the lock was released
        pass
    monkeypatch.undo()
    code, out = run_cli(*_attack(gpt2_spec, tiny_texts, out_dir))
    assert code == 0, out
    assert len((out_dir / "records.jsonl").read_text().splitlines()) == 2


def test_ctrl_c_during_sweep_exits_130(
    run_cli, spy_attack, gpt2_spec, tiny_texts, tmp_path, monkeypatch
):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"model: '{gpt2_spec}'\ndataset: {tiny_texts}\nattack: spy\nbatches: 2\nseed: [1, 2]\n"
    )
    _interrupt_second_batch(monkeypatch)
    code, out = run_cli("sweep", grid, "--out", tmp_path / "sweep", "-q")
    assert code == 130 and out.strip() == RESUME


def test_ctrl_c_during_invert_and_demo_exits_130(run_cli, gpt2_spec, tmp_path, monkeypatch):
    from gradleak.attacks.dager import Dager

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Dager, "reconstruct", interrupted)
    update = tmp_path / "update.safetensors"
    code, out = run_cli("demo", "--model", gpt2_spec, "--batch-size", 1, "--save", update)
    assert code == 130 and out.strip().endswith("interrupted") and "resume" not in out
    code, out = run_cli("invert", update, "--out", tmp_path / "inverted")
    assert code == 130 and out.strip() == "interrupted"
    assert not (tmp_path / "inverted").exists()


def test_ctrl_c_during_simulate_exits_130_and_writes_nothing(
    run_cli, gpt2_spec, tmp_path, monkeypatch
):
    import gradleak.client

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gradleak.client, "simulate_update", interrupted)
    code, out = run_cli("simulate", tmp_path / "u.safetensors", "--model", gpt2_spec)
    assert code == 130 and out.strip() == "interrupted"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("typo", "message"),
    [
        (("--model", "randomx:gpt2"), "could not find model 'randomx:gpt2'"),
        (("--dataset", "nosuch"), "Dataset 'nosuch' is not available"),
        (("--text-field", "body"), "body"),
        (("--batch-size", 50), "ask for a smaller batch"),
        (("--expose", "blocks=99"), "block(s) [99] out of range"),
    ],
)
def test_a_typo_writes_nothing_and_the_corrected_command_runs(
    run_cli, spy_attack, gpt2_spec, tiny_texts, tmp_path, typo, message
):
    out_dir = tmp_path / "run"
    base = ["attack", "--model", gpt2_spec, "--dataset", tiny_texts, "--attack", "spy"]
    args = dict(zip(base[1::2], base[2::2], strict=True))
    args.update(dict(zip(typo[::2], typo[1::2], strict=True)))
    code, out = run_cli("attack", *[x for kv in args.items() for x in kv], "--out", out_dir, "-q")
    assert code == 2 and message in out and "Traceback" not in out, out
    assert not out_dir.exists()
    code, out = run_cli(*base, "--out", out_dir, "-q")
    assert code == 0, out


def test_unknown_attack_options_list_the_valid_ones(run_cli, gpt2_spec, tmp_path):
    code, out = run_cli("attack", "--model", gpt2_spec, "-o", "foo=1", "--out", tmp_path / "run")
    assert code == 2 and "attack 'dager' has no option 'foo'; valid options: " in out
    assert "max_frontier" in out and "DagerConfig" not in out


def test_an_output_under_a_file_is_one_sentence_before_any_work(
    run_cli, spy_attack, gpt2_spec, tiny_texts, tmp_path
):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    code, out = run_cli(*_attack(gpt2_spec, tiny_texts, blocker / "run"))
    assert code == 2 and "is a file, not a folder" in out and "Traceback" not in out
    assert spy_attack.calls == 0
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"model: '{gpt2_spec}'\ndataset: {tiny_texts}\nattack: spy\n")
    code, out = run_cli("sweep", grid, "--out", blocker / "sweep")
    assert code == 2 and "is a file, not a folder" in out and "Traceback" not in out
    code, out = run_cli("simulate", blocker / "u.safetensors", "--model", gpt2_spec)
    assert code == 2 and "is a file, not a folder" in out and "Traceback" not in out
    code, out = run_cli(
        "simulate",
        tmp_path / "u.safetensors",
        "--model",
        gpt2_spec,
        "--truth",
        blocker / "truth.json",
    )
    assert (
        code == 2 and "is a file, not a folder" in out and not (tmp_path / "u.safetensors").exists()
    )


def test_a_read_only_output_is_one_sentence_before_any_work(
    run_cli, spy_attack, gpt2_spec, tiny_texts, tmp_path, monkeypatch
):
    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    code, out = run_cli(*_attack(gpt2_spec, tiny_texts, tmp_path / "run"))
    assert code == 2 and "(permission denied); choose another --out directory" in out
    assert spy_attack.calls == 0 and not (tmp_path / "run").exists()


def test_invert_names_the_model_asked_for_and_the_one_the_update_needs(
    run_cli, gpt2_spec, tmp_path
):
    update = tmp_path / "u.safetensors"
    code, out = run_cli("simulate", update, "--model", gpt2_spec, "--batch-size", 1)
    assert code == 0, out
    other = "random:gpt2?n_layer=2&n_embd=32&n_head=2&n_positions=64"
    code, out = run_cli("invert", update, "--model", other)
    assert code == 2 and f"does not fit model '{other}'" in out
    assert f"it was made for '{gpt2_spec}': load that model (leave out --model)" in out


def test_a_renamed_pickle_is_not_called_truncated(run_cli, tmp_path):
    import pickle

    update = tmp_path / "u.safetensors"
    update.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    code, out = run_cli("invert", update)
    assert code == 2 and "is not a safetensors file but a Python pickle" in out
    assert "never unpickles" in out and "truncated" not in out
    update.write_bytes(b"not an update at all")
    code, out = run_cli("invert", update)
    assert code == 2 and "is not a safetensors file" in out and "truncated" not in out
