"""Exact inversion of decoders from one exposed linear layer, at any depth.

Li, Xu and Dras (EMNLP 2024) show that the gradient of one layer, or one linear component, leaks
text to an optimisation attack. An attacker who knows the weights can do it exactly: grow
prefixes token by token, testing every vocabulary token against the span of the exposed layer's
gradient, with each candidate propagated through the blocks before it (KV cache, one token's work
per candidate). No block-0 gradient is needed, so there are no token sets: every step scans the
whole vocabulary for every live prefix.

Which layer, when several are exposed (pitfalls measured on SmolLM2):

- q alone never sees a causal model's first token (its first query attends to one key, so its
  gradient is zero), and in deep blocks MLP gradients barely see first tokens: stack q, k and v
  of a block, or use k/v, whenever they are exposed;
- in the last block only pooled rows (classification) or no rows (next-token targets) carry q and
  MLP gradients, so the last block is used only when nothing else is exposed.

Results are certified exactly as DAGER's are: every position passed the span test with a
threshold read from the data, and a saturated span turns everything best-effort.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from gradleak.attacks.base import Attack, Reconstruction, RecoveredSequence
from gradleak.attacks.budget import Deadline
from gradleak.attacks.dager.accounting import out_of_time
from gradleak.attacks.dager.completeness import cut_short, unexplained_rows
from gradleak.attacks.dager.decoder import Gate, search_prefixes
from gradleak.attacks.dager.oracle import SpanOracle, build_oracle
from gradleak.attacks.dager.spans import vocabulary
from gradleak.attacks.thresholds import largest_gap_split
from gradleak.attacks.verdict import Assurance, Cause, CauseKind
from gradleak.errors import GradientNotExposedError, UnsupportedFamilyError
from gradleak.models.families import ArchitectureFamily
from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate

#: Role groups that share one input, in order of preference within a block.
ROLE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("q", "k", "v"),
    ("o",),
    ("mlp_gate", "mlp_in"),
    ("mlp_out",),
)


@dataclass(frozen=True)
class LayerSpanConfig:
    """Settings of :class:`LayerSpan`.

    Attributes:
        block: block of the oracle layer; None picks the shallowest exposed non-last block.
        roles: roles forming the oracle (one input); None picks by :data:`ROLE_GROUPS`.
        tau: acceptance threshold; None derives it from the first-token scan.
        max_length: longest sequence searched.
        chunk_size: candidates per forward pass.
        max_frontier: most prefixes kept per step (more makes the result best-effort).
        time_budget: seconds the search may run; then the live prefixes are returned
            best-effort. None: no limit.
    """

    block: int | None = None
    roles: tuple[str, ...] | None = None
    tau: float | None = None
    max_length: int = 64
    chunk_size: int = 8192
    max_frontier: int = 256
    time_budget: float | None = 600.0


def choose_layer(family: ArchitectureFamily, exposed: set[str]) -> tuple[int, tuple[str, ...]]:
    """Returns (block, roles) of the best exposed oracle layer; see the module docstring.

    Raises:
        GradientNotExposedError: no block linear layer is exposed.
    """
    last = family.num_blocks - 1
    for blocks in (range(last), [last]):
        for block in blocks:
            for group in ROLE_GROUPS:
                roles = tuple(
                    r
                    for r in group
                    if _has(family, block, r)
                    and family.linear_layer(block, r).weight_name in exposed
                )
                if roles:
                    return block, roles
    raise GradientNotExposedError(
        "the update shares no linear layer of any block; expose at least one "
        "(e.g. --expose 'blocks=5 roles=k,v')."
    )


def _has(family: ArchitectureFamily, block: int, role: str) -> bool:
    try:
        family.linear_layer(block, role)
    except KeyError:
        return False
    return True


class LayerSpan(Attack):
    """Exact prefix search against the span of one exposed linear layer (GPT-2 and LLaMA-like)."""

    name = "layer-span"

    def __init__(self, config: LayerSpanConfig | None = None) -> None:
        self.config = config or LayerSpanConfig()

    def __repr__(self) -> str:
        return f"LayerSpan({self.config})"

    def reconstruct(self, public: PublicModel, update: ClientUpdate) -> Reconstruction:
        """Returns the sequences whose every prefix passes the chosen layer's span test."""
        cfg, family = self.config, public.family
        deadline = Deadline(cfg.time_budget)
        if not family.causal:
            raise UnsupportedFamilyError(
                f"layer-span grows prefixes, which needs a causal model; {family.name} is an "
                "encoder: use dager."
            )
        gradients = update.gradients()
        started = time.perf_counter()
        block, roles = (
            (cfg.block, cfg.roles)
            if cfg.block is not None and cfg.roles
            else choose_layer(family, set(gradients))
        )
        oracle = build_oracle(family, gradients, block, roles=roles)
        timings: dict[str, float] = {"svd": time.perf_counter() - started}
        vocab = vocabulary(public)

        started = time.perf_counter()
        tau = (
            cfg.tau
            if cfg.tau is not None
            else _first_token_threshold(oracle, vocab, cfg.chunk_size)
        )
        timings["calibration"] = time.perf_counter() - started
        diagnostics: dict[str, Any] = {
            "layer": f"{block}.{'+'.join(roles)}",
            "rank": oracle.basis.rank,
            "gap_decades": round(oracle.basis.gap_decades, 2),
            "tau": tau,
            "seconds": timings,
        }
        started = time.perf_counter()
        search = search_prefixes(
            [Gate(oracle, tau)],
            tokens_at=lambda _: vocab,
            max_length=cfg.max_length,
            chunk_size=cfg.chunk_size,
            max_frontier=cfg.max_frontier,
            deadline=deadline,
        )
        timings["search"] = time.perf_counter() - started
        diagnostics["prefix_accepted"] = search.accepted

        causes: tuple[Cause, ...] = ()
        if oracle.basis.saturated:
            saturated = Cause(
                CauseKind.SATURATED,
                block=block,
                count=oracle.basis.in_features,
                detail="/".join(roles),
            )
            causes = (saturated,)
        if search.truncated:
            causes = (*causes, Cause(CauseKind.FRONTIER_CUT))
        found = [ids for ids, _ in search.sequences]
        unexplained = 0 if causes else unexplained_rows(oracle.basis.rank, found)
        diagnostics["unexplained_rows"] = unexplained
        shortened = cut_short(public, gradients, found, unexplained=unexplained)
        sequences = tuple(
            RecoveredSequence(
                ids,
                public.tokenizer.decode(list(ids)),
                Assurance((*causes, *([shortened[ids]] if ids in shortened else []))),
                res,
            )
            for ids, res in search.sequences
        )
        batch = causes
        if unexplained:
            detail = (
                f"block {block}'s span holds {unexplained} row(s) no recovered sequence explains"
            )
            batch = (*batch, Cause(CauseKind.MISSING_SEQUENCES, detail=detail))
        if not sequences:
            batch = (*causes, Cause(CauseKind.NO_TOKENS, block=block))
            if block == family.num_blocks - 1:
                diagnostics["hint"] = (
                    "in the last block only pooled or no rows carry gradients: "
                    "expose an earlier block"
                )
        result = Reconstruction(self.name, sequences, causes=batch, diagnostics=diagnostics)
        return out_of_time(result, deadline) if deadline.expired() else result


def _first_token_threshold(oracle: SpanOracle, vocab: torch.Tensor, chunk_size: int) -> float:
    """Returns the threshold between true first tokens and the rest of the vocabulary."""
    residuals = torch.cat(
        [
            oracle.residuals(oracle.probe.start(chunk[:, None])[0]).flatten().cpu()
            for chunk in vocab.split(chunk_size)
        ]
    )
    split = largest_gap_split(residuals)
    if split is None:
        return 0.0
    return split.threshold()
