"""The partial-gradient paper's table on one engine: all parameters vs one layer vs one component.

Li, Xu & Dras (EMNLP 2024) attack BERT with LAMP_cos restricted to the gradients of one layer or one
linear component. This benchmark runs the same grid with gradleak's engine on MiniLM (bundled,
d = 384, 6 blocks) for CoLA and Rotten Tomatoes at B = 1, and prints ROUGE-1/2 and seconds per
sentence for each view. Sentences come from the LAMP/partial-gradient protocol (train split,
seed 101, first shuffled indices); the client discloses its labels and the attacker knows the
lengths (the papers' setting; --estimate-lengths reads them from the update instead). The client
exposes only the view's parameters, so the attack could not use more even by mistake. Any
recipe (--recipe) runs on any bundled model (--model) and batch size, and --recipe dager runs
the exact attack on the very same batches, so TAG, LAMP and DAGER can be compared row by row.

    # the full grid, 20 sentences, the paper's settings:
    .venv/bin/python benchmarks/optimization_bench.py
    .venv/bin/python benchmarks/optimization_bench.py --preset cpu --sentences 2 --datasets cola \\
        --views all layer0 layer5 q o mlp_out                                  # a CPU-sized subset
    # time per step on SmolLM2:
    .venv/bin/python benchmarks/optimization_bench.py --model smollm2-135m --recipe tag \\
        --views all --preset smoke
    # one step's parts and the scoring of 4 candidates, medians of 5 (no attack), against an
    # older engine in the same process:
    mkdir -p /tmp/old && git archive REV src | tar -x -C /tmp/old
    .venv/bin/python benchmarks/optimization_bench.py --model smollm2-135m --recipe tag \\
        --datasets rotten_tomatoes --time-step 5 --baseline-src /tmp/old/src
    # TAG, then DAGER, on the same SmolLM2 batches (B = 4):
    .venv/bin/python benchmarks/optimization_bench.py --model smollm2-135m --recipe tag \\
        -o steps=100 --views all --batch-size 4 --sentences 1 --datasets rotten_tomatoes
    .venv/bin/python benchmarks/optimization_bench.py --model smollm2-135m --recipe dager \\
        --views all --batch-size 4 --sentences 1 --datasets rotten_tomatoes

``--recipe dager`` runs DAGER (exact, span-based) on the same batches for comparison; it takes
the ``all`` view only, and the presets do not apply to it (``-o`` passes DAGER's own options).

Views: ``all``; ``layerN`` (every tensor of block N, the paper's layer_encoder); ``q k v o mlp_in
mlp_out`` (one weight of block --block, the paper's component views); ``ffn_output_paper`` (the
original code's substring selection, which also matches the attention output).

Output: one JSON document on stdout (and in --out); on stderr a line per batch as it goes and a
markdown table of the medians at the end (also for --merge).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from gradleak.attacks import create_attack  # noqa: E402
from gradleak.client import Exposure, compute_update  # noqa: E402
from gradleak.data import load_texts, sample_batches  # noqa: E402
from gradleak.experiments import parse_options  # noqa: E402
from gradleak.models import load_model  # noqa: E402
from gradleak.scoring import score_batch  # noqa: E402

COMPONENTS = ("q", "k", "v", "o", "mlp_in", "mlp_out")
#: Settings that fit a 2-core CPU; "paper" keeps the recipe's own (LAMP: 2000 steps, 500 starts,
#: 200 candidates per discrete move).
PRESETS = {
    "paper": {},
    "cpu": {"steps": 300, "init_candidates": 64, "swap_every": 50, "swap_candidates": 32},
    "smoke": {"steps": 20, "init_candidates": 2, "swaps": False},
}


def cpu_name() -> str:
    """Returns the CPU's model name where the OS tells it."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def view_spec(view: str, block: int) -> tuple[str, str]:
    """Returns (client exposure, attack selection) of a view."""
    if view == "all":
        return "all", "exposed"
    if view.startswith("layer"):
        return f"blocks={int(view[5:])}", "exposed"
    if view in COMPONENTS:
        return f"blocks={block} roles={view}", f"blocks={block} roles={view} biases=no"
    if view == "ffn_output_paper":
        return f"blocks={block} roles=o,mlp_out", f"paper=ffn_output blocks={block}"
    raise SystemExit(
        f"unknown view {view!r}: all, layerN, {', '.join(COMPONENTS)}, ffn_output_paper"
    )


