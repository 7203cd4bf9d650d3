"""How well the ranked search's score picks the true next token, and what one scoring pass costs.

On the first of DAGER's CoLA batches of 128 (``--batches`` sets how many the sampler draws, which
changes their make-up), the true prefixes of each position are extended by every token in the
batch's bag; for each prefix the test is whether its true next token(s) rank first among them, by
the raw log residual against block 0's MLP down-projection span and after subtracting each token's
mean or median over all prefixes (what ``attacks/dager/ranked.py`` does). It also reports how far
true first tokens stand out, and times the one-product residual against ``SpanBasis.residuals``.

    .venv/bin/python benchmarks/ranked_bench.py                # positions 4, 8, 12
    .venv/bin/python benchmarks/ranked_bench.py --positions 2 6 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from gradleak.attacks.dager.ranked import RankingEvidence, robust_z  # noqa: E402
from gradleak.attacks.dager.tokens import embedding_bag  # noqa: E402
from gradleak.attacks.span import span_basis  # noqa: E402
from gradleak.client import compute_update  # noqa: E402
from gradleak.data import load_texts, sample_batches  # noqa: E402
from gradleak.models import LinearInputProbe, load_model  # noqa: E402


def first_in_row(scores: torch.Tensor, truth: torch.Tensor) -> int:
    """Returns how many rows rank all their true columns ahead of every false one."""
    hits = 0
    for row, true in zip(scores, truth, strict=True):
        order = torch.argsort(row)
        hits += int(true[order[: int(true.sum())]].all())
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cola")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--positions", type=int, nargs="*", default=[4, 8, 12])
    args = parser.parse_args()

    public = load_model("random:gpt2")
    batch = sample_batches(
        load_texts(args.dataset, split="train"),
        protocol="dager",
        batch_size=args.batch_size,
        n_batches=args.batches,
    )[0]
    gradients = compute_update(public, batch).gradients()
    layer = public.family.linear_layer(0, "mlp_out")
    evidence = RankingEvidence(
        (layer,),
        (span_basis([layer.weight_gradient(gradients)], min_gap=0.0),),
        LinearInputProbe(public.family, [layer]),
    )
    bag = embedding_bag(public.family, gradients)
    ids = [tuple(public.tokenizer(t)["input_ids"]) for t in batch.texts]
    print(f"{args.dataset} B={args.batch_size}: {sum(map(len, ids))} tokens, {len(bag)} distinct")

    first = evidence.log_residuals(evidence.probe.start(bag[:, None])[0]).flatten()
    z = robust_z(first)
    is_first = torch.isin(bag, torch.tensor(sorted({s[0] for s in ids})))
    print(
        f"first tokens: {int(is_first.sum())} true; robust z of true ones <= "
        f"{float(z[is_first].max()):.1f}, of the others >= {float(z[~is_first].min()):.1f}"
    )

    for position in args.positions:
        prefixes = sorted({s[:position] for s in ids if len(s) > position})
        truth = torch.stack(
            [
                torch.isin(
                    bag, torch.tensor(sorted({s[position] for s in ids if s[:position] == p}))
                )
                for p in prefixes
            ]
        )
        _, state = evidence.probe.start(torch.tensor(prefixes))
        raw = torch.cat(
            [
                evidence.log_residuals(evidence.probe.branch(state, chunk))
                for chunk in bag.split(64)
            ],
            1,
        )
        rows = len(prefixes)
        print(
            f"position {position}, {rows} true prefixes: true next token first by raw residual "
            f"{first_in_row(raw, truth)}/{rows}, minus the token's mean "
            f"{first_in_row(raw - raw.mean(0, keepdim=True), truth)}/{rows}, minus its median "
            f"{first_in_row(raw - raw.median(0, keepdim=True).values, truth)}/{rows}"
        )

    rows = evidence.probe.branch(state, bag[:32])
    for name, score in (
        ("SpanBasis.residuals (two products)", lambda: evidence.bases[0].residuals(rows[layer])),
        ("RankingEvidence.log_residuals (one)", lambda: evidence.log_residuals(rows)),
    ):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            score()
            times.append(time.perf_counter() - started)
        print(
            f"{name}: median {statistics.median(times):.3f} s for {rows[layer].shape[0] * 32} rows"
        )


if __name__ == "__main__":
    main()
