"""One entry point for a simulated client: settings in, the update it would share out.

The steps, in order: the round's starting model (LoRA-wrapped and warm-started if asked), the
trained parameters (exposure, frozen parts or adapters), local training (FedSGD's one gradient or
FedAvg's local SGD, each step through DP-SGD when it is among the defences), then the update
defences (noise, pruning, quantisation) in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from gradleak.client._metadata import training_metadata
from gradleak.client.defences.base import TrainingDefence, UpdateDefence
from gradleak.client.defences.registry import defence_class
from gradleak.client.exposure import Exposure
from gradleak.client.fedavg import local_sgd, plain_gradient_fn
from gradleak.client.frozen import describe_frozen, trainable_names
from gradleak.client.lora import LoraSpec, apply_lora, describe_lora, is_lora, lora_parameter_names
from gradleak.client.settings import ClientSettings
from gradleak.data.batch import Batch
from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate


def prepare_model(public: PublicModel, settings: ClientSettings) -> PublicModel:
    """Returns the public model of the round: ``public``, or its LoRA-wrapped, warm-started copy.

    Call it once and pass the result to :func:`simulate_update` for every client and to the
    attack: with LoRA the server knows the adapter it sent, so the attack needs this model.
    """
    if settings.uses_lora and not is_lora(public):
        return apply_lora(public, LoraSpec.from_settings(settings))
    return public


def simulate_update(
    public: PublicModel, batch: Batch, *, settings: ClientSettings | None = None
) -> ClientUpdate:
    """Returns the update one client shares after training on ``batch`` as ``settings`` describe.

    Args:
        public: the model the server sent; with LoRA settings, preferably the result of
            :func:`prepare_model` (otherwise the adapter is built here, and the attack cannot
            see it). Its weights are unchanged on return.
        batch: the client's private texts.
        settings: algorithm, shared parameters and defences (default: FedSGD, all, none).

    Raises:
        MissingDependencyError: DP-SGD without Opacus, or LoRA without PEFT.
        UnknownSpecError: the exposure selects nothing.
    """
    settings = settings or ClientSettings()
    start = prepare_model(public, settings)
    names, exposure, extra = _shared_parameters(start, settings)
    defences = [defence_class(name).from_settings(settings) for name in settings.defence]
    training = next((d for d in defences if isinstance(d, TrainingDefence)), None)
    fedavg = settings.algo == "fedavg"
    with _gradient_fn(start, names, settings, training) as gradient_fn:
        if fedavg:
            tensors, steps = local_sgd(
                start,
                batch,
                names=names,
                gradient_fn=gradient_fn,
                lr=settings.lr,
                epochs=settings.local_epochs,
                mini_batch=settings.mini_batch,
            )
        else:
            tensors, steps = gradient_fn(batch), 1
    facts: dict[str, Any] = {
        "learning_rate": settings.lr,
        "local_steps": steps,
        "local_epochs": settings.local_epochs,
        "mini_batch": settings.mini_batch,
    }
    metadata = training_metadata(
        start,
        kind="weight_delta" if fedavg else "gradient",
        exposure=exposure,
        batch_size=len(batch),
        train_mode=settings.train_mode,
        disclose=settings.disclose,
        facts=facts if fedavg else {},
        extra={"algo": settings.algo, **extra},
    )
    if training is not None:
        mini_batch = min(settings.mini_batch or len(batch), len(batch))
        metadata = replace(
            metadata,
            defence=training.record(steps=steps, mini_batch=mini_batch, batch_size=len(batch)),
        )
    update = ClientUpdate(tensors=tensors, metadata=metadata)
    for defence in defences:
        if isinstance(defence, UpdateDefence):
            update = defence.apply(update)
    return update


def _shared_parameters(
    public: PublicModel, settings: ClientSettings
) -> tuple[list[str], str, dict[str, Any]]:
    """Returns the trained (and shared) parameter names, the exposure text and extra metadata."""
    if is_lora(public):
        spec = LoraSpec.from_settings(settings)
        return lora_parameter_names(public), "lora", {"lora": describe_lora(public, spec)}
    exposure = Exposure.parse(settings.expose)
    names = trainable_names(
        public.family, exposure=exposure, freeze_embeddings=settings.freeze_embeddings
    )
    return names, str(exposure), {"frozen": describe_frozen(settings.freeze_embeddings)}


@contextmanager
def _gradient_fn(
    public: PublicModel,
    names: list[str],
    settings: ClientSettings,
    training: TrainingDefence | None,
) -> Iterator[Callable[[Batch], dict[str, torch.Tensor]]]:
    if training is None:
        yield plain_gradient_fn(
            public, names, train_mode=settings.train_mode, max_length=settings.max_length
        )
        return
    with training.attach(
        public, names, train_mode=settings.train_mode, max_length=settings.max_length
    ) as fn:
        yield fn
