"""A run directory: ``config.yaml``, ``records.jsonl`` (one line per batch) and ``summary.json``.

Nothing is lost when a run dies:

- each batch's record is one JSON line, written with a single ``write`` on a file opened for
  appending, then flushed and fsynced before the next batch starts;
- a last line without its newline (or that does not parse) is what a crash in the middle of a
  write leaves; it is dropped, and cut from the file, when the run resumes;
- ``summary.json`` and ``config.yaml`` are replaced atomically (written aside, then renamed);
- a directory whose ``config.yaml`` differs from the new run's config is refused, so results of
  two configs never mix;
- a directory in use by another running process is refused (an advisory lock on ``.lock``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gradleak.errors import GradleakError
from gradleak.experiments.config import ConfigError, RunConfig, build_config

__all__ = [
    "CONFIG_FILE",
    "RECORDS_FILE",
    "SUMMARY_FILE",
    "OutputError",
    "RunDirError",
    "append_record",
    "check_run_dir",
    "check_writable",
    "lock_run_dir",
    "open_run_dir",
    "read_config",
    "read_records",
    "read_summary",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
_HEADER = "# gradleak run config (resolved). Rerun with --config this file to reproduce.\n"


class RunDirError(GradleakError):
    """A run directory that cannot be used as asked (another config, damaged records)."""


class OutputError(GradleakError, OSError):
    """An output location where nothing can be written (under a file, read-only, full)."""


def check_run_dir(out: str | Path, config: RunConfig, *, overwrite: bool = False) -> int:
    """Returns how many batches of ``config`` ``out`` already holds, writing nothing.

    It refuses what :func:`open_run_dir` refuses, so a run can check its directory before
    loading anything and write nothing when the directory will not do.

    Raises:
        RunDirError: as :func:`open_run_dir`.
    """
    out = Path(out)
    _check_not_file(out)
    if overwrite or not out.is_dir():
        return 0
    _check_config(out, config)
    records = read_records(out, warn=False)  # open_run_dir warns when it cuts the line
    _check_records(records, config, out)
    return len(records)


def open_run_dir(
    out: str | Path, config: RunConfig, *, overwrite: bool = False
) -> list[dict[str, Any]]:
    """Prepares ``out`` for ``config`` and returns the records of batches already done there.

    A new or empty directory gets ``config.yaml``. An existing run of the same config is resumed:
    its complete records are returned and a half-written last line is cut. With ``overwrite``
    an existing run's files are deleted first.

    Raises:
        RunDirError: ``out`` holds a run of another config (and not ``overwrite``), or its records
            are damaged or belong to another config.
    """
    out = Path(out)
    _check_not_file(out)
    if overwrite:
        for name in (CONFIG_FILE, RECORDS_FILE, SUMMARY_FILE):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if not _check_config(out, config):
        _write_text_atomic(out / CONFIG_FILE, _HEADER + config.to_yaml())
    records = read_records(out, repair=True)
    _check_records(records, config, out)
    return records


def check_writable(folder: str | Path, *, option: str) -> None:
    """Checks that files can be created in ``folder`` by creating one, then removing it.

    Folders that had to be made for the check are removed again, so nothing is left behind.

    Raises:
        OutputError: ``folder`` lies under a regular file, or cannot be created or written
            (read-only, no permission, no space).
    """
    folder = Path(folder)
    chain = (folder, *folder.parents)
    blocker = next((p for p in chain if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(
            f"cannot write to {str(folder)!r}: {str(blocker)!r} is a file, not a folder; "
            f"choose another {option}."
        )
    missing = [p for p in chain if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".gradleak-probe-") as probe:
            probe.write(b"probe")
            probe.flush()
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        raise OutputError(
            f"cannot write to {str(folder)!r} ({reason}); choose another {option}."
        ) from None
    finally:
        for path in missing:
            with contextlib.suppress(OSError):
                path.rmdir()


def _check_not_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{str(out)!r} is a file; give --out a directory.")


def _check_config(out: Path, config: RunConfig) -> bool:
    """Returns whether ``out`` holds the ``config.yaml`` of ``config``; refuses another run."""
    if (out / CONFIG_FILE).exists():
        existing = read_config(out)
        if existing != config:
            changed = "; ".join(existing.differences(config))
            raise RunDirError(
                f"{str(out)!r} holds results of a different config ({changed}); "
                "use a new --out directory, or --overwrite to delete those results."
            )
        return True
    if (out / RECORDS_FILE).exists():
        raise RunDirError(
            f"{str(out)!r} has {RECORDS_FILE} but no {CONFIG_FILE}, so its results cannot be "
            "checked; use a new --out directory, or --overwrite to delete them."
        )
    return False


@contextlib.contextmanager
def lock_run_dir(out: str | Path):
    """Holds an exclusive advisory lock on ``out/.lock`` while the block runs (POSIX only).

    Raises:
        RunDirError: Another process holds the lock, i.e. is running in ``out`` now.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one process per directory is up to the user
        yield
        return
    out = Path(out)
    _check_not_file(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"{str(out)!r} is in use by another gradleak process; wait for it to finish or "
                "use another --out directory."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_config(run_dir: str | Path) -> RunConfig:
    """Returns the RunConfig stored in a run directory's ``config.yaml``.

    Raises:
        RunDirError: The file is missing or not a valid config.
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
        return build_config(values if isinstance(values, Mapping) else {}, source=str(path))
    except (OSError, yaml.YAMLError, ConfigError) as err:
        raise RunDirError(f"Cannot read the run config {str(path)!r}: {err}") from None


def read_records(
    run_dir: str | Path, *, repair: bool = False, warn: bool = True
) -> list[dict[str, Any]]:
    """Returns the complete records of a run directory, in file order (empty when there are none).

    A last line that lacks its newline or does not parse is a write cut short by a crash: it is
    dropped (with a warning, unless not ``warn``), and with ``repair`` also cut from the file so
    that appends continue cleanly.

    Raises:
        RunDirError: A line before the last one is not valid JSON (the file is damaged).
    """
    path = Path(run_dir) / RECORDS_FILE
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty unless a write was cut short
    records, keep = [], 0
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            if number == len(lines) and not tail:
                if warn:
                    logger.warning(
                        "Dropping an unreadable last record in %s (a crash mid-write).", path
                    )
                break
            raise RunDirError(
                f"{str(path)!r} line {number} is not a valid record, so the file is damaged; "
                "use a new --out directory, or --overwrite to start again."
            ) from None
        records.append(record)
        keep += len(line) + 1
    if keep != len(data):
        if warn:
            logger.warning("Dropping a half-written last record in %s.", path)
        if repair:
            with path.open("r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
    return records


def _check_records(records: Sequence[Mapping[str, Any]], config: RunConfig, out: Path) -> None:
    """Checks that records are batches 0, 1, ... of ``config``, as a resumed run needs."""
    fingerprint = config.fingerprint()
    for position, record in enumerate(records):
        if record.get("config") != fingerprint or record.get("batch") != position:
            raise RunDirError(
                f"{str(out / RECORDS_FILE)!r} record {position + 1} does not belong to this config "
                "or is out of order; use a new --out directory, or --overwrite to start again."
            )
    if len(records) > config.batches:
        raise RunDirError(
            f"{str(out)!r} holds more records than the config's {config.batches} batches."
        )


def append_record(run_dir: str | Path, record: Mapping[str, Any]) -> None:
    """Appends one record as a JSON line, with one write, then flushes it to disk.

    A write stopped part-way (Ctrl-C, a full disk) is cut off again, so the file never holds a
    half line while this process lives; a kill mid-write is repaired on resume instead.
    """
    line = (json.dumps(record, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode(
        "utf-8"
    )
    fd = os.open(Path(run_dir) / RECORDS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """Returns a run directory's ``summary.json``.

    Raises:
        RunDirError: It is missing or not valid JSON.
    """
    path = Path(run_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(
            f"{str(Path(run_dir))!r} has no {SUMMARY_FILE}; is it a gradleak run directory?"
        ) from None
    except ValueError as err:
        raise RunDirError(f"{str(path)!r} is not valid JSON: {err}") from None


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Writes ``data`` as indented JSON to ``path`` through a temporary file and a rename."""
    _write_text_atomic(
        Path(path), json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    )


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
