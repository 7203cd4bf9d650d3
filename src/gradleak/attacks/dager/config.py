"""DAGER's settings, defaulting to data-driven choices with the paper's values as expert overrides."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DagerConfig:
    """Settings of :class:`gradleak.attacks.dager.Dager`.

    Attributes:
        sequence_block: block whose q/k/v gradients test prefixes (paper: the second, 1); the
            token sets always come from block 0, the only block whose input is one token.
        rank: force the basis rank (expert override; default: the spectrum's largest gap).
        rank_tol: keep singular values above ``rank_tol * s_max`` (expert override).
        rank_cutoff: cap the rank at ``d - rank_cutoff`` so the span never fills the space
            (the paper's Delta-b = 20); used only where the span is saturated.
        tau1: token acceptance threshold (paper: 1e-5); None derives it from the scan.
        tau2: prefix acceptance threshold (paper: 1e-3); None derives it from the gradients.
        max_length: longest sequence searched, in tokens.
        chunk_size: candidate rows per forward pass (bounds memory).
        max_frontier: most prefixes kept per step; beyond it the lowest residuals are kept and
            the result is best-effort.
        screen: screen decoder candidates with block 0's attention output (its ``o`` input) before
            the certifying block-1 test, when the update exposes it; much faster, same certificate.
        encoder_restarts: random restarts of the encoder search per sequence length.
        seed: seeds the encoder search's restarts.
    """

    sequence_block: int = 1
    rank: int | None = None
    rank_tol: float | None = None
    rank_cutoff: int = 20
    tau1: float | None = None
    tau2: float | None = None
    max_length: int = 512
    chunk_size: int = 4096
    max_frontier: int = 2048
    screen: bool = True
    encoder_restarts: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sequence_block < 1:
            raise ValueError(f"DagerConfig: sequence_block must be 1 or deeper, got {self.sequence_block}")
        for name in ("chunk_size", "max_frontier", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"DagerConfig: {name} must be positive, got {getattr(self, name)}")
