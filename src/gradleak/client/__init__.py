"""The victim side: what a federated client computes from its private batch and shares."""

from gradleak.client.exposure import Exposure
from gradleak.client.fedavg import compute_fedavg_update, local_sgd, minibatch_slices
from gradleak.client.fedsgd import batch_gradient, compute_update
from gradleak.client.frozen import embedding_names, trainable_names
from gradleak.client.lora import LoraSpec, apply_lora, lora_modules, warm_start
from gradleak.client.settings import ClientSettings, ClientSettingsError
from gradleak.client.simulate import prepare_model, simulate_update
from gradleak.client.tasks import encode, example_losses, task_loss

__all__ = [
    "ClientSettings",
    "ClientSettingsError",
    "Exposure",
    "LoraSpec",
    "apply_lora",
    "batch_gradient",
    "compute_fedavg_update",
    "compute_update",
    "embedding_names",
    "encode",
    "example_losses",
    "local_sgd",
    "lora_modules",
    "minibatch_slices",
    "prepare_model",
    "simulate_update",
    "task_loss",
    "trainable_names",
    "warm_start",
]