def run_view(
    public, batches, *, view: str, block: int, recipe: str, options: dict, known_lengths: bool
) -> dict:
    expose, select = view_spec(view, block)
    records = []
    for index, batch in enumerate(batches):
        lengths = [len(public.tokenizer(t)["input_ids"]) for t in batch.texts]
        # The papers' attacker knows the lengths (LAMP's know_padding); without them the attack
        # reads them from the update, which a last-block view of a classifier does not show.
        if recipe == "dager":  # reads lengths and labels from the update itself
            attack = create_attack(recipe, **options)
        else:
            attack = create_attack(
                recipe, select=select, **options, **({"lengths": lengths} if known_lengths else {})
            )
        update = compute_update(public, batch, exposure=Exposure.parse(expose))
        if batch.labels is not None:  # the papers' attacker knows the labels
            update = update.with_tensors(update.tensors, extra={"labels": list(batch.labels)})
        started = time.perf_counter()
        result = attack.reconstruct(public, update)
        seconds = time.perf_counter() - started
        reference_ids = [public.tokenizer(t)["input_ids"] for t in batch.texts]
        references = [public.tokenizer.decode(ids) for ids in reference_ids]
        score = score_batch(
            references, result.texts, special_tokens=public.tokenizer.all_special_tokens
        )
        d = result.diagnostics
        history = d.get("history") or []
        records.append(
            {
                "sentence": index,
                "indices": list(batch.indices or ()),
                "rouge1": score.rouge1,
                "rouge2": score.rouge2,
                "exact_rate": score.exact_rate,
                "certified": sum(s.certified for s in result.sequences),
                "seconds": seconds,
                "seconds_per_step": d.get("seconds_per_step"),
                "stages": d.get("seconds"),
                "start_distance": d.get("start_distance"),
                "final_distance": history[-1][1] if history else None,
                "token_distance": d.get("token_distance"),
                "lengths": d.get("lengths", {"value": lengths, "source": "tokenizer"}),
                "matched_tensors": len(d["matched_tensors"]) if "matched_tensors" in d else None,
                "matched_elements": d.get("matched_elements"),
                "reference": references,
                "reconstruction": result.texts,
            }
        )
        print(
            f"  {view:>16} #{index}: R1 {score.rouge1:5.1f} R2 {score.rouge2:5.1f} "
            f"exact {score.exact_rate:4.2f} {seconds:6.1f} s | {' || '.join(result.texts)[:90]}",
            file=sys.stderr,
        )
    matched = records[0]["matched_elements"]
    total = sum(p.numel() for p in public.model.parameters())
    share = matched / total if matched is not None else None
    return summarise(
        {"view": view, "exposure": expose, "selection": select, "share_of_parameters": share},
        records,
    )


def summarise(head: dict, records: list[dict]) -> dict:
    """Returns a view's summary over its sentences."""
    return {
        **head,
        "sentences": len(records),
        "median_rouge1": statistics.median(r["rouge1"] for r in records),
        "median_rouge2": statistics.median(r["rouge2"] for r in records),
        "mean_rouge1": statistics.fmean(r["rouge1"] for r in records),
        "mean_rouge2": statistics.fmean(r["rouge2"] for r in records),
        "exact_rate": (  # None for runs recorded before the rate was
            statistics.fmean(r["exact_rate"] for r in records)
            if all("exact_rate" in r for r in records)
            else None
        ),
        "median_seconds_per_sentence": statistics.median(r["seconds"] for r in records),
        "median_seconds_per_step": (
            statistics.median(steps)
            if (steps := [r["seconds_per_step"] for r in records if r.get("seconds_per_step")])
            else None
        ),
        "per_sentence": records,
    }


