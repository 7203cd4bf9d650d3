"""DAGER (Petrov, Dimitrov, Baader, Mueller, Vechev, NeurIPS 2024; arXiv 2405.15586).

Exact inversion of a client's gradient through the span of its linear-layer gradients:

1. block 0's attention-input span picks the batch's tokens out of the whole vocabulary
   (per position with learned positions, as one bag with RoPE);
2. block 1's span accepts prefixes (decoders) or whole sentences (encoders) built from them.

Threat model: honest-but-curious server with the model weights and tokenizer; needs the
gradients of the q, k or v projections of blocks 0 and 1; no labels, batch size or lengths.

Deviations from the reference code, each on purpose:

- Rank and thresholds come from the data (largest log-gaps of the spectrum and of the residuals),
  not the per-batch-size tolerances 1e-7/1e-8/1e-9 and thresholds 1e-5/1e-3, which fail on real
  float32 gradients; ``DagerConfig`` keeps explicit overrides.
- q, k and v gradients are stacked: a causal model's first query attends to one key only, so its
  query gradient is exactly zero and q alone never sees the first token.
- The rank cap ``d - 20`` is applied only where the span is saturated, and results are then
  flagged best-effort instead of being presented as exact.
- Candidate rows come from the model's own modules through hooks (no copied internals).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from gradleak.attacks.base import Attack, Reconstruction, RecoveredSequence
from gradleak.attacks.dager.config import DagerConfig
from gradleak.attacks.dager.decoder import Gate, search_prefixes
from gradleak.attacks.dager.encoder import search_sentences
from gradleak.attacks.dager.noisy import NOISE_REASON, noisy_defence, reconstruct_noisy
from gradleak.attacks.dager.oracle import (
    ATTENTION_INPUT_ROLES,
    SpanOracle,
    build_oracle,
    row_space_rank,
)
from gradleak.attacks.dager.placement import place_tokens
from gradleak.attacks.dager.ranked import RankingEvidence, search_ranked
from gradleak.attacks.dager.tokens import (
    TokenScan,
    embedding_bag,
    scan_tokens,
)
from gradleak.attacks.peel import peel, peel_fitting
from gradleak.attacks.span import MIN_GAP_DECADES, span_basis
from gradleak.attacks.thresholds import largest_gap_split
from gradleak.models.loading import PublicModel
from gradleak.models.probe import LinearInputProbe
from gradleak.update import ClientUpdate

logger = logging.getLogger(__name__)

#: Smallest spectral drop (decades) read as the end of a multi-step weight delta's signal: the
#: drifting inputs of later blocks blur the gap that a one-step gradient shows.
DRIFT_MIN_GAP = 0.5
#: Prefixes kept per step when a saturated span can only rank candidates, not test them.
BEST_EFFORT_FRONTIER = 256


class Dager(Attack):
    """DAGER with data-driven ranks and thresholds, for decoders (learned or rotary positions) and encoders."""

    name = "dager"

    def __init__(self, config: DagerConfig | None = None) -> None:
        self.config = config or DagerConfig()

    def __repr__(self) -> str:
        return f"Dager({self.config})"

    def reconstruct(self, public: PublicModel, update: ClientUpdate) -> Reconstruction:
        """Returns the sequences recovered from ``update``, each certified or best-effort."""
        cfg = self.config
        vocab = self._vocabulary(public)
        noise_mode, why = self._noise_mode(update)
        if noise_mode != "off":
            return reconstruct_noisy(
                public,
                update,
                cfg,
                mode=noise_mode,
                vocab=vocab,
                why=why,
                max_length=min(cfg.max_length, _max_positions(public)),
            )
        result = self._reconstruct_clean(public, update, update.gradients(), vocab)
        if result.diagnostics.get("search") == "rank" and cfg.peel:
            return self._peel_ranked(public, update, result, vocab)
        return result

    def _reconstruct_clean(
        self, public: PublicModel, update: ClientUpdate, gradients, vocab: torch.Tensor
    ) -> Reconstruction:
        """Returns what DAGER recovers from ``gradients`` (the update's, or what peeling left of them)."""
        cfg, family = self.config, public.family
        timings: dict[str, float] = {}
        started = time.perf_counter()
        why = self._noise_mode(update)[1]
        drift = _drift_reason(update)
        min_gap = DRIFT_MIN_GAP if drift else MIN_GAP_DECADES
        token_oracle = self._oracle(public, gradients, 0, vocab, min_gap=min_gap)
        sequence_oracle = self._oracle(
            public, gradients, cfg.sequence_block, vocab, min_gap=min_gap
        )
        timings["svd"] = time.perf_counter() - started

        started = time.perf_counter()
        per_position = family.positions == "learned"
        max_length = min(cfg.max_length, _max_positions(public))
        reason = self._saturation_reason(token_oracle, sequence_oracle)
        if reason and drift and update.metadata.dtype != "float32":
            reason = drift
        elif reason and drift:
            reason = (
                "the weight delta's spectrum shows no gap: over several local steps in float32 the small "
                "per-step changes are lost to rounding of the weights; let the client train in float64 "
                "(as the DAGER paper does) or attack a one-step update. Results are best-effort."
            )
        reason = NOISE_REASON.format(why) if why else reason or drift
        evidence = self._ranking_evidence(public, gradients, sequence_oracle) if not drift else None
        if evidence is not None:
            return self._reconstruct_ranked(
                public,
                gradients,
                token_oracle,
                evidence,
                vocab,
                reason=reason,
                max_length=max_length,
                timings=timings,
            )
        fallback = token_oracle.basis.rank if reason and not drift else 0
        scan = scan_tokens(
            token_oracle,
            vocab,
            per_position=per_position,
            max_length=max_length,
            tau=cfg.tau1,
            chunk_size=cfg.chunk_size,
            fallback_count=fallback,
        )
        timings["token_scan"] = time.perf_counter() - started

        diagnostics: dict[str, Any] = {
            "rank": {
                "token_block": token_oracle.basis.rank,
                "sequence_block": sequence_oracle.basis.rank,
            },
            "gap_decades": {
                "token_block": round(token_oracle.basis.gap_decades, 2),
                "sequence_block": round(sequence_oracle.basis.gap_decades, 2),
            },
            "tau1": scan.threshold,
            "tokens_per_position": [len(s) for s in scan.sets],
            "seconds": timings,
        }
        if not scan.sets:
            reason = reason or (
                "no token passed block 0's span test, so nothing can be recovered (the "
                "update may be noised or not a gradient of this model)."
            )
            return Reconstruction(self.name, (), reason=reason, diagnostics=diagnostics)

        started = time.perf_counter()
        if reason is None and cfg.tau1 is None and scan.split is None:
            reason = _no_gap_reason(0)
        tau2, clean = (
            (cfg.tau2, True)
            if cfg.tau2 is not None
            else self._sequence_threshold(sequence_oracle, scan, vocab)
        )
        if reason is None and not clean:
            reason = _no_gap_reason(cfg.sequence_block)
        diagnostics["tau2"] = tau2
        if family.causal:
            gates = [
                *self._screens(public, gradients, vocab, scan, min_gap=min_gap),
                Gate(sequence_oracle, tau2),
            ]
            diagnostics["gates"] = [f"{g.oracle.block}.{g.oracle.layer.role}" for g in gates]
            search = search_prefixes(
                gates,
                tokens_at=(lambda p: scan.sets[p] if p < len(scan.sets) else None)
                if per_position
                else (lambda p: scan.sets[0]),
                max_length=max_length,
                chunk_size=cfg.chunk_size,
                max_frontier=min(cfg.max_frontier, BEST_EFFORT_FRONTIER)
                if reason
                else cfg.max_frontier,
            )
            found = [(ids, res, tau2) for ids, res in search.sequences]
            truncated, gave_up = search.truncated, False
            diagnostics["prefix_candidates"], diagnostics["prefix_accepted"] = (
                search.candidates,
                search.accepted,
            )
        else:
            truncated = False
            found, gave_up = self._search_encoder(
                public,
                update,
                gradients,
                _EncoderSpans(sequence_oracle, scan, tau2),
                exact=reason is None and clean,
                vocab=vocab,
                min_gap=min_gap,
                max_length=max_length,
                diagnostics=diagnostics,
            )
        timings["search"] = time.perf_counter() - started

        if reason is None and truncated:
            reason = "the search kept only its best candidates (max_frontier reached); results are best-effort."
        sequences = tuple(
            RecoveredSequence(
                token_ids=ids,
                text=public.tokenizer.decode(list(ids)),
                certified=reason is None and max(res) < tau,
                residuals=res,
            )
            for ids, res, tau in found
        )
        if reason is None and gave_up:  # what was found is certified, but something may be missing
            reason = (
                "the encoder search ended before its sentences accounted for every row of block 1's span "
                "(or, where that span gives no count, before every length where [SEP] passed block 0 "
                "yielded one); sentences may be missing (raise encoder_restarts to search longer)."
            )
        if not sequences:
            reason = reason or "tokens passed block 0 but no sequence passed block 1's span test."
        return Reconstruction(self.name, sequences, reason=reason, diagnostics=diagnostics)

    def _peel_ranked(
        self, public: PublicModel, update: ClientUpdate, ranked: Reconstruction, vocab: torch.Tensor
    ) -> Reconstruction:
        """Returns the ranked search's exact sentences, peeled off the update, and what the rest yields.

        Past the hidden-size limit nothing certifies a ranked sentence, but the fit of its own
        gradient to the update's token rows (:func:`gradleak.attacks.peel.fit_share`) tells an
        exact one from a cut or wrong one. Each round peels the exact ones off and attacks the
        rest again: ranked while its spans stay saturated, with DAGER's span tests once the rest
        holds fewer rows than the hidden size. Nothing is certified, since every span test on the
        rest holds only as far as the peels before it were exact.
        """
        began = time.perf_counter()
        gradients, result, kept, rounds = update.gradients(), ranked, [], []
        while result.diagnostics.get("search") == "rank":
            started = time.perf_counter()
            by_ids = {s.token_ids: s for s in result.sequences}
            gradients, shares = peel_fitting(public, gradients, list(by_ids))
            if not shares:
                break
            kept += [by_ids[share.token_ids] for share in shares]
            rounds.append(
                {
                    "sentences": len(shares),
                    "seconds": round(time.perf_counter() - started, 3),
                    "search_seconds": result.diagnostics["seconds"].get("search", 0.0),
                }
            )
            result = self._reconstruct_clean(public, update, gradients, vocab)
        if not rounds:
            return ranked
        peeled = sum(r["sentences"] for r in rounds)
        rest_ranked = result.diagnostics.get("search") == "rank"
        rest = (
            "the rest was ranked in the same way"
            if rest_ranked
            else "the rest held fewer rows than the hidden size and went through DAGER's span tests, which "
            "hold only as far as every peel was exact"
        )
        reason = (
            f"{ranked.reason} Then {peeled} of the sequences fitted the update's token-embedding rows "
            f"exactly and were peeled off it ({len(rounds)} round(s)); {rest}."
        )
        if result.reason and not rest_ranked:
            reason += f" On the rest: {result.reason}"
        sequences = (*kept, *(replace(s, certified=False) for s in result.sequences))
        diagnostics = {**ranked.diagnostics, "peeled": rounds, "rest": result.diagnostics}
        diagnostics["seconds"] = {
            **ranked.diagnostics["seconds"],
            "peeling": time.perf_counter() - began,
        }
        return Reconstruction(self.name, sequences, reason=reason, diagnostics=diagnostics)

    def _ranking_evidence(
        self, public: PublicModel, gradients, sequence_oracle: SpanOracle
    ) -> RankingEvidence | None:
        """Returns the MLP down-projection spans that rank candidates where the sequence block is saturated.

        None when the ranked search does not apply: an encoder, an unsaturated span, ``saturated=cap``,
        or no exposed down-projection among the first ``rank_blocks`` blocks.
        """
        cfg, family = self.config, public.family
        if not family.causal or not sequence_oracle.basis.saturated or cfg.saturated != "rank":
            return None
        layers = tuple(
            layer
            for block in range(min(cfg.rank_blocks, family.num_blocks))
            if (layer := family.linear_layer(block, "mlp_out")).weight_name in gradients
        )
        if not layers:
            return None
        # Every direction the gradient has counts: the span is a strict subspace of the 4d-wide input.
        bases = tuple(
            span_basis([layer.weight_gradient(gradients)], min_gap=0.0) for layer in layers
        )
        return RankingEvidence(
            layers=layers, bases=bases, probe=LinearInputProbe(family, list(layers))
        )

    def _reconstruct_ranked(
        self,
        public: PublicModel,
        gradients,
        token_oracle: SpanOracle,
        evidence: RankingEvidence,
        vocab: torch.Tensor,
        *,
        reason: str,
        max_length: int,
        timings: dict[str, float],
    ) -> Reconstruction:
        """Returns the best-effort sequences of a saturated decoder batch, ranked by ``evidence``."""
        cfg = self.config
        started = time.perf_counter()
        # One candidate set for every position: first tokens are told apart by how far they stand out
        # from the others, which needs the others in the scan.
        candidates = embedding_bag(public.family, gradients)
        source = "embedding gradient"
        if candidates is None:
            scan = scan_tokens(
                token_oracle,
                vocab,
                per_position=public.family.positions == "learned",
                max_length=max_length,
                tau=cfg.tau1,
                chunk_size=cfg.chunk_size,
                fallback_count=token_oracle.basis.rank if token_oracle.basis.saturated else 0,
            )
            candidates, source = torch.unique(torch.cat([vocab[:0], *scan.sets])), "block-0 scan"
        timings["token_scan"] = time.perf_counter() - started
        started = time.perf_counter()
        search = search_ranked(
            evidence,
            tokens_at=lambda p: candidates,
            max_length=max_length,
            chunk_size=cfg.chunk_size,
            max_frontier=cfg.rank_frontier,
            z_accept=cfg.rank_z,
            per_prefix=cfg.rank_branches,
        )
        timings["search"] = time.perf_counter() - started
        diagnostics: dict[str, Any] = {
            "search": "rank",
            "rank": {
                "token_block": token_oracle.basis.rank,
                "ranking_layers": [f"{layer.block}.{layer.role}" for layer in evidence.layers],
            },
            "tokens": source,
            "candidate_tokens": len(candidates),
            "prefix_candidates": search.candidates,
            "prefix_accepted": search.accepted,
            "frontier_cut": search.truncated,
            "seconds": timings,
        }
        sequences = tuple(
            RecoveredSequence(
                token_ids=ids,
                text=public.tokenizer.decode(list(ids)),
                certified=False,
                residuals=scores,
            )
            for ids, scores in search.sequences
        )
        blocks = ", ".join(str(layer.block) for layer in evidence.layers)
        reason = (
            f"{reason} The sequences were grown by gradleak's ranked search: each step keeps the "
            f"candidates that the MLP down-projection span of block(s) {blocks} ranks far above the rest."
        )
        return Reconstruction(self.name, sequences, reason=reason, diagnostics=diagnostics)

    def _search_encoder(
        self,
        public: PublicModel,
        update: ClientUpdate,
        gradients,
        spans: _EncoderSpans,
        *,
        exact: bool,
        vocab: torch.Tensor,
        min_gap: float,
        max_length: int,
        diagnostics: dict[str, Any],
    ):
        """Returns ([(ids, residuals, threshold that certifies them)], whether sentences may be missing).

        On exact spans (clean gaps, block 1's rank counting the batch's rows) each sentence found
        is peeled off the gradient (:mod:`gradleak.attacks.peel`) and the search goes on with
        block 0 and block 1's spans rebuilt from the rest, which are smaller and test tokens
        cleanly again. A peel is kept only if block 1's rank then drops by exactly the sentence's
        length; otherwise the search goes on where it was.
        """
        cfg = self.config
        found, held, peeled = [], [], []
        peeling = exact and cfg.peel
        disclosed = update.metadata.batch_size
        while True:
            likely, lengths = self._placement(public, gradients, spans.scan)
            results, gave_up = search_sentences(
                spans.sequence,
                spans.scan.sets,
                tokenizer=public.tokenizer,
                threshold=spans.tau2,
                restarts=cfg.encoder_restarts,
                seed=cfg.seed,
                chunk_size=cfg.chunk_size,
                batch_size=None if disclosed is None else disclosed - len(found) + len(held),
                rows=spans.sequence.basis.rank if exact else None,
                likely=likely,
                lengths=lengths,
                first_find=peeling,
                known=held,
            )
            new = results[len(held) :]
            found += [(ids, res, spans.tau2) for ids, res in new]
            held = results
            if not (gave_up and new and peeling):
                break
            rest = self._peeled_spans(
                public,
                gradients,
                spans,
                [ids for ids, _ in new],
                vocab=vocab,
                min_gap=min_gap,
                max_length=max_length,
            )
            if rest is None:
                peeling = False
                continue
            gradients, spans = rest
            peeled.append(
                {
                    "sentences": len(new),
                    "rank_left": spans.sequence.basis.rank,
                    "tokens_per_position": [len(s) for s in spans.scan.sets],
                }
            )
            held = []
        if peeled:
            diagnostics["peeled"] = peeled
        return found, gave_up

    def _peeled_spans(
        self,
        public: PublicModel,
        gradients,
        spans: _EncoderSpans,
        sentences,
        *,
        vocab: torch.Tensor,
        min_gap: float,
        max_length: int,
    ):
        """Returns (the gradient without ``sentences``, its spans), or None unless the peel is exact."""
        left = spans.sequence.basis.rank - sum(map(len, sentences))
        peeled = peel(public, gradients, sentences) if left > 0 else None
        if peeled is None:
            return None
        rest = peeled[0]
        sequence = self._oracle(public, rest, self.config.sequence_block, vocab, min_gap=min_gap)
        if sequence.basis.saturated or sequence.basis.rank != left:
            return None
        # Block 0 has no more distinct rows than block 1 has rows; the largest gap of a peeled
        # spectrum can fall short of that, leaving weak true directions out.
        token = build_oracle(public.family, rest, 0, rank=sequence.basis.rank)
        # Rescanned to the full length: a weak true token can end the first scan early.
        scan = scan_tokens(
            token,
            vocab,
            per_position=True,
            max_length=max_length,
            tau=self.config.tau1,
            chunk_size=self.config.chunk_size,
        )
        tau2, clean = self._sequence_threshold(sequence, scan, vocab)
        if token.basis.saturated or scan.split is None or not clean or not scan.sets:
            return None
        return rest, _EncoderSpans(sequence, scan, self.config.tau2 or tau2)

    @staticmethod
    def _placement(
        public: PublicModel, gradients, scan
    ) -> tuple[tuple[torch.Tensor, ...] | None, tuple[int, ...] | None]:
        """Returns the scan's sets cut to the tokens the embedding gradients allow there, and the lengths
        the separator allows, the most likely first; (None, None) where they tell nothing
        (:func:`gradleak.attacks.dager.placement.place_tokens`)."""
        placement = place_tokens(public.family, gradients, len(scan.sets))
        if placement is None:
            return None, None
        return placement.candidates(scan.sets), placement.lengths(public.tokenizer.sep_token_id)

    def _noise_mode(self, update: ClientUpdate) -> tuple[str, str]:
        """Returns the noise search to run (``off``, ``filter`` or ``beam``) and the defence that noised the
        update ("" when the metadata records none)."""
        defence = noisy_defence(update.metadata.defence)
        mode = self.config.noise
        if mode == "auto":
            mode = "beam" if defence else "off"
        return mode, (f"{defence} defence" if defence else "")

    def _oracle(
        self,
        public: PublicModel,
        gradients,
        block: int,
        vocab: torch.Tensor,
        *,
        min_gap: float,
        roles: tuple[str, ...] = ATTENTION_INPUT_ROLES,
    ) -> SpanOracle:
        cfg = self.config
        oracle = build_oracle(
            public.family,
            gradients,
            block,
            roles=roles,
            rank=cfg.rank,
            rank_tol=cfg.rank_tol,
            min_gap=min_gap,
        )
        # Single-token rows show the room of an attention *input*; an attention output's room
        # (mixtures of values) is larger than they show, so only its spectrum is checked.
        capacity = (
            row_space_rank(oracle, vocab, seed=cfg.seed)
            if roles == ATTENTION_INPUT_ROLES
            else oracle.basis.in_features
        )
        if capacity < oracle.basis.in_features and cfg.rank is None:
            oracle = build_oracle(
                public.family,
                gradients,
                block,
                roles=roles,
                rank_tol=cfg.rank_tol,
                min_gap=min_gap,
                capacity=capacity,
            )
        if oracle.basis.rank >= capacity or oracle.basis.saturated:
            rank = min(oracle.basis.rank, max(1, capacity - cfg.rank_cutoff))
            oracle = build_oracle(public.family, gradients, block, roles=roles, rank=rank)
            oracle.basis = replace(oracle.basis, saturated=True)
        return oracle

    def _screens(
        self, public: PublicModel, gradients, vocab: torch.Tensor, scan, *, min_gap: float
    ) -> list[Gate]:
        """Returns the cheap screening gate (block 0's attention output) when the update exposes it."""
        if (
            not self.config.screen
            or public.family.linear_layer(0, "o").weight_name not in gradients
        ):
            return []
        oracle = self._oracle(public, gradients, 0, vocab, min_gap=min_gap, roles=("o",))
        if oracle.basis.saturated:
            return []
        tau, clean = self._sequence_threshold(oracle, scan, vocab)
        return [Gate(oracle, tau)] if clean else []

    def _vocabulary(self, public: PublicModel) -> torch.Tensor:
        size = public.family.embedding().num_embeddings
        vocab = torch.arange(min(size, len(public.tokenizer)))
        pad = public.tokenizer.pad_token_id
        # Padding rows never reach the span (their gradient rows are zero); a pad-as-EOS token
        # would otherwise pass wherever it mixes with real positions.
        return vocab[vocab != pad] if pad is not None else vocab

    def _sequence_threshold(
        self, oracle: SpanOracle, scan, vocab: torch.Tensor
    ) -> tuple[float, bool]:
        """Returns (threshold, whether the residuals showed a clean gap) for a sequence gate.

        The threshold is derived from first-token candidates and known-false tokens.

        In a causal model the sequence block's input at position 0 depends on the first token
        alone, so true first tokens and tokens that failed block 0 form two clean clusters.
        Encoders have no such position; they reuse block 0's threshold.
        """
        if not oracle.probe.family.causal:
            return scan.threshold, scan.split is not None
        generator = torch.Generator().manual_seed(self.config.seed)
        first = scan.sets[0]
        outside = vocab[~torch.isin(vocab, first)]
        sample = outside[torch.randperm(len(outside), generator=generator)[:1024]]
        candidates = torch.cat([first, sample])
        residuals = torch.cat(
            [
                oracle.residuals(oracle.probe.start(chunk[:, None])[0]).flatten().cpu()
                for chunk in candidates.split(self.config.chunk_size)
            ]
        )
        split = largest_gap_split(residuals)
        return (split.threshold(), True) if split is not None else (_fallback_tau(residuals), False)

    @staticmethod
    def _saturation_reason(*oracles: SpanOracle) -> str | None:
        for oracle in oracles:
            if oracle.basis.saturated:
                return (
                    f"block {oracle.block}'s gradient span is saturated (no gap in its spectrum below "
                    f"dimension {oracle.basis.in_features}): the batch has more distinct rows than the "
                    f"hidden size, so no span test can certify; results are best-effort."
                )
        return None


@dataclass(frozen=True)
class _EncoderSpans:
    """What the encoder search tests against: block 1's span and threshold, block 0's scan."""

    sequence: SpanOracle
    scan: TokenScan
    tau2: float


def _drift_reason(update: ClientUpdate) -> str | None:
    """Returns why a multi-step weight delta cannot be certified, or None for a one-step gradient."""
    steps = update.metadata.local_steps
    if update.metadata.kind != "weight_delta" or steps == 1:
        return None
    count = f"{steps} local steps" if steps else "an unknown number of local steps"
    return (
        f"the update is a weight delta over {count}: the inputs of every block but the first drift "
        f"as the weights change between steps, so the span tests are approximate and results are "
        f"best-effort (DAGER's FedAvg argument assumes a small learning rate)."
    )


def _max_positions(public: PublicModel) -> int:
    config = public.model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 10**9


def _no_gap_reason(block: int) -> str:
    return (
        f"block {block}'s residuals show no gap between true and false candidates (a span too full, "
        f"or a noised update), so nothing can be certified; results are best-effort rankings."
    )


def _fallback_tau(residuals: torch.Tensor) -> float:
    if residuals.numel() == 0:
        return 1e-3  # the paper's tau2, used only when nothing can be measured
    return float(torch.quantile(residuals.double(), 0.01))
