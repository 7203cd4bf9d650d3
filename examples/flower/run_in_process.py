"""Run the audited federation on this machine, in one process, with one command.

    python examples/flower/run_in_process.py               # small GPT-2, 3 clients, 2 rounds
    python examples/flower/run_in_process.py --model smollm2-135m --lr 0.01 --rounds 1

The server app, client app and strategy are the ones ``flwr run`` would start (see
``pyproject.toml``); only the transport differs: gradleak's InProcessGrid calls each node's
ClientApp directly, with no SuperLink and no Ray. Because this is a simulation, the auditor is
also told each client's texts, so the records carry ROUGE and exact matches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: flwr brings tomli
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the app package, as `flwr run .` would install it

from audited_federation import task
from audited_federation.client_app import app as client_app
from audited_federation.server_app import run_server

from gradleak.integrations.flower import InProcessGrid


def main(argv: list[str] | None = None) -> int:
    config = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=config["model"], help="gradleak model spec.")
    parser.add_argument(
        "--dtype",
        default=config["dtype"],
        choices=["float32", "float64"],
        help="The clients' (and server's) weight dtype.",
    )
    parser.add_argument("--clients", type=int, default=3, help="Number of client nodes.")
    parser.add_argument("--rounds", type=int, default=config["num-server-rounds"])
    parser.add_argument("--batch-size", type=int, default=config["batch-size"])
    parser.add_argument("--lr", type=float, default=config["lr"], help="Clients' SGD step size.")
    parser.add_argument(
        "--local-steps",
        type=int,
        default=config["local-steps"],
        help="Local SGD steps per round (1 = FedSGD, exactly attackable).",
    )
    parser.add_argument("--out", default=config["audit-out"], help="Audit folder.")
    args = parser.parse_args(argv)

    run_config = {
        "model": args.model,
        "dtype": args.dtype,
        "num-server-rounds": args.rounds,
        "batch-size": args.batch_size,
        "lr": args.lr,
        "local-steps": args.local_steps,
        "audit-out": args.out,
    }
    nodes = [101 + i for i in range(args.clients)]
    grid = InProcessGrid({node: client_app for node in nodes}, run_config=run_config)

    def ground_truth(server_round: int, node: int) -> list[str]:
        partition = nodes.index(node)
        return task.client_batch(partition, len(nodes), server_round, args.batch_size)[0]

    run_server(grid, run_config, ground_truth=ground_truth)
    print_audit(Path(args.out))
    print(f"\nFull report: gradleak report {args.out}")
    return 0


def print_audit(out: Path) -> None:
    print(f"\n{'round':>5} {'node':>5} {'exact':>7} {'certified':>9} {'ROUGE-1':>8} {'seconds':>8}")
    for round_dir in sorted(out.glob("round-*")):
        for line in (round_dir / "records.jsonl").read_text().splitlines():
            record = json.loads(line)
            metrics = record.get("metrics", {})
            print(
                f"{record['flower']['round']:>5} {record['flower']['node_id']:>5} "
                f"{metrics.get('exact_rate', 0):>7.0%} {metrics.get('certified_rate', 0):>9.0%} "
                f"{metrics.get('rouge1', 0):>8.1f} {record['seconds']['total']:>8.1f}"
            )
            for sequence in record["reconstructions"][:8]:
                mark = "certified" if sequence["certified"] else "guess"
                print(f"{'':>13}[{mark}] {sequence['text']}")


if __name__ == "__main__":
    raise SystemExit(main())
