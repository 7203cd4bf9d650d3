"""DAGER's settings, defaulting to data-driven choices with the paper's values as expert
overrides."""

from __future__ import annotations

from dataclasses import dataclass

#: Treatments of a noised update (see ``DagerConfig.noise``).
NOISE_MODES = ("auto", "off", "filter", "beam")
#: When the continuous subspace search runs (see ``DagerConfig.subspace``).
SUBSPACE_MODES = ("auto", "off")
#: Searches for a saturated span (see ``DagerConfig.saturated``).
SATURATED_SEARCHES = ("rank", "cap")


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
        peel: once the encoder search finds a sentence (on clean spans), take its share out of
            the gradient and search the rest of the batch on spans rebuilt from what is left
            (see :mod:`gradleak.attacks.peel`); past the hidden-size limit, take out every ranked
            sentence whose own gradient fits the update exactly and attack the rest again. Off
            searches the whole batch once, on the first spans.
        noise: how to treat a noised update (Gaussian noise or DP-SGD): ``off`` (the exact span
            test), ``filter`` (the paper's statistical filter, App. C.4), ``beam`` (gradleak's soft
            beam search) or ``auto`` (``beam`` when the update's metadata records such a defence,
            else ``off``). Results under noise are never certified.
        noise_rank: rank of every basis under noise (paper: 100); None reads it from the spectrum
            (singular values above the noise bulk, Gavish-Donoho threshold).
        noise_blocks: the deepest block whose span scores prefixes under noise (blocks 1..L).
        noise_z: z-score a candidate must reach below the mean to count as an outlier (paper: 5).
        noise_beam: beam width per recovered sequence (``beam`` only).
        noise_patience: steps without an outlier a beam prefix may take before it ends (``beam``).
        noise_screen: extensions per prefix and step that the beam scores through every block,
            its best by block 1 and block 0 (the rest only through block 0); 0 scores every one,
            as the paper's filter does (``beam`` only).
        saturated: the search for a decoder batch with more distinct rows than the hidden size:
            ``rank`` (gradleak's: candidates ranked by the MLP down-projections' spans, see
            :mod:`gradleak.attacks.dager.ranked`) or ``cap`` (the paper's: block 1's span cut to
            ``d - rank_cutoff``). ``rank`` needs a down-projection gradient among the first
            ``rank_blocks`` blocks and falls back to ``cap`` without one. Both are best-effort.
        rank_blocks: how many blocks' MLP down-projections score candidates (``rank``).
        rank_z: robust z-score below the step's median that a candidate must reach (``rank``).
        rank_branches: most extensions kept per prefix and step (``rank``).
        rank_frontier: most prefixes kept per step (``rank``), those with the best mean score;
            false branches multiply once sentences run past a few dozen tokens.
        subspace: ``auto`` lets the planner hand an update whose span tests cannot work to the
            continuous subspace search (:mod:`gradleak.attacks.subspace`): an int8-quantised
            update, a float32 multi-step delta whose spans are saturated, and a rounded or
            drifting update on which the exact search found nothing. ``off`` never does.
        subspace_prior: a causal LM spec (sharing the tokenizer) the subspace search uses as its
            prior; None: none.
        time_budget: seconds the attack may search one update; when they run out, the best
            current sequences are returned best-effort with that cause. None: no limit.
        end_descent: seconds a LoRA bag's sentences may descend their end-test residual
            (:mod:`gradleak.attacks.dager.end_descent`); 0 (the default): off. Measured on
            SmolLM2 past the rank limit it does not reach the truth from the bag's lockstep order
            (docs/RESULTS-defences.md, *LoRA*), so it is off unless asked for.
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
    peel: bool = True
    noise: str = "auto"
    noise_rank: int | None = 100
    noise_blocks: int = 4
    noise_z: float = 5.0
    noise_beam: int = 2
    noise_patience: int = 2
    noise_screen: int = 64
    saturated: str = "rank"
    rank_blocks: int = 1
    rank_z: float = 6.0
    rank_branches: int = 32
    rank_frontier: int = 256
    subspace: str = "auto"
    subspace_prior: str | None = None
    time_budget: float | None = 600.0
    end_descent: float = 0.0

    def __post_init__(self) -> None:
        if self.noise is False:  # YAML and ``-o noise=off`` read a bare "off" as false
            object.__setattr__(self, "noise", "off")
        if self.noise not in NOISE_MODES:
            raise ValueError(
                f"DagerConfig: noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}"
            )
        if self.subspace is False:  # a bare "off" reads as false
            object.__setattr__(self, "subspace", "off")
        if self.subspace not in SUBSPACE_MODES:
            raise ValueError(
                f"DagerConfig: subspace must be one of {', '.join(SUBSPACE_MODES)}, "
                f"got {self.subspace!r}"
            )
        if self.saturated not in SATURATED_SEARCHES:
            raise ValueError(
                f"DagerConfig: saturated must be one of {', '.join(SATURATED_SEARCHES)}, "
                f"got {self.saturated!r}"
            )
        for name in ("screen", "peel"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"DagerConfig: {name} must be true or false, got {getattr(self, name)!r}"
                )
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(
                f"DagerConfig: time_budget must be positive seconds or none, got {self.time_budget}"
            )
        if self.noise_screen < 0:
            raise ValueError(
                f"DagerConfig: noise_screen must be 0 or more, got {self.noise_screen}"
            )
        if self.sequence_block < 1:
            raise ValueError(
                f"DagerConfig: sequence_block must be 1 or deeper, got {self.sequence_block}"
            )
        for name in (
            "chunk_size",
            "max_frontier",
            "max_length",
            "noise_blocks",
            "noise_beam",
            "rank_blocks",
            "rank_branches",
            "rank_frontier",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"DagerConfig: {name} must be positive, got {getattr(self, name)}")
