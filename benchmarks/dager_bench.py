"""DAGER speed, memory and exact-recovery benchmark on fixed batches of the papers' datasets.

Batches are drawn with DAGER's own sampler (train split, seed 101) from ../shared/data. For each
configuration it prints, per batch and in total, the attack's seconds per stage (span bases,
vocabulary scan, search), the peak memory the attack added, and how many sequences came back
exactly; model loading and the client's own gradient are excluded from the attack's timings.
Each batch also records the attack's and the client's gradient step's CPU seconds (the step is
timed just before the attack, in the same process) and the load average: wall seconds on a
shared machine grow with the other jobs' load.

    .venv/bin/python benchmarks/dager_bench.py                     # every configuration, 20 batches
    .venv/bin/python benchmarks/dager_bench.py --only smollm2-rt-16 --batches 20
    .venv/bin/python benchmarks/dager_bench.py --quick             # 3 batches each
    .venv/bin/python benchmarks/dager_bench.py --only smollm2-rt-4 --task next_token
    .venv/bin/python benchmarks/dager_bench.py --only gpt2-cola-128 --batches 3 -o saturated=cap

The attack's time budget is off here (the rows measure the whole search) unless given with
``-o time_budget=SECONDS``; the command line's default is 600 s.

Past the hidden-size limit (gpt2-cola-128, gpt2-rt-64) nothing is certified and the ROUGE columns
are what counts; ``-o saturated=cap`` runs the paper's search there instead of gradleak's ranked
one, and ``-o peel=false`` the ranked search alone, without peeling the sentences that fit.
``--log`` prints the attack's progress (each ranked step, each pass of the fits) to stderr.

Output: one JSON document on stdout (and in --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass

import psutil
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from gradleak.attacks.dager import Dager, DagerConfig  # noqa: E402
from gradleak.client import compute_update  # noqa: E402
from gradleak.data import load_texts, sample_batches  # noqa: E402
from gradleak.experiments.config import ConfigError, parse_options  # noqa: E402
from gradleak.models import load_model  # noqa: E402
from gradleak.scoring import score_batch  # noqa: E402


@dataclass(frozen=True)
class Config:
    name: str
    model: str
    dataset: str
    batch_size: int


GPT2_FULL = "random:gpt2"  # GPT-2 small's 768-wide, 12-block config, random weights, real tokenizer
CONFIGS = [
    *(
        Config(f"smollm2-{short}-{b}", "smollm2-135m", ds, b)
        for short, ds in (("rt", "rotten_tomatoes"), ("cola", "cola"))
        for b in (1, 4, 16)
    ),
    *(Config(f"gpt2-rt-{b}", GPT2_FULL, "rotten_tomatoes", b) for b in (1, 8, 32)),
    *(Config(f"minilm-rt-{b}", "minilm", "rotten_tomatoes", b) for b in (1, 2, 4, 8)),
    Config("gpt2-cola-128", GPT2_FULL, "cola", 128),
    Config("gpt2-rt-64", GPT2_FULL, "rotten_tomatoes", 64),
]


class PeakMemory:
    """Samples the process's resident memory in a thread; reports the peak above the start."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval, self.process = interval, psutil.Process()
        self.start = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def added_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def distinct_rows(public, texts) -> int:
    """Returns the most distinct input rows either oracle block sees (what must stay below d)."""
    ids = [tuple(public.tokenizer(t)["input_ids"]) for t in texts]
    if public.family.positions == "rotary":
        layer1 = len({tok for seq in ids for tok in seq})
    else:
        layer1 = len({(pos, tok) for seq in ids for pos, tok in enumerate(seq)})
    layer2 = len({seq[: i + 1] for seq in ids for i in range(len(seq))})
    return max(layer1, layer2)


