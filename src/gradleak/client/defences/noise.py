"""Plain Gaussian noise on the shared tensors, without clipping or accounting (DAGER App. C.4).

This is the setting the DAGER paper calls "DP": N(0, sigma^2) added to every entry of the
client's gradients. It gives no formal guarantee; use :mod:`gradleak.client.defences.dp_sgd`
for DP-SGD with an accountant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from gradleak.client.defences.base import UpdateDefence, seeded_generator

if TYPE_CHECKING:
    from gradleak.client.settings import ClientSettings


def add_gaussian_noise(
    tensors: Mapping[str, torch.Tensor], *, sigma: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Returns each tensor plus independent N(0, sigma^2) noise, drawn in the mapping's order.

    Noise is drawn on the CPU in float32, so a seed gives the same noise on every device.
    """
    noised = {}
    for name, tensor in tensors.items():
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * sigma
        noised[name] = tensor + noise.to(device=tensor.device, dtype=tensor.dtype)
    return noised


@dataclass(frozen=True)
class GaussianNoise(UpdateDefence):
    """Adds N(0, sigma^2) to every shared entry (DAGER's noise defence).

    Attributes:
        sigma: the noise std (DAGER Table 10: 1e-5 to 5e-4).
        seed: seeds the noise (secret: not recorded in the metadata).
    """

    name: ClassVar[str] = "noise"

    sigma: float = 1e-4
    seed: int = field(default=0, repr=False)

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> GaussianNoise:
        return cls(sigma=settings.sigma, seed=settings.noise_seed)

    def transform(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return add_gaussian_noise(
            tensors, sigma=self.sigma, generator=seeded_generator(self.seed, self.name)
        )
