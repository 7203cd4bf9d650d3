"""DAGER against clients whose updates are rounded: float32 (baseline), a bfloat16 client, an fp16
update, an int8-quantised update (per-tensor symmetric) and a float32 FedAvg delta (E = 2,
mini-batch 2, lr 1e-4), SmolLM2 on Rotten Tomatoes; DAGER by default, or any attack
(``--attack subspace``).

Each cell is one resumable experiment run (DAGER's sampler, train split, seed 101) through the
library's own client simulation, attack and scoring; ``certified_but_wrong`` counts sequences
certified but not exact (always 0 if certificates are honest). Sequences that carry a confidence
(the subspace search's) are binned by it, with how many in each bin are exact: a calibrated
confidence is exact about as often as it says.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/precision_bench.py --batch-size 4 --batches 1
    .venv/bin/python benchmarks/precision_bench.py --only bf16 int8 --batch-size 16 --batches 10
    .venv/bin/python benchmarks/precision_bench.py --only int8 fedavg32 --attack subspace

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
from gradleak.experiments.config import ConfigError, RunConfig, parse_options

#: cell name -> (model dtype, client settings)
CELLS: dict[str, tuple[str, dict[str, Any]]] = {
    "float32": ("float32", {}),
    "bf16": ("bfloat16", {}),
    "fp16": ("float32", {"defence": ["quantize"], "quant": "fp16"}),
    "int8": ("float32", {"defence": ["quantize"], "quant": "int8"}),
    "fedavg32": ("float32", {"algo": "fedavg", "local_epochs": 2, "mini_batch": 2, "lr": 1e-4}),
}
#: Confidence bins (lower edges) the calibration is reported in.
CONFIDENCE_BINS = (0.0, 0.5, 0.9)


def run_cell(
    name: str,
    *,
    batch_size: int,
    batches: int,
    seed: int,
    runs: Path,
    attack: str = "dager",
    options: dict[str, Any] | None = None,
) -> dict:
    """Returns one cell's figures, running (or resuming) its experiment."""
    dtype, client = CELLS[name]
    config = RunConfig(
        model="smollm2-135m",
        dataset="rotten_tomatoes",
        batch_size=batch_size,
        batches=batches,
        sampler="dager",
        seed=seed,
        attack=attack,
        attack_options=options or {},
        client=client,
        dtype=dtype,
    ).resolved()
    run_dir = runs / f"{name}-{attack}-b{batch_size}-n{batches}"
    summary = run_experiment(config, run_dir)
    records = [json.loads(line) for line in (run_dir / "records.jsonl").open()]
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
        "seconds_per_position": _mean_diagnostic(records, "seconds_per_position"),
        "calibration": calibration(records),
    }


def calibration(records: list[dict]) -> list[dict]:
    """Returns, per confidence bin, how many sequences fell in it and how many were exact."""
    bins = [{"from": edge, "sequences": 0, "exact": 0} for edge in CONFIDENCE_BINS]
    for record in records:
        truth = {tuple(ids) for ids in record["reference_token_ids"]}
        for sequence in record["reconstructions"]:
            if sequence.get("confidence") is None:
                continue
            row = [b for b in bins if sequence["confidence"] >= b["from"]][-1]
            row["sequences"] += 1
            row["exact"] += tuple(sequence["token_ids"]) in truth
    return bins


def _mean_diagnostic(records: list[dict], key: str) -> float | None:
    values = [r["diagnostics"][key] for r in records if key in r.get("diagnostics", {})]
    return sum(values) / len(values) if values else None


def format_calibration(bins: list[dict]) -> str:
    """Returns the bins as "conf>=0.5: 3/4 exact" phrases (bins holding no sequence left out)."""
    return ", ".join(
        f"conf>={b['from']:g}: {b['exact']}/{b['sequences']} exact" for b in bins if b["sequences"]
    )


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
    parser.add_argument("--attack", default="dager", help="the attack (dager, subspace, ...)")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        help="attack option KEY=VALUE (YAML value), repeatable",
    )
    args = parser.parse_args()
    try:
        options = parse_options(args.option) or {}
    except ConfigError as error:
        parser.error(str(error))
    rows = []
    for batch_size in args.batch_size:
        for name in args.only:
            row = run_cell(
                name,
                batch_size=batch_size,
                batches=args.batches,
                seed=args.seed,
                runs=args.runs,
                attack=args.attack,
                options=options,
            )
            rows.append(row)
            print(
                f"{name:8s} B={batch_size:<3d} n={row['batches']:<3d} "
                f"R-1 {row['rouge1']:5.1f}  R-2 {row['rouge2']:5.1f}  "
                f"exact {100 * row['exact']:5.1f}%  certified {100 * row['certified']:5.1f}%  "
                f"certified-but-wrong {row['certified_but_wrong']}  "
                f"{row['seconds_per_batch']:.1f} s/batch"
                + (
                    f" ({row['seconds_per_position']:.2f} s/position)"
                    if row["seconds_per_position"]
                    else ""
                )
                + (
                    f"  [{calibrated}]"
                    if (calibrated := format_calibration(row["calibration"]))
                    else ""
                ),
                file=sys.stderr,
            )
    json.dump({"rows": rows}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