def run_config(
    config: Config,
    *,
    batches: int,
    seed: int,
    options: dict,
    skip: tuple[int, ...] = (),
    task: str = "seq_class",
) -> dict:
    public = load_model(config.model, task=task)
    source = load_texts(config.dataset, split="train")
    attack = Dager(DagerConfig(**options))
    records = []
    for index, batch in enumerate(
        sample_batches(
            source, protocol="dager", batch_size=config.batch_size, n_batches=batches, seed=seed
        )
    ):
        if index in skip:
            continue
        client, client_cpu = time.perf_counter(), time.process_time()
        update = compute_update(public, batch)
        client, client_cpu = time.perf_counter() - client, time.process_time() - client_cpu
        with PeakMemory() as memory:
            started, cpu = time.perf_counter(), time.process_time()
            result = attack.reconstruct(public, update)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        truth = [tuple(public.tokenizer(t)["input_ids"]) for t in batch.texts]
        got = {s.token_ids for s in result.sequences}
        exact = sum(t in got for t in truth)
        score = score_batch(
            batch.texts,
            [s.text for s in result.sequences],
            special_tokens=public.tokenizer.all_special_tokens,
        )
        records.append(
            {
                "batch": index,
                "seconds": round(seconds, 3),
                "cpu_seconds": round(cpu, 3),
                "client_seconds": round(client, 3),
                "client_cpu_seconds": round(client_cpu, 3),
                "load_average": round(os.getloadavg()[0], 2),
                "stages": {
                    k: round(v, 3) for k, v in result.diagnostics.get("seconds", {}).items()
                },
                "peak_mib": round(memory.added_mib, 1),
                "exact": exact,
                "sequences": len(truth),
                "rouge1": round(score.rouge1, 2),
                "rouge2": round(score.rouge2, 2),
                "certified": sum(s.certified for s in result.sequences),
                "certified_exact": sum(
                    s.certified and s.token_ids in set(truth) for s in result.sequences
                ),
                "returned": len(result.sequences),
                "distinct_rows": distinct_rows(public, batch.texts),
                "hidden_size": public.family.hidden_size(),
                "reason": result.reason,
                "peels": _peels(result.diagnostics),
            }
        )
        peels = "".join(
            f"; peeled {p['sentences']} to rank {p['rank_left']}, "
            f"{p['median_tokens_per_position']:g} tokens per position"
            if "rank_left" in p
            else f"; peeled {p['sentences']} ranked sentences (fits {p['seconds']:g} s)"
            for p in records[-1]["peels"]
        )
        if peels and "tokens_per_position" in result.diagnostics:
            first = statistics.median(result.diagnostics["tokens_per_position"])
            peels = f"; first scan {first:g} tokens per position{peels}"
        print(
            f"{config.name} batch {index}: {exact}/{len(truth)} exact, {records[-1]['certified']} "
            f"certified, ROUGE-1 {score.rouge1:.1f}, {seconds:.2f} s ({cpu:.1f} s CPU, load "
            f"{os.getloadavg()[0]:.1f}){peels}",
            file=sys.stderr,
        )
    return summarise(config, records)


def _peels(diagnostics: dict) -> list[dict]:
    """Returns each peel: for the encoder search, block 1's rank left and block 0's median tokens
    per position; for the ranked search, the sentences that fitted and the seconds the fits took."""
    return [
        {
            "sentences": p["sentences"],
            "rank_left": p["rank_left"],
            "median_tokens_per_position": statistics.median(p["tokens_per_position"]),
        }
        if "rank_left" in p
        else {"sentences": p["sentences"], "seconds": p["seconds"]}
        for p in diagnostics.get("peeled", [])
    ]


