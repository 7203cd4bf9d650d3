"""How the embedding LayerNorm places an encoder batch's tokens, checked against the truth.

For each of DAGER's Rotten Tomatoes batches (train split, seed 101) it runs
``attacks/dager/placement.py`` on the client's update and prints: the batch's rows (total length)
and distinct tokens; the tokens and positions left open; how many placements are wrong (a token
placed where it does not stand; none is the claim); how many true (token, position) pairs the
candidate sets miss; the median candidate set; and where the true lengths fall in the order the
separator gives them (0 = tried first).

    .venv/bin/python benchmarks/placement_bench.py                   # MiniLM, B = 8, 10 batches
    .venv/bin/python benchmarks/placement_bench.py --batch-size 4 --dataset sst2
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from gradleak.attacks.dager.placement import place_tokens
from gradleak.client import compute_update
from gradleak.data import load_texts, sample_batches
from gradleak.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--dataset", default="rotten_tomatoes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--seed", type=int, default=101)
    args = parser.parse_args()

    public = load_model(args.model)
    source = load_texts(args.dataset, split="train")
    end = public.tokenizer.sep_token_id
    wrong_total = missing_total = 0
    for index, batch in enumerate(
        sample_batches(
            source,
            protocol="dager",
            batch_size=args.batch_size,
            n_batches=args.batches,
            seed=args.seed,
        )
    ):
        truth = [tuple(public.tokenizer(text)["input_ids"]) for text in batch.texts]
        longest = max(map(len, truth))
        placement = place_tokens(public.family, compute_update(public, batch).gradients(), longest)
        if placement is None:
            print(f"batch {index}: the embedding gradients place nothing here")
            continue
        at = [{sentence[p] for sentence in truth if p < len(sentence)} for p in range(longest)]
        wrong = sum(
            int(placement.bag[t]) not in at[p] for t, p in torch.nonzero(placement.placed).tolist()
        )
        candidates = placement.candidates(tuple(placement.bag for _ in range(longest)))
        missing = sum(len(at[p] - set(candidates[p].tolist())) for p in range(longest))
        lengths = placement.lengths(end)
        ranks = sorted(lengths.index(len(s)) for s in truth if len(s) in lengths)
        lost = sum(len(s) not in lengths for s in truth)
        wrong_total, missing_total = wrong_total + wrong, missing_total + missing
        print(
            f"batch {index}: {sum(map(len, truth))} rows, {len(placement.bag)} distinct tokens; "
            f"open {int(placement.open_tokens.sum())} tokens, "
            f"{int(placement.open_positions[:longest].sum())} of {longest} positions; wrongly "
            f"placed {wrong}, true pairs missing {missing}; median candidates "
            f"{statistics.median(map(len, candidates))}; {len(lengths)} lengths allowed, true ones "
            f"at {ranks}" + (f", {lost} true lengths ruled out" if lost else "")
        )
    print(f"total: wrongly placed {wrong_total}, true pairs missing {missing_total}")


if __name__ == "__main__":
    main()
