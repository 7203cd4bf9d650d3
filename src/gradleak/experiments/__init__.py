"""Experiments: run an attack over sampled batches, resumably, and sweep grids of such runs.

A run directory holds ``config.yaml`` (the resolved :class:`RunConfig`), ``records.jsonl`` (one
JSON line per attacked batch) and ``summary.json`` (metric means and standard errors, versions,
hardware). :func:`run_experiment` resumes after the last complete record; :func:`expand_grid`
turns a sweep file into one run per combination of listed values.
"""

from gradleak.experiments.config import (
    ConfigError,
    RunConfig,
    build_config,
    load_config_file,
    parse_options,
)
from gradleak.experiments.environment import environment
from gradleak.experiments.naming import default_run_dir
from gradleak.experiments.rundir import (
    CONFIG_FILE,
    RECORDS_FILE,
    SUMMARY_FILE,
    RunDirError,
    read_config,
    read_records,
    read_summary,
)
from gradleak.experiments.runner import RunEvent, run_experiment
from gradleak.experiments.summary import SUMMARY_METRICS, summarize_run
from gradleak.experiments.sweep import (
    SweepRun,
    builtin_grids,
    expand_grid,
    load_grid,
    parse_shard,
    resolve_grid,
    select_shard,
    sweep_manifest,
)

__all__ = [
    "CONFIG_FILE",
    "RECORDS_FILE",
    "SUMMARY_FILE",
    "SUMMARY_METRICS",
    "ConfigError",
    "RunConfig",
    "RunDirError",
    "RunEvent",
    "SweepRun",
    "build_config",
    "builtin_grids",
    "default_run_dir",
    "environment",
    "expand_grid",
    "load_config_file",
    "load_grid",
    "parse_options",
    "parse_shard",
    "read_config",
    "read_records",
    "read_summary",
    "resolve_grid",
    "run_experiment",
    "select_shard",
    "summarize_run",
    "sweep_manifest",
]