def summarise(config: Config, records: list[dict]) -> dict:
    fitting = [r for r in records if r["distinct_rows"] < r["hidden_size"]]
    stages = sorted({k for r in records for k in r["stages"]})
    return {
        "config": config.__dict__,
        "batches": len(records),
        "median_seconds": statistics.median(r["seconds"] for r in records),
        "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in records),
        "median_client_cpu_seconds": statistics.median(r["client_cpu_seconds"] for r in records),
        "median_attack_to_client_cpu": statistics.median(
            r["cpu_seconds"] / max(r["client_cpu_seconds"], 1e-9) for r in records
        ),
        "median_stage_seconds": {
            k: statistics.median(r["stages"].get(k, 0.0) for r in records) for k in stages
        },
        "max_peak_mib": max(r["peak_mib"] for r in records),
        "exact_sequence_rate": sum(r["exact"] for r in records)
        / sum(r["sequences"] for r in records),
        "mean_rouge1": statistics.mean(r["rouge1"] for r in records),
        "mean_rouge2": statistics.mean(r["rouge2"] for r in records),
        "batches_all_exact": sum(r["exact"] == r["sequences"] for r in records),
        "batches_fitting_hidden_size": len(fitting),
        "fitting_batches_all_exact": sum(r["exact"] == r["sequences"] for r in fitting),
        "certified_but_wrong": sum(r["certified"] - r["certified_exact"] for r in records),
        "per_batch": records,
    }


def scan_versus_matmul(model: str, *, rank: int, repeats: int = 5) -> dict:
    """Returns the median time of one vocabulary scan position and of a bare product of that
    shape."""
    from gradleak.attacks.dager.oracle import SpanOracle
    from gradleak.attacks.dager.tokens import vocabulary_residuals
    from gradleak.attacks.span import span_basis
    from gradleak.models import LinearInputProbe

    public = load_model(model)
    family = public.family
    layer = family.linear_layer(0, "q")
    d = layer.in_features
    gradient = torch.randn(rank, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64)
    oracle = SpanOracle(0, (layer,), span_basis([gradient]), LinearInputProbe(family, [layer]))
    vocab = torch.arange(family.embedding().num_embeddings)
    table = torch.randn(len(vocab), d)
    basis = oracle.basis.basis
    scan, bare = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        vocabulary_residuals(oracle, vocab, position=1, chunk_size=8192)
        scan.append(time.perf_counter() - started)
        started = time.perf_counter()
        table @ basis.T
        bare.append(time.perf_counter() - started)
    return {
        "model": model,
        "vocab": len(vocab),
        "d": d,
        "rank": oracle.basis.rank,
        "scan_seconds": statistics.median(scan),
        "bare_matmul_seconds": statistics.median(bare),
        "ratio": statistics.median(scan) / statistics.median(bare),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", nargs="*", help="configuration names (default: all)", default=None
    )
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 batches per configuration")
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument(
        "--task",
        choices=("seq_class", "next_token"),
        default="seq_class",
        help="the client's task (next_token: each last token is read from the head's gradient)",
    )
    parser.add_argument("--out", default="")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="DagerConfig setting, repeatable (e.g. -o saturated=cap)",
    )
    parser.add_argument(
        "--skip",
        type=int,
        nargs="*",
        default=[],
        metavar="INDEX",
        help="batch indices to leave out (the draw of the others is unchanged)",
    )
    parser.add_argument(
        "--no-scan-timing", action="store_true", help="skip the scan-versus-matmul timing"
    )
    parser.add_argument(
        "--log", action="store_true", help="print the attack's progress (searches, peels)"
    )
    args = parser.parse_args()
    if args.log:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
        )
    try:
        options = {"time_budget": None, **(parse_options(args.option) or {})}
    except ConfigError as error:
        parser.error(str(error))
    torch.manual_seed(0)
    chosen = [c for c in CONFIGS if args.only is None or c.name in args.only]
    unknown = set(args.only or ()) - {c.name for c in CONFIGS}
    if unknown:
        parser.error(
            f"unknown configurations {sorted(unknown)}; choose from {[c.name for c in CONFIGS]}"
        )
    batches = 3 if args.quick else args.batches
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "options": options,
        "task": args.task,
        "configs": [
            run_config(
                c,
                batches=batches,
                seed=args.seed,
                options=options,
                skip=tuple(args.skip),
                task=args.task,
            )
            for c in chosen
        ],
    }
    if not args.no_scan_timing:
        report["scan_vs_matmul"] = [
            scan_versus_matmul("smollm2-135m", rank=335),
            scan_versus_matmul(GPT2_FULL, rank=259),
        ]
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
