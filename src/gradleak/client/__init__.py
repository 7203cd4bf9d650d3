"""The victim side: what a federated client computes from its private batch and shares."""

from gradleak.client.exposure import Exposure
from gradleak.client.fedsgd import batch_gradient, compute_update
from gradleak.client.tasks import encode, task_loss

__all__ = ["Exposure", "batch_gradient", "compute_update", "encode", "task_loss"]
