"""The Flower integration: a real in-process round with real flwr objects, audited and unchanged."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from gradleak.errors import GradleakError, InvalidUpdateError, MissingDependencyError

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed")

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from gradleak.integrations.flower import (
    AuditingStrategy,
    FlowerAuditor,
    InProcessGrid,
    run_client_app,
    update_from_weights,
)
from gradleak.models import load_model

SPEC = "random:gpt2?n_layer=3&n_embd=64&n_head=2&n_positions=64"
TEXTS = {
    101: ["the cat sat on the mat", "a dog barked loudly"],
    102: ["rain fell all night", "we went home early"],
}
TRAIN = {"lr": 0.05, "local-steps": 1}


def client_app(texts: list[str], *, fail: bool = False) -> ClientApp:
    """A user's ClientApp: loads the global weights, trains on its texts, returns its weights."""
    app = ClientApp()
    public = load_model(SPEC)
    model, tokenizer = public.model, public.tokenizer

    @app.train()
    def train(msg: Message, context) -> Message:
        if fail:
            raise RuntimeError("out of memory")
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        config = msg.content["config"]
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        labels = torch.arange(len(texts)) % 2
        for _ in range(int(config["local-steps"])):
            optimizer.zero_grad()
            model(**batch, labels=labels).loss.backward()
            optimizer.step()
        content = {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": len(texts)}),
        }
        return Message(RecordDict(content), reply_to=msg)

    return app


def federation(strategy, apps, rounds=1):
    initial = ArrayRecord(load_model(SPEC).model.state_dict())
    return strategy.start(
        grid=InProcessGrid(apps),
        initial_arrays=initial,
        num_rounds=rounds,
        train_config=ConfigRecord(dict(TRAIN)),
    )


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_audit_recovers_each_client_exactly_and_leaves_aggregation_unchanged(tmp_path):
    auditor = FlowerAuditor(SPEC, tmp_path / "audit", ground_truth=TEXTS)
    apps = {node: client_app(texts) for node, texts in TEXTS.items()}
    audited = federation(AuditingStrategy(FedAvg(fraction_evaluate=0.0), auditor), apps, rounds=2)
    plain = federation(
        FedAvg(fraction_evaluate=0.0),
        {node: client_app(texts) for node, texts in TEXTS.items()},
        rounds=2,
    )

    for name, tensor in plain.arrays.to_torch_state_dict().items():
        assert torch.equal(audited.arrays.to_torch_state_dict()[name], tensor), name
    for round_dir in ("round-001", "round-002"):
        records = read_records(tmp_path / "audit" / round_dir / "records.jsonl")
        assert sorted(r["flower"]["node_id"] for r in records) == [101, 102]
        for record in records:
            assert record["metrics"]["exact_rate"] == 1.0, (
                round_dir,
                record["reconstructions"],
                record["reason"],
            )
            assert record["certified"] and all(record["certified"])
            assert sorted(s["text"] for s in record["reconstructions"]) == sorted(
                TEXTS[record["flower"]["node_id"]]
            )
            assert record["update"]["learning_rate"] == TRAIN["lr"]
        summary = json.loads((tmp_path / "audit" / round_dir / "summary.json").read_text())
        assert summary["exact_rate"] == 1.0 and summary["batches"] == 2


def test_audit_report_reads_the_rounds(tmp_path):
    from gradleak.report import load_runs, render_html

    auditor = FlowerAuditor(SPEC, tmp_path / "audit")  # no ground truth: unscored records
    federation(
        AuditingStrategy(FedAvg(fraction_evaluate=0.0), auditor),
        {node: client_app(texts) for node, texts in TEXTS.items()},
    )
    (run,) = load_runs([tmp_path / "audit"])
    assert run.summary["rouge1"] is None and run.summary["sequences_recovered"] == 4
    assert all("metrics" not in r for r in run.records)
    page = render_html([run])
    assert run.records[0]["reconstructions"][0]["text"] in page


def test_a_failing_client_is_skipped_and_the_round_goes_on(tmp_path):
    auditor = FlowerAuditor(SPEC, tmp_path / "audit", ground_truth=TEXTS)
    apps = {101: client_app(TEXTS[101]), 102: client_app(TEXTS[102], fail=True)}
    strategy = AuditingStrategy(FedAvg(fraction_evaluate=0.0, min_train_nodes=1), auditor)
    result = federation(strategy, apps)
    assert result.arrays is not None
    (record,) = read_records(tmp_path / "audit" / "round-001" / "records.jsonl")
    assert record["flower"]["node_id"] == 101 and record["metrics"]["exact_rate"] == 1.0


