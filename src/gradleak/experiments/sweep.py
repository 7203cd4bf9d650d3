"""Sweeps: a YAML grid expanded into one run directory per combination of listed values.

A sweep file holds the same keys as a run config. A key whose value is a list is an axis; the
sweep is the product of all axes, in file order (the first axis varies slowest). ``out`` names
the folder that receives one run directory per combination::

    out: runs/smollm2-dager
    model: smollm2-135m
    sampler: dager
    batches: 100
    dataset: [cola, sst2, rotten_tomatoes]
    batch_size: [1, 4, 16]

Runs are named after their axis values (``dataset-cola_batch_size-4``) and numbered in product
order; ``--shard i/N`` takes the runs whose number is ``i`` modulo ``N``, so N cluster jobs
(i = 0 .. N-1) split the sweep between them with no coordination. Each run is resumable on its own.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gradleak.experiments.config import (
    ConfigError,
    RunConfig,
    build_config,
    load_config_file,
    normalise_keys,
)
from gradleak.experiments.naming import run_name

__all__ = [
    "SweepRun",
    "builtin_grids",
    "expand_grid",
    "load_grid",
    "parse_shard",
    "resolve_grid",
    "select_shard",
    "sweep_manifest",
]


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep.

    Attributes:
        index: Position in the product order (shards select by ``index % N``).
        name: Folder name made of the run's axis values.
        config: The run's config.
        out: The run directory.
        axes: The run's value of each axis.
    """

    index: int
    name: str
    config: RunConfig
    out: Path
    axes: Mapping[str, Any]


def builtin_grids() -> dict[str, Path]:
    """Returns the grids shipped with gradleak (``experiments/grids/*.yaml``) by name."""
    folder = resources.files("gradleak.experiments") / "grids"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def resolve_grid(name_or_path: str | Path) -> Path:
    """Returns the sweep file a command names: an existing file, else a built-in grid's file.

    Raises:
        ConfigError: Neither a file nor a built-in grid has that name; the message lists the grids.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = builtin_grids().get(str(name_or_path))
    if builtin is not None:
        return builtin
    raise ConfigError(
        f"Sweep file {str(path)!r} does not exist and is not a built-in grid "
        f"({', '.join(sorted(builtin_grids()))})."
    )


def load_grid(path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Returns the mapping a sweep file holds (keys normalised to underscores), with overrides.

    Args:
        path: The sweep file.
        overrides: Keys replacing the file's, e.g. ``{"batches": 5}`` (a list makes an axis).

    Raises:
        ConfigError: The file is missing or is not a YAML mapping.
    """
    grid = load_config_file(path)
    grid.update(normalise_keys(overrides or {}, source="--set"))
    return grid


def expand_grid(
    grid: Mapping[str, Any], *, root: str | Path, source: str = "the sweep file"
) -> list[SweepRun]:
    """Returns one SweepRun per combination of the grid's listed values, each config validated.

    Args:
        grid: Sweep keys: run-config keys, lists for the axes; an ``out`` key is ignored here.
        root: The folder that receives one run directory per combination.
        source: Named in error messages.

    Raises:
        ConfigError: An axis is empty, or a combination is not a valid config (every failing
            combination is listed).
    """
    fixed = {k: v for k, v in grid.items() if k != "out" and not isinstance(v, list)}
    axes = {k: v for k, v in grid.items() if k != "out" and isinstance(v, list)}
    empty = [k for k, v in axes.items() if not v]
    if empty:
        raise ConfigError(f"{source}: axis {', '.join(empty)} lists no values.")
    runs, problems, names = [], [], set()
    for index, values in enumerate(itertools.product(*axes.values())):
        point = dict(zip(axes, values, strict=True))
        name = run_name(point)
        try:
            config = build_config({**fixed, **point}, source=source)
        except ConfigError as err:
            problems.append(f"{name}: {err}")
            continue
        if name in names:
            raise ConfigError(
                f"{source}: two runs would share the folder {name!r}; an axis repeats a value."
            )
        names.add(name)
        runs.append(
            SweepRun(index=index, name=name, config=config, out=Path(root) / name, axes=point)
        )
    if problems:
        raise ConfigError(f"{source} has invalid combinations: " + " | ".join(problems))
    return runs


def parse_shard(text: str) -> tuple[int, int]:
    """Returns ``(i, n)`` from ``"i/N"`` with ``0 <= i < N``.

    Raises:
        ConfigError: The text is not of that form.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        raise ConfigError(
            f"--shard {text!r} must be i/N with 0 <= i < N, e.g. 0/4 for the first of four jobs."
        )
    return int(match.group(1)), int(match.group(2))


def select_shard(runs: Sequence[SweepRun], shard: tuple[int, int] | None) -> list[SweepRun]:
    """Returns the runs of one shard (all of them when ``shard`` is None)."""
    if shard is None:
        return list(runs)
    i, n = shard
    return [run for run in runs if run.index % n == i]


def sweep_manifest(grid: Mapping[str, Any], runs: Sequence[SweepRun]) -> dict[str, Any]:
    """Returns the manifest written beside a sweep's runs: the grid and each run's config."""
    return {
        "format": "gradleak.sweep/1",
        "grid": dict(grid),
        "runs": [
            {"index": r.index, "name": r.name, "axes": dict(r.axes), "config": r.config.to_dict()}
            for r in runs
        ],
    }
