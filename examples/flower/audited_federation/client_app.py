"""The clients: load the global weights, train on a private batch, return the new weights."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from audited_federation import task

app = ClientApp()
_models: dict[str, tuple] = {}


def _model(spec: str, dtype: str):
    if (spec, dtype) not in _models:  # built once per process, given the global weights each round
        _models[spec, dtype] = task.load_model(spec, dtype)
    return _models[spec, dtype]


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    model, tokenizer = _model(str(context.run_config["model"]), str(context.run_config["dtype"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    texts, labels = task.client_batch(
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        int(config["server-round"]),
        int(context.run_config["batch-size"]),
    )
    loss = task.train(
        model,
        tokenizer,
        texts,
        labels,
        lr=float(config["lr"]),
        local_steps=int(config["local-steps"]),
    )
    metrics = MetricRecord({"num-examples": len(texts), "train-loss": loss})
    return Message(
        RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg
    )
