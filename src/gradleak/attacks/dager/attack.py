"""DAGER (Petrov, Dimitrov, Baader, Mueller, Vechev, NeurIPS 2024; arXiv 2405.15586).

Exact inversion of a client's gradient through the span of its linear-layer gradients:

1. block 0's attention-input span picks the batch's tokens out of the whole vocabulary
   (per position with learned positions, as one bag with RoPE);
2. block 1's span accepts prefixes (decoders) or whole sentences (encoders) built from them.

Threat model: honest-but-curious server with the model weights and tokenizer; needs the
gradients of the q, k or v projections of blocks 0 and 1; no labels, batch size or lengths.

:class:`Dager` only orchestrates: it reads the update's arithmetic and spans, lets
:func:`~gradleak.attacks.dager.plan.plan_search` choose the search, runs it
(:mod:`gradleak.attacks.dager.searches`), peels ranked sentences off where that helps
(:mod:`gradleak.attacks.dager.peeling`) and, for next-token updates, reads each sequence's last
token from the head's gradient (:mod:`gradleak.attacks.dager.targets`).

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

import time
from collections.abc import Mapping
from dataclasses import replace

import torch

from gradleak.attacks.base import Attack, Reconstruction
from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.accounting import account_for_batch, out_of_time
from gradleak.attacks.dager.adapters import adapters_only
from gradleak.attacks.dager.complement import complement, left_missing
from gradleak.attacks.dager.config import DagerConfig
from gradleak.attacks.dager.decoder_check import confirm_on_decoder
from gradleak.attacks.dager.peeling import peel_ranked
from gradleak.attacks.dager.plan import (
    SearchKind,
    Spectra,
    UpdateReading,
    noise_search,
    plan_search,
    ranked_plan,
    read_arithmetic,
    reads_token_bag,
    refines_with_subspace,
    skips_exact_search,
)
from gradleak.attacks.dager.searches import SEARCHES, SearchJob, ranking_blocks, run_subspace
from gradleak.attacks.dager.seq2seq import complete_targets, search_targets
from gradleak.attacks.dager.spans import DagerSpans, max_positions, read_spans, vocabulary
from gradleak.attacks.dager.targets import complete_next_token
from gradleak.attacks.dager.tokens import embedding_bag
from gradleak.attacks.verdict import CauseKind
from gradleak.attacks.weight_rounding import WeightRounding, weight_rounding
from gradleak.models.dropout_site import input_dropout
from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate

Gradients = Mapping[str, torch.Tensor]
#: Updates whose rows moved or were noised: the ranked search cannot tell their rows apart either.
_MOVED_ROWS = (CauseKind.DRIFT, CauseKind.PRECISION, CauseKind.NOISE)


class Dager(Attack):
    """DAGER with data-driven ranks and thresholds, for decoders (learned or rotary positions)
    and encoders."""

    name = "dager"

    def __init__(self, config: DagerConfig | None = None) -> None:
        self.config = config or DagerConfig()

    def __repr__(self) -> str:
        return f"Dager({self.config})"

    def reconstruct(self, public: PublicModel, update: ClientUpdate) -> Reconstruction:
        """Returns the sequences recovered from ``update``, each certified or best-effort."""
        deadline = Deadline(self.config.time_budget)
        gradients = update.gradients()
        prefixes = (
            search_targets(public, update, gradients, self.config, deadline)
            if public.task == "seq2seq"
            else None
        )
        # The decoder's proved prefixes are hypotheses for the encoder's sources (a
        # reconstruction or denoising target repeats its source), tested as any other.
        hints = tuple(s.token_ids[1:] for s in prefixes.sequences) if prefixes else ()
        result = self.attack_gradients(public, update, gradients, deadline, hints=hints)
        if result.diagnostics["search"] == SearchKind.RANKED.value:
            result = self._peeled(public, update, gradients, result, deadline)
        elif result.diagnostics["search"] == SearchKind.PREFIX.value and left_missing(result):
            result = complement(
                result, lambda: self._ranked(public, update, gradients, result, deadline)
            )
        if refines_with_subspace(result.all_causes, len(result.sequences), self.config):
            result = self._subspace(public, update, result, deadline)
        if public.task == "next_token" and public.family.causal:
            result = complete_next_token(public, gradients, result)
        result = confirm_on_decoder(public, gradients, result, self.config.seed)
        if prefixes is not None:
            targets = complete_targets(public, gradients, prefixes, result.sequences)
            result = replace(result, targets=targets)
        return account_for_batch(public, update, gradients, result)

    def _peeled(
        self,
        public: PublicModel,
        update: ClientUpdate,
        gradients: Gradients,
        ranked: Reconstruction,
        deadline: Deadline,
    ) -> Reconstruction:
        if not self.config.peel or any(c.kind in _MOVED_ROWS for c in ranked.causes):
            return ranked  # a multi-step or noised update holds no sentence's own gradient
        return peel_ranked(
            public,
            gradients,
            ranked,
            lambda rest: self.attack_gradients(public, update, rest, deadline),
            deadline=deadline,
        )

    def _subspace(
        self, public: PublicModel, update: ClientUpdate, exact: Reconstruction, deadline: Deadline
    ) -> Reconstruction:
        """Returns the subspace search's result for an update on which the exact search found
        nothing, its diagnostics beside the exact search's."""
        found = run_subspace(public, update, self.config, deadline)
        diagnostics = {**found.diagnostics, "exact": exact.diagnostics}
        return replace(found, diagnostics=diagnostics)

    def _ranked(
        self,
        public: PublicModel,
        update: ClientUpdate,
        gradients: Gradients,
        exact: Reconstruction,
        deadline: Deadline,
    ) -> Reconstruction | None:
        """Returns the ranked search (peeled) of an update whose exact search left rows
        unexplained, or None where it cannot run."""
        blocks = ranking_blocks(public, gradients, self.config)
        moved = any(c.kind in _MOVED_ROWS for c in exact.causes)
        if self.config.saturated != "rank" or not blocks or moved or deadline.expired():
            return None
        ranked = self.attack_gradients(public, update, gradients, deadline, ranked_blocks=blocks)
        return self._peeled(public, update, gradients, ranked, deadline)

    def attack_gradients(
        self,
        public: PublicModel,
        update: ClientUpdate,
        gradients: Gradients,
        deadline: Deadline = NO_DEADLINE,
        *,
        ranked_blocks: tuple[int, ...] = (),
        hints: tuple[tuple[int, ...], ...] = (),
    ) -> Reconstruction:
        """Returns what DAGER recovers from ``gradients`` (the update's, or what peeling left),
        searching until ``deadline``; with ``ranked_blocks``, the ranked search over them; the
        encoder search tests ``hints`` (sentences proposed elsewhere) first."""
        cfg = self.config
        started = time.perf_counter()
        vocab = vocabulary(public)
        site = input_dropout(public.family) if update.metadata.train_mode else None
        reading = read_arithmetic(
            update, causal=public.family.causal, dropout=site.rate if site else None
        )
        spans = None
        rounding = self._weight_rounding(public, update, reading)
        if noise_search(reading, cfg) is None and not skips_exact_search(reading, cfg):
            spans = read_spans(
                public, gradients, vocab, cfg, min_gap=reading.min_gap, rounding=rounding
            )
            reading = replace(
                reading,
                spectra=self._spectra(public, gradients, spans),
                weight_rounding=rounding.describe() if rounding else None,
            )
        plan = ranked_plan(reading, ranked_blocks) if ranked_blocks else plan_search(reading, cfg)
        bag = (
            embedding_bag(public.family, gradients)
            if reads_token_bag(plan, reading, update.metadata.defence)
            else None
        )
        job = SearchJob(
            public=public,
            update=update,
            gradients=gradients,
            config=cfg,
            plan=plan,
            vocab=vocab,
            max_length=min(cfg.max_length, max_positions(public)),
            min_gap=reading.min_gap,
            spans=spans,
            deadline=deadline,
            timings={"svd": time.perf_counter() - started},
            bag=bag,
            rounding=rounding,
            hints=hints,
        )
        result = SEARCHES[plan.search].run(job)
        if deadline.expired():
            result = out_of_time(result, deadline, whole=plan.search is SearchKind.ENCODER)
        diagnostics = {
            **result.diagnostics,
            "family": public.family.name,
            "search": plan.search.value,
            "seconds": job.timings,
        }
        return replace(result, diagnostics=diagnostics)

    @staticmethod
    def _weight_rounding(
        public: PublicModel, update: ClientUpdate, reading: UpdateReading
    ) -> WeightRounding | None:
        """Returns the rounding a float32 client's weights applied to its multi-step delta, where
        nothing coarser (a 16-bit grid, quantisation, noise) was applied on top."""
        if reading.noise_defence or reading.rounding:
            return None
        return weight_rounding(dict(public.model.named_parameters()), update.metadata)

    def _spectra(self, public: PublicModel, gradients: Gradients, spans: DagerSpans) -> Spectra:
        saturated = tuple(
            (oracle.block, oracle.basis.in_features)
            for oracle in (spans.token, spans.sequence)
            if oracle.basis.saturated
        )
        blocks = ranking_blocks(public, gradients, self.config) if saturated else ()
        projected = [o.projected for o in (spans.token, spans.sequence) if o.projected]
        return Spectra(
            saturated=saturated,
            ranking_blocks=blocks,
            sequence_saturated=spans.sequence.basis.saturated,
            adapters=adapters_only(public.family, gradients),
            projected=min(projected) if projected else None,
            width=spans.token.basis.in_features,
        )
