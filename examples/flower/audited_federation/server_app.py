"""The server: FedAvg as usual, wrapped so that gradleak audits every client's reply first."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result

from audited_federation import task
from gradleak.integrations.flower import AuditingStrategy, FlowerAuditor

app = ServerApp()


def run_server(grid: Grid, run_config: Mapping, ground_truth: Callable | None = None) -> Result:
    """Runs the federation on ``grid`` with the audit on; returns Flower's result."""
    spec = str(run_config["model"])
    dtype = str(run_config["dtype"])
    model, _ = task.load_model(spec, dtype)
    auditor = FlowerAuditor(
        spec, str(run_config["audit-out"]), dtype=dtype, ground_truth=ground_truth
    )
    strategy = AuditingStrategy(FedAvg(fraction_evaluate=0.0), auditor)
    return strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(run_config["num-server-rounds"]),
        train_config=ConfigRecord(
            {"lr": float(run_config["lr"]), "local-steps": int(run_config["local-steps"])}
        ),
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point under ``flwr run``: the server knows no client texts, so nothing is scored."""
    run_server(grid, context.run_config)
