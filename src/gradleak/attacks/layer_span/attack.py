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

Candidates are tested in the public model's own next-token order where it has a language-model
head (``order="lm"``, :mod:`gradleak.attacks.layer_span.ordered`): the likeliest first, widened
only while the span's rank shows rows unexplained, up to the whole vocabulary. ``order="none"``
scans the whole vocabulary at every step (:func:`gradleak.attacks.dager.decoder.search_prefixes`).

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
from gradleak.attacks.dager.decoder import SAME_ROW, Gate, search_prefixes
from gradleak.attacks.dager.oracle import SpanOracle, build_oracle
from gradleak.attacks.dager.spans import vocabulary
from gradleak.attacks.layer_span.ordered import OrderedSettings, ordered_search
from gradleak.attacks.layer_span.prior import (
    CONTEXTS,
    NextTokenRanking,
    context_ids,
    end_ids,
    has_next_token_head,
)
from gradleak.attacks.thresholds import largest_gap_split
from gradleak.attacks.verdict import Assurance, Cause, CauseKind
from gradleak.errors import GradientNotExposedError, UnsupportedFamilyError
from gradleak.models.families import ArchitectureFamily
from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate

#: How candidates are ordered (see ``LayerSpanConfig.order``).
ORDERS = ("lm", "none")

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
        order: ``lm`` tests candidates in the public model's next-token order (where it has a
            language-model head: a causal LM, or tied embeddings), ``none`` scans the whole
            vocabulary at every step.
        tiers: ranking heads tested in turn (increasing): each prefix tests the first; the rest
            are tried only while the span's rank shows rows unexplained.
        reference: random vocabulary tokens scored beside position 0's head, as the false
            cluster the threshold is read against.
        full_scan: after the last tier, widen to the whole vocabulary while rows are
            unexplained; off, such rows make the result best-effort instead.
        context: what the ranking conditions the first token on: ``chat`` (the tokenizer's chat
            template up to a user message), ``bos`` (its start token), ``none``, or ``auto``
            (chat where the tokenizer has a template, else bos).
        seed: draws the reference sample.
    """

    block: int | None = None
    roles: tuple[str, ...] | None = None
    tau: float | None = None
    max_length: int = 64
    chunk_size: int = 8192
    max_frontier: int = 256
    time_budget: float | None = 600.0
    order: str = "lm"
    tiers: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
    reference: int = 1024
    full_scan: bool = True
    context: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.tiers, int | list):  # -o tiers=64 or -o tiers=[32,512] (YAML)
            tiers = (self.tiers,) if isinstance(self.tiers, int) else tuple(self.tiers)
            object.__setattr__(self, "tiers", tiers)
        if self.context is False:  # YAML reads a bare "none"... and "off" as false
            object.__setattr__(self, "context", "none")
        problems = []
        if self.order not in ORDERS:
            problems.append(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.context not in CONTEXTS:
            problems.append(f"context must be one of {', '.join(CONTEXTS)}, got {self.context!r}")
        tiers = self.tiers
        if (
            not tiers
            or not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in tiers)
            or list(tiers) != sorted(set(tiers))
        ):
            problems.append(f"tiers must be increasing positive integers, got {tiers!r}")
        for name in ("reference", "max_length", "chunk_size", "max_frontier"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.full_scan, bool):
            problems.append(f"full_scan must be true or false, got {self.full_scan!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            problems.append(f"time_budget must be positive or None, got {self.time_budget!r}")
        if problems:
            raise ValueError("LayerSpanConfig: " + "; ".join(problems))


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

        diagnostics: dict[str, Any] = {
            "layer": f"{block}.{'+'.join(roles)}",
            "rank": oracle.basis.rank,
            "gap_decades": round(oracle.basis.gap_decades, 2),
            "seconds": timings,
        }
        started = time.perf_counter()
        outcome = self._search(public, update, oracle, vocab, deadline)
        timings["search"] = time.perf_counter() - started
        diagnostics.update(outcome.diagnostics, tau=outcome.threshold)

        causes: tuple[Cause, ...] = ()
        if oracle.basis.saturated:
            saturated = Cause(
                CauseKind.SATURATED,
                block=block,
                count=oracle.basis.in_features,
                detail="/".join(roles),
            )
            causes = (saturated,)
        if outcome.truncated:
            causes = (*causes, Cause(CauseKind.FRONTIER_CUT))
        found = [ids for ids, _ in outcome.sequences]
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
            for ids, res in outcome.sequences
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

    def _search(
        self,
        public: PublicModel,
        update: ClientUpdate,
        oracle: SpanOracle,
        vocab: torch.Tensor,
        deadline: Deadline,
    ) -> _Outcome:
        """Runs the search in the public model's next-token order where it ranks tokens, else
        the whole-vocabulary scan."""
        cfg = self.config
        if cfg.order == "lm" and has_next_token_head(public):
            tokenizer = public.tokenizer
            ranking = NextTokenRanking(
                public, context_ids(tokenizer, cfg.context), end_ids(tokenizer, cfg.context)
            )
            settings = _ordered_settings(cfg, update.metadata.batch_size)
            ordered = ordered_search(oracle, ranking, vocab, settings, deadline=deadline)
            return _Outcome(
                ordered.sequences,
                ordered.threshold,
                ordered.truncated,
                {
                    "order": "lm",
                    "first_scored": ordered.first_scored,
                    "tested": ordered.tested,
                    "widened": ordered.widened,
                },
            )
        started = time.perf_counter()
        tau = cfg.tau
        if tau is None:
            tau = _first_token_threshold(oracle, vocab, cfg.chunk_size)
        calibration = time.perf_counter() - started
        # Deep in the model a run of one token repeats its row only to ~5e-6, not SAME_ROW: rows
        # closer to their prefix's last one than the threshold are no evidence the test resolves.
        search = search_prefixes(
            [Gate(oracle, tau, same_row=max(SAME_ROW, tau))],
            tokens_at=lambda _: vocab,
            max_length=cfg.max_length,
            chunk_size=cfg.chunk_size,
            max_frontier=cfg.max_frontier,
            deadline=deadline,
        )
        diagnostics = {
            "order": "none",
            "prefix_accepted": search.accepted,
            "calibration_seconds": calibration,
        }
        return _Outcome(search.sequences, tau, search.truncated, diagnostics)


@dataclass(frozen=True)
class _Outcome:
    """A search's sequences (ids, residuals), its threshold, whether it cut its frontier, and
    what it reports."""

    sequences: list[tuple[tuple[int, ...], tuple[float, ...]]]
    threshold: float
    truncated: bool
    diagnostics: dict[str, Any]


def _ordered_settings(cfg: LayerSpanConfig, batch_size: int | None) -> OrderedSettings:
    return OrderedSettings(
        tiers=cfg.tiers,
        reference=cfg.reference,
        full_scan=cfg.full_scan,
        max_length=cfg.max_length,
        chunk_size=cfg.chunk_size,
        max_frontier=cfg.max_frontier,
        batch_size=batch_size,
        threshold=cfg.tau,
        seed=cfg.seed,
    )


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
