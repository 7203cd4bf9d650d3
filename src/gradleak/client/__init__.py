"""The victim side: what a federated client computes from its private batch and shares.

Names are imported on first use, so ``from gradleak.client import ClientSettings`` (the command
line's option table) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradleak.client.exposure import Exposure
    from gradleak.client.fedavg import compute_fedavg_update, local_sgd, minibatch_slices
    from gradleak.client.fedsgd import batch_gradient, compute_update
    from gradleak.client.frozen import embedding_names, trainable_names
    from gradleak.client.lora import LoraSpec, apply_lora, lora_modules, warm_start
    from gradleak.client.settings import ClientSettings, ClientSettingsError
    from gradleak.client.simulate import prepare_model, simulate_update
    from gradleak.client.tasks import encode, example_losses, task_loss

_MODULE_OF = {
    "ClientSettings": "settings",
    "ClientSettingsError": "settings",
    "Exposure": "exposure",
    "LoraSpec": "lora",
    "apply_lora": "lora",
    "batch_gradient": "fedsgd",
    "compute_fedavg_update": "fedavg",
    "compute_update": "fedsgd",
    "embedding_names": "frozen",
    "encode": "tasks",
    "example_losses": "tasks",
    "local_sgd": "fedavg",
    "lora_modules": "lora",
    "minibatch_slices": "fedavg",
    "prepare_model": "simulate",
    "simulate_update": "simulate",
    "task_loss": "tasks",
    "trainable_names": "frozen",
    "warm_start": "lora",
}

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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'gradleak.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gradleak.client.{module}"), name)
