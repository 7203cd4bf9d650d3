"""DAGER against clients whose updates are rounded: float32 (baseline), a bfloat16 client, an fp16
update and an int8-quantised update (per-tensor symmetric), SmolLM2 on Rotten Tomatoes.

Each cell is one resumable experiment run (DAGER's sampler, train split, seed 101) through the
library's own client simulation, attack and scoring; ``certified_but_wrong`` counts sequences
certified but not exact (always 0 if certificates are honest).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/precision_bench.py --batch-size 4 --batches 1
    .venv/bin/python benchmarks/precision_bench.py --only bf16 int8 --batch-size 16 --batches 10

Runs go to ``--runs`` (one directory per cell, batch size and batch count); rerunning resumes them.
Output: a table on stderr and one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from gradleak.experiments import run_experiment
from gradleak.experiments.config import RunConfig

#: cell name -> (model dtype, client settings)
CELLS: dict[str, tuple[str, dict[str, Any]]] = {
    "float32": ("float32", {}),
    "bf16": ("bfloat16", {}),
    "fp16": ("float32", {"defence": ["quantize"], "quant": "fp16"}),
    "int8": ("float32", {"defence": ["quantize"], "quant": "int8"}),
}


def run_cell(name: str, *, batch_size: int, batches: int, seed: int, runs: Path) -> dict:
    """Returns one cell's figures, running (or resuming) its experiment."""
    dtype, client = CELLS[name]
    config = RunConfig(
        model="smollm2-135m",
        dataset="rotten_tomatoes",
        batch_size=batch_size,
        batches=batches,
        sampler="dager",
        seed=seed,
        attack="dager",
        client=client,
        dtype=dtype,
    ).resolved()
    summary = run_experiment(config, runs / f"{name}-b{batch_size}-n{batches}")
    records = [
        json.loads(line)
        for line in (runs / f"{name}-b{batch_size}-n{batches}" / "records.jsonl").open()
    ]
    return {
        "cell": name,
        "batch_size": batch_size,
        "batches": summary["batches"],
        "rouge1": summary["rouge1"],
        "rouge2": summary["rouge2"],
        "exact": summary["exact_rate"],
        "certified": summary["certified_rate"],
        "certified_but_wrong": sum(_certified_but_wrong(r) for r in records),
        "seconds_per_batch": summary["seconds_per_batch"],
    }


def _certified_but_wrong(record: dict) -> int:
    truth = {tuple(ids) for ids in record["reference_token_ids"]}
    return sum(
        1
        for r in record["reconstructions"]
        if r["certified"] and tuple(r["token_ids"]) not in truth
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--batch-size", type=int, nargs="*", default=[4])
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--runs", type=Path, default=Path("runs/precision_bench"))
    args = parser.parse_args()
    rows = []
    for batch_size in args.batch_size:
        for name in args.only:
            row = run_cell(
                name, batch_size=batch_size, batches=args.batches, seed=args.seed, runs=args.runs
            )
            rows.append(row)
            print(
                f"{name:8s} B={batch_size:<3d} n={row['batches']:<3d} "
                f"R-1 {row['rouge1']:5.1f}  R-2 {row['rouge2']:5.1f}  "
                f"exact {100 * row['exact']:5.1f}%  certified {100 * row['certified']:5.1f}%  "
                f"certified-but-wrong {row['certified_but_wrong']}  "
                f"{row['seconds_per_batch']:.1f} s/batch",
                file=sys.stderr,
            )
    json.dump({"rows": rows}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
