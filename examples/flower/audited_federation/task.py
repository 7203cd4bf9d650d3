"""The federation's task: which model, which private texts each client holds, one training step.

Everything here is what a Flower user writes anyway. gradleak's model loader is used only because
SmolLM2 ships offline as a GGUF file; any transformers sequence classifier works the same way.
"""

from __future__ import annotations

import torch

from gradleak.data import load_texts
from gradleak.models import load_model as gradleak_load_model

#: The texts the clients hold: gradleak's built-in demo set of private messages, with labels.
DATASET = "demo"


def load_model(spec: str, dtype: str = "float32"):
    """Returns (model, tokenizer): the same architecture and initial weights on every side."""
    public = gradleak_load_model(
        spec, task="seq_class", num_labels=2, seed=0, dtype=getattr(torch, dtype)
    )
    return public.model, public.tokenizer


def client_batch(partition: int, num_partitions: int, server_round: int, batch_size: int):
    """Returns the (texts, labels) client ``partition`` trains on in ``server_round``.

    Each client owns every ``num_partitions``-th text of the dataset and walks through its
    share one batch per round.
    """
    source = load_texts(DATASET)
    own = list(range(partition, len(source.texts), num_partitions))
    start = ((server_round - 1) * batch_size) % max(len(own) - batch_size + 1, 1)
    chosen = own[start : start + batch_size]
    labels = source.labels or [0] * len(source.texts)
    return [source.texts[i] for i in chosen], [labels[i] for i in chosen]


def train(model, tokenizer, texts, labels, *, lr: float, local_steps: int) -> float:
    """Runs ``local_steps`` of plain SGD on the batch and returns the last loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    targets = torch.tensor(labels)
    model.eval()  # no dropout, as in the DAGER paper's clients
    for _ in range(local_steps):
        optimizer.zero_grad()
        loss = model(**batch, labels=targets).loss
        loss.backward()
        optimizer.step()
    return float(loss.detach())
