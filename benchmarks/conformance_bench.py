"""The conformance matrix at realistic widths: every supported model_type, random weights.

Each architecture is built at the width and depth of its smallest public model (Pythia-160M,
OPT-125M, RoBERTa-base, ...; decoders without a small public model at GPT-2-small's), with
random weights and the real tokenizers (GPT-2's for decoders, MiniLM's WordPiece for encoders).
For each model type, task (next-token for decoders too, sequence-to-sequence for encoder-decoders)
and batch size it prints ROUGE-1, how many sequences came back exactly, how many were certified,
how many were certified but wrong (must be 0) and the attack's seconds (loading and the client's
gradient excluded). A sequence-to-sequence row counts the encoder's sources and the decoder's
targets (each text its own target) together: 2 x B sequences.

    .venv/bin/python benchmarks/conformance_bench.py            # every model type, B = 1 and 4
    .venv/bin/python benchmarks/conformance_bench.py --quick    # the tiny test shapes, B = 1
    .venv/bin/python benchmarks/conformance_bench.py --only opt,roberta --sizes 4,16
    .venv/bin/python benchmarks/conformance_bench.py --only bart,t5 --tasks seq2seq --sizes 4
    .venv/bin/python benchmarks/conformance_bench.py --only deberta-v2 --sizes 16 -o time_budget=300

``-o KEY=VALUE`` sets a DagerConfig option (repeatable); the attack's own defaults otherwise, its
600 s time budget included.

The tiny shapes and the texts are the test suite's (``tests/conformance.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conformance import (  # noqa: E402
    DECODERS,
    ENCODER_DECODERS,
    ENCODERS,
    SEQ2SEQ,
    TEXTS,
    TINY_SHAPES,
    Shape,
    spec_for,
)

from gradleak.attacks import Attack, create_attack  # noqa: E402
from gradleak.client import simulate_update  # noqa: E402
from gradleak.data import Batch  # noqa: E402
from gradleak.experiments.config import ConfigError, parse_options  # noqa: E402
from gradleak.models import load_model  # noqa: E402
from gradleak.scoring import score_batch  # noqa: E402

#: The smallest public shape of each architecture (GPT-2-small's where none is small).
_SMALL = Shape("gpt2-small", blocks=12, width=768, mlp=3072, heads=12)
REALISTIC: dict[str, Shape] = {
    "gpt_neox": Shape("pythia-160m", blocks=12, width=768, mlp=3072, heads=12),
    "opt": Shape("opt-125m", blocks=12, width=768, mlp=3072, heads=12),
    "roberta": Shape("roberta-base", blocks=12, width=768, mlp=3072, heads=12),
    "bert": Shape("bert-base", blocks=12, width=768, mlp=3072, heads=12),
    "distilbert": Shape("distilbert-base", blocks=6, width=768, mlp=3072, heads=12),
    "electra": Shape("electra-small", blocks=12, width=256, mlp=1024, heads=4),
    "albert": Shape("albert-base", blocks=12, width=768, mlp=3072, heads=12, embedding=128),
    "bart": Shape("bart-base", blocks=6, width=768, mlp=3072, heads=12),
    "qwen2": Shape("qwen2.5-0.5b", blocks=24, width=896, mlp=4864, heads=14, kv_heads=2),
    "llama": Shape("smollm2-135m", blocks=30, width=576, mlp=1536, heads=9, kv_heads=3),
    "gemma": Shape("gemma-270m-like", blocks=18, width=640, mlp=2048, heads=4, kv_heads=1),
    "deberta-v2": Shape("deberta-v3-small", blocks=6, width=768, mlp=3072, heads=12),
    "t5": Shape("t5-small", blocks=6, width=512, mlp=2048, heads=8),
}
#: More texts than the tests' four, for B = 16.
_MORE_TEXTS = (
    "Meet me by the old bridge.",
    "The code for the gate is 0921.",
    "I will send the keys tomorrow.",
    "Dinner at eight, bring wine.",
    "Her flight lands at noon.",
    "Pay the plumber before Monday.",
    "The meeting moved to room four.",
    "Ask Sam about the new lease.",
    "Lunch is on me this time.",
    "Call the bank about my card.",
    "We leave for Rome on Sunday.",
    "Your parcel is at the desk.",
)


def run_case(
    model_type: str, shape: Shape, task: str, size: int, attack: Attack
) -> dict[str, object]:
    """Returns one row of the matrix: scores, counts and the attack's seconds."""
    public = load_model(spec_for(model_type, shape), task=task)
    texts = (TEXTS + _MORE_TEXTS)[:size]
    batch = Batch(texts=texts, labels=tuple(i % 2 for i in range(size)))
    update = simulate_update(public, batch)
    start = time.perf_counter()
    result = attack.reconstruct(public, update)
    seconds = time.perf_counter() - start
    truth = {tuple(public.tokenizer(text)["input_ids"]) for text in texts}
    # A sequence-to-sequence client's targets are its texts: sources and targets count alike.
    found = [*result.sequences, *(result.targets.sequences if result.targets else ())]
    score = score_batch(
        texts * (2 if result.targets else 1),
        [s.text for s in found],
        special_tokens=public.tokenizer.all_special_tokens,
    )
    return {
        "model_type": model_type,
        "shape": shape.name,
        "task": task,
        "B": size,
        "rouge1": round(score.rouge1, 1),
        "exact": sum(s.token_ids in truth for s in found),
        "certified": sum(s.certified for s in found),
        "certified_but_wrong": sum(s.certified and s.token_ids not in truth for s in found),
        "family": result.diagnostics.get("family"),
        "search": result.diagnostics.get("search"),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny test shapes, B = 1 only")
    parser.add_argument("--only", default="", help="comma-separated model types")
    parser.add_argument("--sizes", default="", help="comma-separated batch sizes (default 1,4)")
    parser.add_argument(
        "--tasks", default="", help="comma-separated tasks (default: every task of each type)"
    )
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="DagerConfig setting, repeatable (e.g. -o time_budget=300)",
    )
    args = parser.parse_args()
    try:
        attack = create_attack("dager", **(parse_options(args.option) or {}))
    except (ConfigError, ValueError) as error:  # an unknown option is a ValueError too
        parser.error(str(error))
    types = [t for t in args.only.split(",") if t] or list(DECODERS + ENCODERS + ENCODER_DECODERS)
    wanted = {t for t in args.tasks.split(",") if t}
    sizes = [int(s) for s in args.sizes.split(",") if s] or ([1] if args.quick else [1, 4])
    columns = ("model_type", "shape", "task", "B", "rouge1", "exact", "certified")
    print(" ".join(f"{c:>12}" for c in (*columns, "wrong", "seconds")), flush=True)
    for model_type in types:
        shapes = TINY_SHAPES[:1] if args.quick else (REALISTIC.get(model_type, _SMALL),)
        tasks = ("seq_class", "next_token") if model_type in DECODERS else ("seq_class",)
        tasks += ("seq2seq",) if model_type in SEQ2SEQ else ()
        tasks = tuple(t for t in tasks if not wanted or t in wanted)
        for shape in shapes:
            for task in tasks:
                for size in sizes:
                    row = run_case(model_type, shape, task, size, attack)
                    cells = [row[c] for c in columns] + [
                        row["certified_but_wrong"],
                        row["seconds"],
                    ]
                    print(" ".join(f"{c!s:>12}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