def test_one_step_delta_over_lr_is_the_gradient():
    public = load_model(SPEC, dtype=torch.float64)
    start = {k: v.clone() for k, v in public.model.state_dict().items()}
    reply = run_client_app(client_app(TEXTS[101]), ArrayRecord(start), TRAIN)
    update = update_from_weights(
        public,
        start,
        reply.content["arrays"].to_torch_state_dict(),
        learning_rate=TRAIN["lr"],
        local_steps=1,
    )

    model = load_model(SPEC).model
    model.load_state_dict(start)
    batch = public.tokenizer(TEXTS[101], return_tensors="pt", padding=True)
    model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    gradients = update.gradients()
    for name, parameter in model.named_parameters():
        if name in gradients:
            torch.testing.assert_close(
                gradients[name].float(), parameter.grad, rtol=2e-3, atol=2e-6
            )
    assert update.metadata.kind == "weight_delta" and update.metadata.local_steps == 1


def test_bad_replies_get_one_clear_sentence():
    public = load_model(SPEC)
    state = public.model.state_dict()
    with pytest.raises(InvalidUpdateError, match="unchanged"):
        update_from_weights(public, state, state)
    with pytest.raises(InvalidUpdateError, match="names a parameter"):
        update_from_weights(public, state, {"lora_A.weight": torch.zeros(2)})
    name = next(iter(dict(public.model.named_parameters())))
    with pytest.raises(InvalidUpdateError, match="shape"):
        update_from_weights(public, state, {name: torch.zeros(3)})
    nan = {name: torch.full_like(state[name], float("nan"))}
    with pytest.raises(InvalidUpdateError):
        update_from_weights(public, state, nan)


def test_a_failing_client_app_raises_from_run_client_app():
    with pytest.raises(GradleakError, match="out of memory"):
        run_client_app(client_app(TEXTS[101], fail=True), ArrayRecord({"w": torch.zeros(1)}), TRAIN)


def test_without_flwr_the_integration_says_how_to_install_it(monkeypatch):
    from gradleak.integrations.flower._require import require_flwr

    monkeypatch.setitem(sys.modules, "flwr.app", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'gradleak\[flower\]'"):
        require_flwr()


def test_the_auditor_records_the_clients_settings(tmp_path):
    import yaml

    from gradleak.client import ClientSettings
    from gradleak.integrations.flower.auditor import ClientReply

    settings = ClientSettings(expose="blocks=0", defence=("noise",), sigma=1e-5)
    auditor = FlowerAuditor(SPEC, tmp_path / "audit", client=settings)
    state = dict(auditor.public.model.state_dict())
    reply = ClientReply(node_id=7, state=state, config={"lr": 0.05, "local-steps": 3})
    (record,) = auditor.audit_round(1, state, [reply])  # unchanged weights: a record and a reason
    written = yaml.safe_load((tmp_path / "audit" / "round-001" / "config.yaml").read_text())
    assert written["expose"] == "blocks=0" and written["client"]["defence"] == ["noise"]
    assert (written["client"]["algo"], written["client"]["lr"]) == ("fedavg", 0.05)
    assert record["client"] == {**settings.to_dict(), "algo": "fedavg", "lr": 0.05}


def test_a_delta_lost_to_rounding_is_a_cause_of_its_own(tmp_path):
    from gradleak.integrations.flower.auditor import ClientReply

    auditor = FlowerAuditor(SPEC, tmp_path / "audit")
    state = {k: v.clone() for k, v in auditor.public.model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    moved = {
        k: v + 1e-7 * v.abs().mean() * torch.randn(v.shape, generator=generator)
        if v.is_floating_point()
        else v
        for k, v in state.items()
    }
    reply = ClientReply(node_id=3, state=moved, config={"lr": 1e-6, "local-steps": 1})
    (record,) = auditor.audit_round(1, state, [reply])
    assert record["update"]["rounding_noise"] > 1e-4
    assert "rounding" in [c["cause"] for c in record["causes"]]
    assert "round its delta" in record["reason"] and not any(record["certified"])
