"""A continuous subspace attack (after TIGER, 2026): tokens chosen by their distance to the spans.

DAGER tests membership: a true row lies in the span, a wrong one does not. Where the update is
rounded (int8), noised or drifting, no such test separates them; but true rows still lie nearer
the spans than wrong ones. This attack measures that distance instead of testing it: for each
position it optimises the continuous input (a mixture of token embeddings) towards the spans of
blocks 0..L, snaps it to tokens, and grows each sequence with the candidates that stand farthest
out of a null sample of wrong tokens. Decoders only (prefixes are scored with the model's cache).

Nothing it returns is certified: every sequence carries the :attr:`CauseKind.SUBSPACE` cause, the
update's own (rounding, noise, drift), and a confidence
(:mod:`gradleak.attacks.subspace.confidence`).
"""

from __future__ import annotations

import time
from typing import Any

from gradleak.attacks.base import Attack, Reconstruction, RecoveredSequence
from gradleak.attacks.budget import Deadline
from gradleak.attacks.dager.plan import lossy_rounding, noisy_defence
from gradleak.attacks.dager.spans import vocabulary
from gradleak.attacks.subspace.confidence import confidence
from gradleak.attacks.subspace.config import SubspaceConfig
from gradleak.attacks.subspace.prior import NextTokenPrior
from gradleak.attacks.subspace.search import Evidence, grow
from gradleak.attacks.subspace.spans import projected_span, sample_rows
from gradleak.attacks.verdict import Cause, CauseKind, best_effort
from gradleak.models.loading import PublicModel
from gradleak.models.probe import LinearInputProbe
from gradleak.update import ClientUpdate

_ENCODERS = (
    "the subspace search grows prefixes with the model's cache, which needs a causal model; "
    "use dager for encoders"
)


class Subspace(Attack):
    """Continuous subspace search for decoders: ranked, never certified, with a confidence."""

    name = "subspace"

    def __init__(self, config: SubspaceConfig | None = None) -> None:
        self.config = config or SubspaceConfig()

    def __repr__(self) -> str:
        return f"Subspace({self.config})"

    def reconstruct(self, public: PublicModel, update: ClientUpdate) -> Reconstruction:
        """Returns the sequences grown from ``update``, each best-effort with its confidence."""
        return self.attack_gradients(public, update, Deadline(self.config.time_budget))

    def attack_gradients(
        self, public: PublicModel, update: ClientUpdate, deadline: Deadline
    ) -> Reconstruction:
        """Returns what the search grows from ``update`` before ``deadline``."""
        cfg, family = self.config, public.family
        causes = update_causes(update)
        if not family.causal:
            unsupported = Cause(CauseKind.UNSUPPORTED, detail=_ENCODERS)
            return Reconstruction(self.name, (), causes=(*causes, unsupported))
        started = time.perf_counter()
        evidence = read_evidence(public, update, cfg)
        timings: dict[str, float] = {"spans": time.perf_counter() - started}
        prior = NextTokenPrior.load(cfg.prior, public.tokenizer) if cfg.prior else None
        started = time.perf_counter()
        count = cfg.batch_size or update.metadata.batch_size
        grown, estimate = grow(
            evidence, cfg, count=count, prior=prior, deadline=deadline, timings=timings
        )
        timings["search"] = time.perf_counter() - started
        own = Cause(CauseKind.SUBSPACE, block=evidence.layers[-1].block if evidence.layers else 0)
        verdict = best_effort(*causes, own)
        vocab_size = len(evidence.vocab)
        sequences = tuple(
            RecoveredSequence(
                g.ids,
                public.tokenizer.decode(list(g.ids)),
                verdict,
                residuals=g.zs,
                confidence=confidence(g.zs, vocab_size),
            )
            for g in grown
        )
        batch_causes: tuple[Cause, ...] = causes
        if deadline.expired():
            batch_causes = (*batch_causes, Cause(CauseKind.TIME_BUDGET, count=_seconds(cfg)))
        positions = max(1.0, timings.get("positions", 0.0))
        diagnostics: dict[str, Any] = {
            "search": "subspace",
            "family": family.name,
            "rank": {str(s.block): s.rank for s in evidence.spans},
            "batch_estimate": estimate,
            "seconds_per_position": timings["search"] / positions,
            "seconds": timings,
        }
        return Reconstruction(
            self.name,
            sequences,
            causes=tuple(dict.fromkeys(batch_causes)),
            diagnostics=diagnostics,
        )


def update_causes(update: ClientUpdate) -> tuple[Cause, ...]:
    """Returns the causes the update's arithmetic states (noise, rounding, local steps)."""
    meta = update.metadata
    causes = []
    noise = noisy_defence(meta.defence)
    if noise:
        causes.append(Cause(CauseKind.NOISE, detail=f"{noise} defence"))
    rounding = lossy_rounding(meta.dtype, meta.defence)
    if rounding:
        causes.append(Cause(CauseKind.LOSSY_UPDATE, detail=rounding))
    if meta.kind == "weight_delta" and meta.local_steps != 1:
        causes.append(Cause(CauseKind.DRIFT, count=meta.local_steps or None))
    return tuple(causes)


def read_evidence(public: PublicModel, update: ClientUpdate, config: SubspaceConfig) -> Evidence:
    """Returns the projected spans of blocks 0..depth and the probes that compute their rows."""
    family, gradients = public.family, update.gradients()
    vocab = vocabulary(public)
    depth = min(config.depth, family.num_blocks - 1)
    layers = [family.linear_layer(block, "q") for block in range(depth + 1)]
    samples = sample_rows(family, layers, vocab, seed=config.seed)
    meta = update.metadata
    noisy = bool(noisy_defence(meta.defence)) or (
        meta.kind == "weight_delta" and meta.local_steps != 1
    )
    spans = [
        projected_span(
            family,
            gradients,
            block,
            samples[layer],
            rank=config.rank,
            rank_cutoff=config.rank_cutoff,
            noisy=noisy,
        )
        for block, layer in enumerate(layers)
    ]
    probe_layers = [span.layer for span in spans]
    return Evidence(
        token=spans[0],
        layers=spans[1:],
        probe=LinearInputProbe(family, probe_layers),
        token_probe=LinearInputProbe(family, [spans[0].layer]),
        vocab=vocab,
        per_position=family.positions == "learned",
        chunk_size=config.chunk_size,
    )


def _seconds(config: SubspaceConfig) -> int | None:
    return int(config.time_budget) if config.time_budget is not None else None
