"""DP-SGD through Opacus: per-example clipping and Gaussian noise, as Opacus' optimiser applies
them.

The shared gradient is exactly what Opacus' ``DPOptimizer`` holds after ``pre_step()``: per-example
gradients (Opacus ``GradSampleModule``, hooks mode) clipped to norm C, summed, plus noise of std
sigma*C from a seeded generator, divided by the mini-batch size. So the noise std on the shared
mean gradient is sigma*C/b. Epsilon comes from Opacus' accountant for the stated sampling rate,
steps and delta. Nothing is hand-rolled: only the reading of ``p.grad`` before the wrapped
optimiser's step (which the simulated client takes itself, see :mod:`gradleak.client.fedavg`).

Pitfall avoided (partial-gradients' ``dpsgd_defense.py``): reading ``p.grad`` right after
``backward()`` gives the clean gradient, because Opacus privatises only in ``pre_step``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from gradleak.client._optional import require
from gradleak.client.defences.base import TrainingDefence, seeded_generator
from gradleak.client.tasks import encode, example_losses
from gradleak.models.grad_scope import only_grad_for

if TYPE_CHECKING:
    from gradleak.client.settings import ClientSettings
    from gradleak.data.batch import Batch
    from gradleak.models.loading import PublicModel


def dp_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float | None:
    """Returns epsilon from Opacus' accountant for ``steps`` steps at this rate; None if sigma is 0.

    Raises:
        MissingDependencyError: Opacus is not installed.
    """
    if noise_multiplier == 0:
        return None  # no noise: no finite guarantee
    accountants = require("opacus.accountants")
    acc = accountants.create_accountant(mechanism=accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta=delta))


@dataclass(frozen=True)
class DPSGD(TrainingDefence):
    """DP-SGD (Abadi et al., CCS 2016): per-example clipping and noise through Opacus.

    Attributes:
        noise_multiplier: sigma; the noise std on the clipped sum is sigma * max_grad_norm.
        max_grad_norm: per-example clipping bound C.
        delta: delta at which epsilon is reported.
        sample_rate: sampling rate stated to the accountant; None: mini-batch size / batch size.
        steps: steps stated to the accountant; None: the DP steps of this update.
        accountant: ``rdp``, ``prv`` or ``gdp``.
        seed: seeds the noise generator (secret: not recorded in the metadata).
    """

    name: ClassVar[str] = "dp-sgd"

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    sample_rate: float | None = None
    steps: int | None = None
    accountant: str = "rdp"
    seed: int = field(default=0, repr=False)

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> DPSGD:
        return cls(
            noise_multiplier=settings.noise_multiplier,
            max_grad_norm=settings.clip,
            delta=settings.dp_delta,
            sample_rate=settings.dp_sample_rate,
            steps=settings.dp_steps,
            accountant=settings.dp_accountant,
            seed=settings.noise_seed,
        )

    @contextmanager
    def attach(
        self,
        public: PublicModel,
        names: Sequence[str],
        *,
        train_mode: bool = False,
        max_length: int | None = None,
    ) -> Iterator[DPGradient]:
        """Yields a function batch -> privatised gradients of ``names``; Opacus is detached after.

        Only ``names`` require gradients meanwhile; the model's weights are never changed here.
        """
        opacus = require("opacus")
        optimizers = require("opacus.optimizers")
        model = public.model
        params = dict(model.named_parameters())
        with only_grad_for(model, set(names)), _opacus_mode(model, train=train_mode):
            gsm = opacus.GradSampleModule(
                model, batch_first=True, loss_reduction="mean", strict=False
            )
            try:
                optimizer = optimizers.DPOptimizer(
                    torch.optim.SGD([params[n] for n in names], lr=0.0),
                    noise_multiplier=self.noise_multiplier,
                    max_grad_norm=self.max_grad_norm,
                    expected_batch_size=1,
                    # Opacus draws noise on each parameter's device, so the generator lives there
                    # too.
                    generator=seeded_generator(
                        self.seed, self.name, device=params[names[0]].device
                    ),
                )
                yield DPGradient(
                    public, optimizer, {n: params[n] for n in names}, max_length=max_length
                )
            finally:
                gsm.cleanup()
                for p in params.values():
                    for attr in ("summed_grad", "grad_sample"):
                        if hasattr(p, attr):
                            delattr(p, attr)
                model.zero_grad(set_to_none=True)

    def record(self, *, steps: int, mini_batch: int, batch_size: int) -> dict[str, Any]:
        """Returns the metadata entry: parameters, the noise std on the mean gradient and
        epsilon."""
        sample_rate = self.sample_rate if self.sample_rate is not None else mini_batch / batch_size
        accounted = self.steps if self.steps is not None else steps
        opacus = require("opacus")
        return {
            **self.describe(),
            "sample_rate": sample_rate,
            "steps": accounted,
            "noise_std_mean_gradient": noise_std_mean_gradient(
                self.noise_multiplier, self.max_grad_norm, mini_batch
            ),
            "epsilon": dp_epsilon(
                noise_multiplier=self.noise_multiplier,
                sample_rate=sample_rate,
                steps=accounted,
                delta=self.delta,
                accountant=self.accountant,
            ),
            "opacus_version": opacus.__version__,
        }


class DPGradient:
    """Computes privatised gradients with an attached Opacus optimiser (see
    :meth:`DPSGD.attach`)."""

    def __init__(
        self,
        public: PublicModel,
        optimizer: Any,
        params: dict[str, nn.Parameter],
        *,
        max_length: int | None,
    ) -> None:
        self.public, self.optimizer, self.params, self.max_length = (
            public,
            optimizer,
            params,
            max_length,
        )
        self.steps = 0
        #: Fraction of examples whose gradient norm exceeded C, per step.
        self.clipped_fractions: list[float] = []

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Returns the clipped, noised, averaged gradient of ``batch`` (Opacus' ``p.grad`` after
        pre_step)."""
        inputs = encode(self.public, batch.texts, max_length=self.max_length, targets=batch.targets)
        n, length = inputs["input_ids"].shape
        # Per-example position-embedding gradients need batched ids (else Opacus' clip fails).
        inputs["position_ids"] = torch.arange(length).expand(n, length)
        self.optimizer.expected_batch_size = n
        self.optimizer.zero_grad(set_to_none=True)
        with (
            warnings.catch_warnings()
        ):  # Opacus' full backward hook on the embedding (integer inputs)
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            example_losses(self.public, inputs, batch.labels).mean().backward()
        self.clipped_fractions.append(
            _clipped_fraction(self.optimizer.grad_samples, self.optimizer.max_grad_norm)
        )
        if not self.optimizer.pre_step():
            raise RuntimeError(
                "Opacus skipped the step; gradient accumulation is not supported here"
            )
        grads = {name: p.grad.detach().clone() for name, p in self.params.items()}
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return grads


def _clipped_fraction(grad_samples: list[torch.Tensor], clip: float) -> float:
    norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in grad_samples], dim=1).norm(
        dim=1
    )
    return float((norms > clip).float().mean())


@contextmanager
def _opacus_mode(model: nn.Module, *, train: bool):
    """Opacus records activations only in training mode; keep dropout off unless ``train``."""
    saved = {m: m.training for m in model.modules()}
    try:
        model.train(train)
        if not train:  # modules that own parameters (Linear, Embedding, norms) never use dropout
            for module in model.modules():
                if next(module.parameters(recurse=False), None) is not None:
                    module.train(True)
        yield
    finally:
        for module, mode in saved.items():
            module.training = mode


def noise_std_mean_gradient(
    noise_multiplier: float, max_grad_norm: float, batch_size: int
) -> float:
    """Returns the std of the noise on each entry of the shared mean gradient: sigma*C/b."""
    return noise_multiplier * max_grad_norm / batch_size
