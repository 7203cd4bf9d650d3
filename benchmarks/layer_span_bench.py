"""layer-span benchmark: exact inversion from one exposed layer of SmolLM2, private messages.

The client shares only one layer of block 10 (its MLP down-projection, or its q/k/v), as under
partial exposure; batches are drawn from the built-in ``demo`` set (invented private messages)
with the random sampler (seed 101; DAGER's needs over 1,000 texts). Per configuration it prints,
per batch and in total, ROUGE-1/2, how many sequences came back exactly, how many were certified
(and certified but wrong, which must stay 0), the attack's seconds (per batch and per sentence)
and how many candidates it tested; model loading and the client's gradient are not timed.

    .venv/bin/python benchmarks/layer_span_bench.py                       # every configuration
    .venv/bin/python benchmarks/layer_span_bench.py --only smollm2-mlp10-1 --batches 10
    .venv/bin/python benchmarks/layer_span_bench.py --only smollm2-qkv10-4 -o order=none

The attack's time budget is off here unless given with ``-o time_budget=SECONDS``.
Output: one JSON document on stdout (and in --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from gradleak.attacks.layer_span import LayerSpan, LayerSpanConfig  # noqa: E402
from gradleak.client import Exposure, compute_update  # noqa: E402
from gradleak.data import load_texts, sample_batches  # noqa: E402
from gradleak.experiments.config import ConfigError, parse_options  # noqa: E402
from gradleak.models import load_model  # noqa: E402
from gradleak.scoring import score_batch  # noqa: E402


@dataclass(frozen=True)
class Config:
    name: str
    expose: str
    batch_size: int
    model: str = "smollm2-135m"
    dataset: str = "demo"


CONFIGS = [
    Config(f"smollm2-{short}10-{b}", f"blocks=10 roles={roles}", b)
    for short, roles in (("mlp", "mlp_out"), ("qkv", "q,k,v"))
    for b in (1, 4)
]


def run_config(config: Config, *, batches: int, seed: int, options: dict) -> dict:
    public = load_model(config.model)
    source = load_texts(config.dataset, split="train")
    attack = LayerSpan(LayerSpanConfig(**options))
    exposure = Exposure.parse(config.expose)
    records = []
    drawn = sample_batches(
        source, protocol="random", batch_size=config.batch_size, n_batches=batches, seed=seed
    )
    for index, batch in enumerate(drawn):
        update = compute_update(public, batch, exposure=exposure)
        started = time.perf_counter()
        result = attack.reconstruct(public, update)
        seconds = time.perf_counter() - started
        truth = {tuple(public.tokenizer(t)["input_ids"]) for t in batch.texts}
        got = {s.token_ids for s in result.sequences}
        score = score_batch(
            batch.texts,
            [s.text for s in result.sequences],
            special_tokens=public.tokenizer.all_special_tokens,
        )
        records.append(
            {
                "batch": index,
                "seconds": round(seconds, 2),
                "seconds_per_sentence": round(seconds / len(batch.texts), 2),
                "exact": len(truth & got),
                "sequences": len(truth),
                "certified": sum(s.certified for s in result.sequences),
                "certified_but_wrong": sum(
                    s.certified and s.token_ids not in truth for s in result.sequences
                ),
                "rouge1": round(score.rouge1, 2),
                "rouge2": round(score.rouge2, 2),
                "tested": result.diagnostics.get("tested"),
                "widened": result.diagnostics.get("widened"),
                "reason": result.reason,
            }
        )
        row = records[-1]
        print(
            f"{config.name} batch {index}: {row['exact']}/{row['sequences']} exact, "
            f"{row['certified']} certified, ROUGE-1 {score.rouge1:.1f}, {seconds:.1f} s "
            f"({row['seconds_per_sentence']} s a sentence), {row['tested']} candidates tested",
            file=sys.stderr,
            flush=True,
        )
    return {
        "config": config.__dict__,
        "batches": len(records),
        "median_seconds_per_sentence": statistics.median(
            r["seconds_per_sentence"] for r in records
        ),
        "max_seconds_per_sentence": max(r["seconds_per_sentence"] for r in records),
        "exact_sequence_rate": sum(r["exact"] for r in records)
        / sum(r["sequences"] for r in records),
        "certified_rate": sum(r["certified"] for r in records)
        / sum(r["sequences"] for r in records),
        "certified_but_wrong": sum(r["certified_but_wrong"] for r in records),
        "mean_rouge1": statistics.mean(r["rouge1"] for r in records),
        "mean_rouge2": statistics.mean(r["rouge2"] for r in records),
        "per_batch": records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="configuration names")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--out", default="")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="LayerSpanConfig setting, repeatable (e.g. -o order=none)",
    )
    args = parser.parse_args()
    try:
        options = {"time_budget": None, **(parse_options(args.option) or {})}
    except ConfigError as error:
        parser.error(str(error))
    unknown = set(args.only or ()) - {c.name for c in CONFIGS}
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; choose from {CONFIGS}")
    torch.manual_seed(0)
    chosen = [c for c in CONFIGS if args.only is None or c.name in args.only]
    report = {
        "threads": torch.get_num_threads(),
        "options": options,
        "configs": [
            run_config(c, batches=args.batches, seed=args.seed, options=options) for c in chosen
        ],
    }
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
