"""The subspace attack's settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SubspaceConfig:
    """Settings of :class:`gradleak.attacks.subspace.Subspace`.

    Attributes:
        depth: the deepest block whose span scores prefixes (blocks 1..depth; block 0 scores
            tokens). Deeper blocks mix more context into a row: on an int8 SmolLM2 update block 3
            ranks the true next token first twice as often as block 1.
        context_from: the shallowest block whose span scores positions after the first; None:
            block 1 where positions are learned (its rows carry the position), block 2 for rotary
            models, whose block-1 rows are mostly their token's embedding, so block 1 scores the
            batch's whole bag alike at every position (it scores first tokens well).
        rank: rank of every basis; None reads it per block: the singular values above the
            rounding floor's lower bound (a rounded update), above the noise bulk (a noised one),
            or the spectrum's largest drop (float32), capped ``rank_cutoff`` below the width.
        rank_cutoff: how far below the input width a basis must stay.
        shortlist: tokens per position closest to block 0's span, every one rescored discretely
            by blocks ``context_from``..``depth`` (the null sample's source too).
        mixture: tokens per position the continuous input mixes (block 0's closest): its
            optimised mixture proposes tokens block 0 ranks past the shortlist.
        steps: optimisation steps of the continuous input at each position (0: no continuous
            step, the shortlist alone is rescored).
        lr: the optimiser's step size on the mixture's logits.
        snap: tokens taken from each optimised mixture (its heaviest) for the rescoring.
        null: shortlist tokens rescored beside the candidates as the step's null sample; every
            candidate's z-score is read against them.
        beam: prefixes kept per sequence.
        z_stop: how many null standard deviations the best extension must stand below the null's
            mean for a sequence to go on.
        z_drop: an extension must also reach this fraction of its prefix's median z: past a
            sentence's end the best wrong token still stands several deviations out of the null
            (it is in the batch's bag) while true steps stand several times farther.
        patience: consecutive extensions short of the ``z_drop`` test a prefix may take (each
            still ``z_stop`` out); trailing ones are trimmed off the result.
        batch_size: sequences searched; None takes the disclosed batch size, else the first-token
            candidates standing ``z_stop`` below the rest.
        prior: a causal language model (a model spec) whose next-token log-probabilities break
            ties between candidates the spans score alike, and which proposes ``prior_top``
            candidates per prefix; None: no prior. It must share the victim's tokenizer.
        prior_weight: z-score units per nat of the prior's negative log-likelihood.
        prior_top: candidates the prior proposes per prefix and step.
        max_length: longest sequence grown, in tokens.
        chunk_size: candidate rows per forward pass.
        seed: seeds the null samples.
        time_budget: seconds the attack may search; then the live prefixes are returned. None:
            no limit.
    """

    depth: int = 3
    context_from: int | None = None
    rank: int | None = None
    rank_cutoff: int = 20
    shortlist: int = 128
    mixture: int = 4096
    steps: int = 4
    lr: float = 0.5
    snap: int = 8
    null: int = 48
    beam: int = 2
    z_stop: float = 3.0
    z_drop: float = 0.5
    patience: int = 2
    batch_size: int | None = None
    prior: str | None = None
    prior_weight: float = 0.3
    prior_top: int = 8
    max_length: int = 48
    chunk_size: int = 4096
    seed: int = 0
    time_budget: float | None = 600.0

    def __post_init__(self) -> None:
        for name in (
            "depth",
            "shortlist",
            "mixture",
            "snap",
            "null",
            "beam",
            "max_length",
            "chunk_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"SubspaceConfig: {name} must be positive, got {getattr(self, name)}"
                )
        for name in ("steps", "prior_top", "rank_cutoff", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"SubspaceConfig: {name} must be >= 0, got {getattr(self, name)}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"SubspaceConfig: rank must be positive or none, got {self.rank}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(
                f"SubspaceConfig: time_budget must be positive seconds or none, got "
                f"{self.time_budget}"
            )
