"""Sweep files: the product of listed values, run names, shards that split the runs exactly."""

from __future__ import annotations

import pytest

from gradleak.experiments import ConfigError, expand_grid, parse_shard, select_shard

GRID = {
    "out": "ignored",
    "model": "m",
    "batches": 2,
    "dataset": ["cola", "sst2", "rotten_tomatoes"],
    "batch_size": [1, 4, 16],
}


def test_product_in_file_order(tmp_path):
    runs = expand_grid(GRID, root=tmp_path)
    assert [r.index for r in runs] == list(range(9))
    assert runs[1].name == "dataset-cola_batch_size-4" and runs[1].out == tmp_path / runs[1].name
    assert (runs[1].config.dataset, runs[1].config.batch_size, runs[1].config.batches) == (
        "cola",
        4,
        2,
    )
    assert [r.config.dataset for r in runs[:4]] == ["cola"] * 3 + ["sst2"]


def test_shards_partition_the_runs(tmp_path):
    runs = expand_grid(GRID, root=tmp_path)
    shards = [select_shard(runs, (i, 4)) for i in range(4)]
    assert sorted(r.index for shard in shards for r in shard) == list(range(9))
    assert [r.index for r in shards[1]] == [1, 5]
    assert select_shard(runs, None) == runs


@pytest.mark.parametrize("text", ["4/4", "1", "-1/2", "a/b", "0/0"])
def test_bad_shards_are_refused(text):
    with pytest.raises(ConfigError, match="i/N with 0 <= i < N"):
        parse_shard(text)


def test_invalid_combinations_are_listed_before_anything_runs(tmp_path):
    assert parse_shard(" 2 / 3 ") == (2, 3)
    with pytest.raises(ConfigError, match="batch_size-0.*at least 1"):
        expand_grid({**GRID, "batch_size": [1, 0]}, root=tmp_path)
    with pytest.raises(ConfigError, match="axis dataset lists no values"):
        expand_grid({**GRID, "dataset": []}, root=tmp_path)
    assert [r.name for r in expand_grid({"model": "m"}, root=tmp_path)] == ["run"]
    long = expand_grid(
        {"model": ["random:gpt2?n_layer=3&n_embd=64&n_head=2&n_positions=64&seed=12345"]},
        root=tmp_path,
    )
    assert len(long[0].name) <= 60 and "/" not in long[0].name and "?" not in long[0].name


def test_the_builtin_paper_grid(tmp_path):
    from gradleak.experiments import builtin_grids, load_grid, resolve_grid

    assert "dager-smollm2" in builtin_grids()
    grid = load_grid(resolve_grid("dager-smollm2"), overrides={"batches": 5, "batch-size": [1, 2]})
    runs = expand_grid(grid, root=tmp_path)
    assert [r.name for r in runs][-1] == "dataset-rotten_tomatoes_batch_size-2"
    config = runs[0].config
    assert (config.model, config.sampler, config.seed, config.batches, config.task) == (
        "smollm2-135m",
        "dager",
        101,
        5,
        "seq_class",
    )
    assert len(expand_grid(load_grid(resolve_grid("dager-smollm2")), root=tmp_path)) == 9
    with pytest.raises(ConfigError, match="not a built-in grid \\(dager-smollm2"):
        resolve_grid(tmp_path / "missing.yaml")
