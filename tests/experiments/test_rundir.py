"""Run directories: fresh, resumed, refused when the config changed, repaired after a crash
mid-write."""

from __future__ import annotations

import json

import pytest

from gradleak.experiments import RunDirError, build_config, read_records
from gradleak.experiments.rundir import RECORDS_FILE, append_record, open_run_dir


def _config(**changes):
    return build_config({"model": "m", "batches": 3, **changes}).resolved()


def _record(config, batch):
    return {"batch": batch, "config": config.fingerprint(), "text": "é ok"}


def test_fresh_then_resumed(tmp_path):
    config = _config()
    assert open_run_dir(tmp_path / "run", config) == []
    assert "batches: 3" in (tmp_path / "run" / "config.yaml").read_text()
    append_record(tmp_path / "run", _record(config, 0))
    assert open_run_dir(tmp_path / "run", config) == [_record(config, 0)]


def test_changed_config_is_refused_unless_overwrite(tmp_path):
    open_run_dir(tmp_path, _config())
    append_record(tmp_path, _record(_config(), 0))
    with pytest.raises(
        RunDirError, match=r"different config \(batch_size: 1 -> 2\).*new --out.*--overwrite"
    ):
        open_run_dir(tmp_path, _config(batch_size=2))
    assert open_run_dir(tmp_path, _config(batch_size=2), overwrite=True) == []
    assert not (tmp_path / RECORDS_FILE).exists()


def test_half_written_last_line_is_dropped_and_cut(tmp_path):
    config = _config()
    open_run_dir(tmp_path, config)
    append_record(tmp_path, _record(config, 0))
    good = (tmp_path / RECORDS_FILE).read_bytes()
    with (tmp_path / RECORDS_FILE).open("ab") as handle:
        handle.write(b'{"batch": 1, "config": "')  # what SIGKILL in the middle of a write leaves
    assert read_records(tmp_path) == [_record(config, 0)]
    assert (tmp_path / RECORDS_FILE).read_bytes() != good  # reading alone repairs nothing
    assert open_run_dir(tmp_path, config) == [_record(config, 0)]
    assert (tmp_path / RECORDS_FILE).read_bytes() == good
    append_record(tmp_path, _record(config, 1))
    assert [r["batch"] for r in read_records(tmp_path)] == [0, 1]


def test_damaged_or_foreign_records_are_refused(tmp_path):
    config = _config()
    open_run_dir(tmp_path, config)
    (tmp_path / RECORDS_FILE).write_text("not json\n" + json.dumps(_record(config, 0)) + "\n")
    with pytest.raises(RunDirError, match="line 1 is not a valid record"):
        open_run_dir(tmp_path, config)
    (tmp_path / RECORDS_FILE).write_text(json.dumps(_record(config, 1)) + "\n")
    with pytest.raises(RunDirError, match="out of order"):
        open_run_dir(tmp_path, config)


def test_records_without_a_config_are_refused(tmp_path):
    (tmp_path / RECORDS_FILE).write_text("{}\n")
    with pytest.raises(RunDirError, match="no config.yaml"):
        open_run_dir(tmp_path, _config())


def test_a_directory_in_use_is_refused(tmp_path):
    from gradleak.experiments.rundir import lock_run_dir

    with (
        lock_run_dir(tmp_path / "run"),
        pytest.raises(RunDirError, match="in use by another gradleak"),
    ):
        with lock_run_dir(tmp_path / "run"):  # noqa: SIM117 - the inner lock is what is tested
            pass
    with lock_run_dir(tmp_path / "run"):  # released
        pass
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match="is a file"), lock_run_dir(tmp_path / "file"):
        pass