def merge(paths: list[str]) -> dict:
    """Returns the results of several runs (e.g. different --skip) as one, summaries recomputed."""
    runs = []
    for path in paths:
        with open(path) as handle:
            runs.append(json.load(handle))
    for key in ("model", "recipe", "batch_size"):
        values = {str(run.get(key)) for run in runs}
        if len(values) > 1:
            raise SystemExit(f"cannot merge runs of different {key}: {', '.join(sorted(values))}")
    merged = {**runs[0], "merged_from": paths, "datasets": {}}
    for run in runs:
        for dataset, views in run["datasets"].items():
            table = merged["datasets"].setdefault(dataset, {})
            for view in views:
                records = [
                    {**r, "sentence": r["sentence"] + run.get("skip", 0)}
                    for r in view["per_sentence"]
                ]
                entry = table.setdefault(
                    view["view"],
                    (
                        {
                            k: view[k]
                            for k in ("view", "exposure", "selection", "share_of_parameters")
                        },
                        {},
                    ),
                )
                entry[1].update({r["sentence"]: r for r in records})
    merged["datasets"] = {
        ds: [summarise(head, [recs[i] for i in sorted(recs)]) for head, recs in table.values()]
        for ds, table in merged["datasets"].items()
    }
    return merged


def baseline_engine(root: str):
    """Returns (GradientObjective, make_distance) of another source tree (e.g. an older commit
    unpacked with ``git archive REV src | tar -x -C DIR``), loaded beside the current ones."""
    import importlib.util

    modules = {}
    for name in ("distances", "objective"):
        path = os.path.join(root, "gradleak", "attacks", "optimization", f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"_baseline_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        modules[name] = module
    return modules["objective"].GradientObjective, modules["distances"].make_distance


def time_step(
    public,
    batch,
    *,
    recipe: str,
    options: dict,
    repeats: int,
    candidates: int,
    baseline: str | None = None,
) -> dict:
    """Returns the medians of ``repeats`` optimisation steps, split into their parts, and of
    scoring ``candidates`` dummy batches at once, on ``batch`` with every parameter exposed.

    The parts are the forward pass, the selected gradients (``create_graph=True``), the
    distance, and the backward pass to the dummy embeddings; the engine's step is their sum.
    With ``baseline`` (a source tree), its objective and distances are timed too, alternating
    with the current ones step by step in the same process, so both see the same load.
    """
    from gradleak.attacks.optimization.distances import make_distance
    from gradleak.attacks.optimization.layout import DummyInputs
    from gradleak.attacks.optimization.objective import GradientObjective, attack_mode

    lengths = [len(public.tokenizer(t)["input_ids"]) for t in batch.texts]
    attack = create_attack(recipe, **{**options, "lengths": lengths})
    update = compute_update(public, batch, exposure=Exposure.parse("all"))
    if batch.labels is not None:
        update = update.with_tensors(update.tensors, extra={"labels": list(batch.labels)})
    plan, cfg = attack.plan(public, update), attack.config
    embedding = public.family.embedding()
    engines = {"current": (GradientObjective, make_distance)}
    if baseline:
        engines["baseline"] = baseline_engine(baseline)
    keys = ("forward", "gradients", "distance", "backward")
    times = {v: {k: [] for k in (*keys, "step", "candidate")} for v in engines}
    with attack_mode(public.model, [v.name for v in plan.views]):
        objectives = {
            version: objective_cls(
                public.model,
                plan.views,
                plan.targets,
                distance_fn(cfg.distance, alpha=cfg.tag_alpha),
                DummyInputs(plan.layout, embedding),
                task=public.task,
                memory_mb=cfg.memory_mb,
                max_chunk=cfg.max_chunk,
            )
            for version, (objective_cls, distance_fn) in engines.items()
        }
        classes = torch.tensor(plan.labels.hypotheses[0], device=embedding.weight.device)
        generator = torch.Generator().manual_seed(0)
        shape = objectives["current"].inputs.free_shape
        start = torch.randn(shape, generator=generator)
        draws = torch.randn((candidates, *shape), generator=generator) if candidates else None
        order = list(engines)
        for repeat in range(repeats + 1):  # the first round warms up
            order.reverse()
            for version in order:
                objective = objectives[version]
                free = start.clone().requires_grad_(True)
                t0 = time.perf_counter()
                out = objective.model(
                    inputs_embeds=objective.inputs.assemble(free),
                    labels=objective.labels(free, classes),
                    **objective.inputs.model_kwargs(),
                )
                t1 = time.perf_counter()
                grads = torch.autograd.grad(out.loss, objective.params, create_graph=True)
                t2 = time.perf_counter()
                distance = objective.distance(
                    [
                        v.take(grads[i])[None]
                        for v, i in zip(objective.views, objective.slot, strict=True)
                    ],
                    objective.targets,
                )[0]
                t3 = time.perf_counter()
                distance.backward()
                t4 = time.perf_counter()
                del out, grads, distance
                if draws is not None and repeat % 2 == 0:
                    t5 = time.perf_counter()
                    objective.batch(draws, classes)
                    if repeat:
                        times[version]["candidate"].append((time.perf_counter() - t5) / candidates)
                if repeat:
                    for key, value in zip(
                        (*keys, "step"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True
                    ):
                        times[version][key].append(value)
    result = {
        "lengths": lengths,
        "matched_tensors": len(plan.views),
        "matched_elements": objectives["current"].matched_elements,
        "distance": cfg.distance,
        "scoring_chunk": objectives["current"].chunk,
    }
    for version, measured in times.items():
        result[version] = {
            "median_seconds_per_step": statistics.median(measured["step"]),
            "median_parts": {k: statistics.median(measured[k]) for k in keys},
            "median_seconds_per_candidate": (
                statistics.median(measured["candidate"]) if measured["candidate"] else None
            ),
            "seconds": measured,
        }
    return result


def markdown(results: dict) -> str:
    """Returns the summaries of a run (or a merge) as a markdown table, one row per view."""
    rows = [
        (
            "| dataset | view | batches | median R-1 | median R-2 | mean R-1 | exact % "
            "| s / batch | s / step |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for dataset, views in results["datasets"].items():
        for v in views:
            step, exact = v.get("median_seconds_per_step"), v.get("exact_rate")
            rows.append(
                f"| {dataset} | {v['view']} | {v['sentences']} | {v['median_rouge1']:.1f} "
                f"| {v['median_rouge2']:.1f} | {v['mean_rouge1']:.1f} "
                f"| {'-' if exact is None else f'{100 * exact:.0f}'} "
                f"| {v['median_seconds_per_sentence']:.0f} "
                f"| {'-' if step is None else f'{step:.2f}'} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", help="victim model spec (default: minilm)")
    parser.add_argument(
        "--recipe",
        default="partial",
        choices=["tag", "lamp_cos", "lamp_l1l2", "partial", "dager"],
        help="the optimisation recipe, or dager for the exact attack on the same batches",
    )
    parser.add_argument(
        "--datasets", nargs="+", default=["cola", "rotten_tomatoes"], help="bundled text sources"
    )
    parser.add_argument(
        "--sentences", type=int, default=20, help="batches per dataset (the issue asks 20)"
    )
    parser.add_argument(
        "--skip", type=int, default=0, help="skip the first K batches (to split a grid over runs)"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="merge earlier outputs and print them; run nothing",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="sentences per batch (B)")
    parser.add_argument(
        "--views",
        nargs="+",
        default=["all", *(f"layer{i}" for i in range(6)), *COMPONENTS, "ffn_output_paper"],
        help="all, layerN, " + ", ".join(COMPONENTS) + ", ffn_output_paper (default: every one)",
    )
    parser.add_argument(
        "--block", type=int, default=0, help="block of the component views (paper default: 0)"
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="paper: the recipe's own settings; cpu: "
        + ", ".join(f"{k}={v}" for k, v in PRESETS["cpu"].items())
        + "; smoke: a few steps, to time a step (ignored by dager)",
    )
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        help="attack option KEY=VALUE (overrides the preset)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (one is fastest on a busy 2-core box)"
    )
    parser.add_argument(
        "--estimate-lengths",
        action="store_true",
        help="let the attack read the lengths from the update (default: known, as in the papers)",
    )
    parser.add_argument("--seed", type=int, default=101, help="sampling seed (the papers: 101)")
    parser.add_argument(
        "--time-step",
        type=int,
        metavar="N",
        help="time N optimisation steps (split into forward, gradients, distance, backward) and "
        "the scoring of --candidates dummy batches on the first batch of each dataset, with "
        "every parameter exposed; run no attack",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=4,
        help="dummy batches scored at once by --time-step (every other round)",
    )
    parser.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="with --time-step: also time the objective and distances of this source tree "
        "(e.g. git archive REV src | tar -x -C DIR, then DIR/src), alternating in one process",
    )
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.merge:
        merged = merge(args.merge)
        print(markdown(merged), file=sys.stderr)
        text = json.dumps(merged, indent=1)
        print(text)
        return json.loads(text)
    torch.set_num_threads(args.threads)

    if args.time_step and args.recipe == "dager":
        raise SystemExit("--time-step times the optimisation engine; pick an optimisation recipe")
    if args.recipe == "dager" and args.views != ["all"]:
        raise SystemExit("--recipe dager reads the full update; pass --views all")
    preset = {} if args.recipe == "dager" else PRESETS[args.preset]
    options = {**preset, **(parse_options(args.option) or {})}
    task = "seq_class"
    public = load_model(args.model, task=task, seed=args.seed)
    results = {
        "benchmark": "optimization",
        "model": args.model,
        "recipe": args.recipe,
        "batch_size": args.batch_size,
        "preset": args.preset,
        "options": options,
        "skip": args.skip,
        "block": args.block,
        "known_lengths": not args.estimate_lengths,
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
        "datasets": {},
    }
    for dataset in args.datasets:
        source = load_texts(dataset, split="train")
        batches = sample_batches(
            source,
            protocol="lamp",
            batch_size=args.batch_size,
            n_batches=args.skip + args.sentences,
            seed=args.seed,
        )[args.skip :]
        print(f"{dataset}: {len(batches)} batches of {args.batch_size}", file=sys.stderr)
        if args.time_step:
            timing = time_step(
                public,
                batches[0],
                recipe=args.recipe,
                options=options,
                repeats=args.time_step,
                candidates=args.candidates,
                baseline=args.baseline_src,
            )
            results.setdefault("timing", {})[dataset] = timing
            for version in ("current", "baseline"):
                if version in timing:
                    t = timing[version]
                    print(
                        f"  {version:>8}: s / step {t['median_seconds_per_step']:.3f} ("
                        + ", ".join(f"{k} {v:.3f}" for k, v in t["median_parts"].items())
                        + f") | s / candidate {t['median_seconds_per_candidate'] or 0:.3f}",
                        file=sys.stderr,
                    )
            continue
        results["datasets"][dataset] = [
            run_view(
                public,
                batches,
                view=v,
                block=args.block,
                recipe=args.recipe,
                options=options,
                known_lengths=not args.estimate_lengths,
            )
            for v in args.views
        ]
    if results["datasets"]:
        print(markdown(results), file=sys.stderr)
    text = json.dumps(results, indent=1, default=float)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
