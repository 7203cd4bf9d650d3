"""DAGER's searches behind one protocol: a :class:`SearchJob` in, a :class:`Reconstruction` out.

:func:`gradleak.attacks.dager.plan.plan_search` picks the search; :data:`SEARCHES` maps its kind
to the implementation. Each search states its own causes (a frontier cut, residuals with no gap,
sentences that may be missing) on top of the plan's, and every sequence's verdict is built from
those causes and its own residuals in :func:`verdict_for`, the one place a certificate is given.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from gradleak.attacks.base import Reconstruction, RecoveredSequence
from gradleak.attacks.budget import NO_DEADLINE, Deadline
from gradleak.attacks.dager.accounting import batch_size
from gradleak.attacks.dager.adapters import batch_size_from_adapters, read_adapters
from gradleak.attacks.dager.bag_order import has_language_prior, order_bag
from gradleak.attacks.dager.completeness import cut_short, unexplained_rows
from gradleak.attacks.dager.config import DagerConfig
from gradleak.attacks.dager.contexts import PairRows, SentenceContexts
from gradleak.attacks.dager.decoder import Gate, search_prefixes
from gradleak.attacks.dager.dropout import DropoutSearch
from gradleak.attacks.dager.encoder import Steer, nearest_neighbour, search_sentences
from gradleak.attacks.dager.end_descent import descend
from gradleak.attacks.dager.ends import (
    ROUNDED_END_CANDIDATES,
    end_test,
    rounded_end_test,
    weight_end_test,
)
from gradleak.attacks.dager.grown import grow_sequences
from gradleak.attacks.dager.noisy import reconstruct_noisy
from gradleak.attacks.dager.oracle import build_oracle, input_side_gradient
from gradleak.attacks.dager.placement import place_tokens
from gradleak.attacks.dager.plan import SearchKind, SearchPlan
from gradleak.attacks.dager.pursuit import token_bag
from gradleak.attacks.dager.ranked import RankingEvidence, search_ranked
from gradleak.attacks.dager.rounded import FloorGate, rounded_gate, scores_above_floor
from gradleak.attacks.dager.span_fit import SpanFit, span_fits
from gradleak.attacks.dager.spans import (
    DagerSpans,
    block_oracle,
    screening_gates,
    sequence_oracle,
    sequence_threshold,
)
from gradleak.attacks.dager.tokens import (
    TokenScan,
    bag_scan,
    embedding_bag,
    scan_tokens,
    vocabulary_residuals,
)
from gradleak.attacks.dager.unordered import bag_sets, likely_lengths
from gradleak.attacks.peel import peel
from gradleak.attacks.span import drops_at, span_basis
from gradleak.attacks.thresholds import MIN_SPLIT_DECADES
from gradleak.attacks.verdict import Assurance, Cause, CauseKind
from gradleak.attacks.weight_rounding import WeightRounding
from gradleak.models.extension import FactoredExtension
from gradleak.models.families import ArchitectureFamily
from gradleak.models.loading import PublicModel
from gradleak.models.probe import LinearInputProbe
from gradleak.update import ClientUpdate

#: Blocks (from 0) whose attention outputs rank a float32 multi-step delta's candidates.
ROUNDED_BLOCKS = 2
#: Prefixes kept per step when a best-effort search can only rank candidates, not test them.
BEST_EFFORT_FRONTIER = 256

#: Positions a pursuit over learned positions reads, and candidate tokens per position.
PURSUIT_POSITIONS = 64
PURSUIT_CANDIDATES = 128

#: Positions of the sentence on which the encoder search's steer is checked against the probe.
_AGREEMENT_LENGTH = 32

#: A sequence found: (token ids, residual per position, the threshold that tests them).
Found = tuple[tuple[int, ...], tuple[float, ...], float]


@dataclass
class SearchJob:
    """Everything a search may use: the public model, the update, and what was read off it.

    Attributes:
        public: the public model.
        update: the update as the server received it.
        gradients: the gradients searched (the update's, or what peeling left of them).
        config: DAGER's settings.
        plan: the planned search and the causes known before it.
        vocab: the token ids a search may use.
        max_length: the longest sequence searched.
        min_gap: the smallest spectral drop read as the end of the signal.
        spans: block 0's and the sequence block's spans (None for the noise searches).
        deadline: when the searches must stop and answer with what they have.
        timings: seconds per stage, filled in as the search goes.
        bag: every token the batch can hold (the embedding gradient's non-zero rows), where an
            unaltered update shows it; block 0's scan then tests only these past position 1.
        rounding: a float32 multi-step delta's known rounding, which the spans were read with.
        hints: sentences proposed from elsewhere (a sequence-to-sequence update's decoder
            prefixes), which the encoder search tests, completed by one token, before searching:
            each is certified by the same test as the search's own finds, never taken on trust.
    """

    public: PublicModel
    update: ClientUpdate
    gradients: Mapping[str, torch.Tensor]
    config: DagerConfig
    plan: SearchPlan
    vocab: torch.Tensor
    max_length: int
    min_gap: float
    spans: DagerSpans | None = None
    deadline: Deadline = NO_DEADLINE
    timings: dict[str, float] = field(default_factory=dict)
    bag: torch.Tensor | None = None
    rounding: WeightRounding | None = None
    hints: tuple[tuple[int, ...], ...] = ()

    def require_spans(self) -> DagerSpans:
        """Returns the spans, which every search but the noise searches needs."""
        if self.spans is None:
            raise ValueError(f"the {self.plan.search.value} search needs the update's spans")
        return self.spans

    def scan(self, *, per_position: bool, fallback: bool) -> TokenScan:
        """Returns block 0's token scan (timed as ``token_scan``)."""
        started = time.perf_counter()
        token = self.require_spans().token
        scan = scan_tokens(
            token,
            self.vocab,
            per_position=per_position,
            max_length=self.max_length,
            tau=self.config.tau1,
            chunk_size=self.config.chunk_size,
            fallback_count=token.basis.rank if fallback else 0,
            later=self.bag,
        )
        self.timings["token_scan"] = time.perf_counter() - started
        return scan


@dataclass(frozen=True)
class Outcome:
    """What an exact search found, and what it states of it.

    Attributes:
        found: the sequences, each with its residuals and the threshold that tested them.
        causes: causes on every sequence (e.g. the frontier was cut).
        batch_causes: causes on the batch only (e.g. sequences may be missing).
        own: causes on single sequences (e.g. one that may have been cut short).
    """

    found: list[Found]
    causes: tuple[Cause, ...] = ()
    batch_causes: tuple[Cause, ...] = ()
    own: Mapping[tuple[int, ...], tuple[Cause, ...]] = field(default_factory=dict)


class Search(Protocol):
    """A DAGER search: what it returns for one job."""

    kind: SearchKind

    def run(self, job: SearchJob) -> Reconstruction:
        """Returns the sequences found for ``job``, each with its verdict."""
        ...


def verdict_for(
    residuals: tuple[float, ...], threshold: float, causes: tuple[Cause, ...], *, block: int
) -> Assurance:
    """Returns a sequence's verdict: the search's causes, and its own if a residual failed."""
    own = (
        ()
        if residuals and max(residuals) < threshold
        else (Cause(CauseKind.ABOVE_THRESHOLD, block=block),)
    )
    return Assurance((*causes, *own))


def decode(public: PublicModel, ids: tuple[int, ...]) -> str:
    """Returns the text of ``ids``."""
    return public.tokenizer.decode(list(ids))


class _ExactSearch(ABC):
    """What the prefix and encoder searches share: block 0's scan and the sequence threshold."""

    kind: SearchKind

    def run(self, job: SearchJob) -> Reconstruction:
        spans = job.require_spans()
        cfg, public = job.config, job.public
        per_position = public.family.positions == "learned"
        scan = job.scan(per_position=per_position, fallback=job.plan.scan_fallback)
        diagnostics: dict[str, Any] = {
            **spans.describe(),
            "tau1": scan.threshold,
            "tokens_per_position": [len(s) for s in scan.sets],
        }
        causes = list(job.plan.causes)
        if not scan.sets:
            batch = (*causes, Cause(CauseKind.NO_TOKENS, block=0))
            return Reconstruction("dager", (), causes=batch, diagnostics=diagnostics)
        started = time.perf_counter()
        if not causes and cfg.tau1 is None and scan.split is None:
            causes.append(Cause(CauseKind.NO_SPECTRAL_GAP, block=0))
        if cfg.tau2 is not None:
            tau2, clean = cfg.tau2, True
        else:
            tau2, clean = sequence_threshold(spans.sequence, scan, job.vocab, cfg)
        if not causes and not clean:
            causes.append(Cause(CauseKind.NO_SPECTRAL_GAP, block=spans.sequence.block))
        diagnostics["tau2"] = tau2
        outcome = self.search(
            job, scan, tau2, tuple(causes), exact=not causes and clean, diagnostics=diagnostics
        )
        job.timings["search"] = time.perf_counter() - started
        causes += outcome.causes
        batch_causes = list(outcome.batch_causes)
        sequences = tuple(
            RecoveredSequence(
                token_ids=ids,
                text=decode(public, ids),
                assurance=verdict_for(
                    res, tau, (*causes, *outcome.own.get(ids, ())), block=spans.sequence.block
                ),
                residuals=res,
            )
            for ids, res, tau in outcome.found
        )
        if not sequences:
            batch_causes.append(Cause(CauseKind.NO_SEQUENCES, block=spans.sequence.block))
        return Reconstruction(
            "dager", sequences, causes=(*causes, *batch_causes), diagnostics=diagnostics
        )

    @abstractmethod
    def search(
        self,
        job: SearchJob,
        scan: TokenScan,
        tau2: float,
        causes: tuple[Cause, ...],
        *,
        exact: bool,
        diagnostics: dict[str, Any],
    ) -> Outcome:
        """Returns the sequences found and the causes the search states."""


class PrefixSearch(_ExactSearch):
    """Causal models: grow prefixes through block 0's screen and the sequence block's span."""

    kind = SearchKind.PREFIX

    def search(
        self,
        job: SearchJob,
        scan: TokenScan,
        tau2: float,
        causes: tuple[Cause, ...],
        *,
        exact: bool,
        diagnostics: dict[str, Any],
    ) -> Outcome:
        cfg, spans = job.config, job.require_spans()
        per_position = job.public.family.positions == "learned"
        rounded = cfg.tau2 is None and scores_above_floor(job.plan.causes)
        if rounded and job.bag is not None:
            # Rounding lifts some true tokens' block-0 rows past the scan's threshold; the bag
            # holds every token of the batch, at any position.
            scan = bag_scan(spans.token, job.bag, scan, chunk_size=cfg.chunk_size)
            per_position = False
            diagnostics["tokens_per_position"] = [len(job.bag)]
        if rounded:
            gates: list[Gate] = [
                rounded_gate(
                    job.public,
                    job.gradients,
                    job.vocab,
                    scan,
                    spans.sequence,
                    cfg,
                    min_gap=job.min_gap,
                )
            ]
            tau2 = gates[-1].threshold
        else:
            gates = [
                *screening_gates(
                    job.public,
                    job.gradients,
                    job.vocab,
                    scan,
                    cfg,
                    min_gap=job.min_gap,
                    rounding=job.rounding,
                ),
                Gate(spans.sequence, tau2),
            ]
        diagnostics["gates"] = [f"{g.oracle.block}.{g.oracle.layer.role}" for g in gates]
        diagnostics["gate_thresholds"] = [g.threshold for g in gates]
        diagnostics["gate_first"] = [g.first_threshold for g in gates]
        result = search_prefixes(
            gates,
            tokens_at=_tokens_at(scan, per_position),
            max_length=job.max_length,
            chunk_size=cfg.chunk_size,
            max_frontier=min(cfg.max_frontier, BEST_EFFORT_FRONTIER)
            if causes
            else cfg.max_frontier,
            deadline=job.deadline,
        )
        diagnostics["prefix_candidates"] = result.candidates
        diagnostics["prefix_accepted"] = result.accepted
        found, ends = _settle_ends(
            job,
            [(ids, res, tau2) for ids, res in result.sequences],
            rounded=isinstance(gates[-1], FloorGate),
        )
        cut = (Cause(CauseKind.FRONTIER_CUT),) if result.truncated else ()
        if not exact:
            return Outcome(found, causes=cut, own=ends)
        ids = [f[0] for f in found]
        unexplained = unexplained_rows(spans.sequence.basis.rank, ids)
        diagnostics["unexplained_rows"] = unexplained
        shortened = cut_short(job.public, job.gradients, ids, unexplained=unexplained)
        missing = (
            (Cause(CauseKind.MISSING_SEQUENCES, detail=_UNEXPLAINED.format(unexplained)),)
            if unexplained
            else ()
        )
        own = {seq: (cause,) for seq, cause in shortened.items()}
        for seq, causes_of in ends.items():
            own[seq] = (*own.get(seq, ()), *causes_of)
        return Outcome(found, causes=cut, batch_causes=missing, own=own)


def _settle_ends(
    job: SearchJob, found: list[Found], *, rounded: bool = False
) -> tuple[list[Found], dict[tuple[int, ...], tuple[Cause, ...]]]:
    """Returns the sequences cut back to the longest prefix whose final row the end test passes
    (:mod:`gradleak.attacks.dager.ends`), those with a passing end first, and a cause for each
    of which no prefix passes; the sequences unchanged where the update shows no end test.

    A ``rounded`` search's candidates are read surest end first (their last rows' residuals:
    a true sentence ends on its best-supported row), and only as many as the rounded end test
    reads are tested; the rest keep the cause."""
    test = end_test(job.public, job.gradients)
    if test is None and rounded:
        found = sorted(found, key=lambda f: f[1][-1] if f[1] else math.inf)
        started = time.perf_counter()
        test = rounded_end_test(job.public, job.gradients, [f[0] for f in found])
        job.timings["end_test"] = time.perf_counter() - started
    if test is None:
        return found, {}
    settled: dict[tuple[int, ...], Found] = {}
    unproved: dict[tuple[int, ...], tuple[Cause, ...]] = {}
    limit = ROUNDED_END_CANDIDATES * test.basis.shape[0] if rounded else len(found)
    for index, (ids, residuals, tau) in enumerate(found):
        length = test.whole(job.public, ids) if index < limit else None
        if length is None:
            unproved[ids] = (Cause(CauseKind.END_UNPROVED),)
            length = len(ids)
        settled.setdefault(ids[:length], (ids[:length], residuals[:length], tau))
    ordered = sorted(settled.values(), key=lambda f: f[0] in unproved)
    return ordered, unproved


class EncoderSearch(_ExactSearch):
    """Encoders: whole sentences per likely length; on exact spans each one found is peeled off.

    Peeling (:mod:`gradleak.attacks.peel`) takes a found sentence's own share out of the
    gradient, and the search goes on with block 0's and block 1's spans rebuilt from the rest,
    which are smaller and test tokens cleanly again. A peel is kept only if block 1's rank then
    drops by exactly the sentence's length; otherwise the search goes on where it was.
    """

    kind = SearchKind.ENCODER

    def search(
        self,
        job: SearchJob,
        scan: TokenScan,
        tau2: float,
        causes: tuple[Cause, ...],
        *,
        exact: bool,
        diagnostics: dict[str, Any],
    ) -> Outcome:
        cfg, public = job.config, job.public
        spans, gradients = job.require_spans(), job.gradients
        found: list[Found] = []
        held: list[tuple[tuple[int, ...], tuple[float, ...]]] = []
        peeled: list[dict[str, Any]] = []
        # A span of a module shared across depth (ALBERT) holds every depth's rows, some of
        # block 0's shared between sentences: its rank counts no tokens, and no peel can be
        # checked against it.
        counted = exact and spans.sequence.layer.shared_by == 1
        peeling = counted and job.plan.peel
        own: dict[tuple[int, ...], tuple[Cause, ...]] = {}
        disclosed = job.update.metadata.batch_size
        size = batch_size(public, job.update, job.gradients)
        pairs = attention_pairs(public.family)
        if job.hints and exact:
            held = hinted_sentences(job, scan, tau2)
            found += [(ids, res, tau2) for ids, res in held]
        while True:
            likely, lengths = _placement(public, gradients, scan)
            sets = scan.sets
            if public.family.positions == "relative":  # a bag: order comes from block 1
                rows_left = spans.sequence.basis.rank - sum(len(ids) for ids, _ in held)
                sets = bag_sets(scan.sets[0], rows_left, job.max_length)
                left = None if size is None else size.value - len(found)
                lengths = likely_lengths(rows_left, left, job.max_length)
            results, gave_up = search_sentences(
                spans.sequence,
                sets,
                tokenizer=public.tokenizer,
                threshold=tau2,
                restarts=cfg.encoder_restarts,
                seed=cfg.seed,
                chunk_size=cfg.chunk_size,
                batch_size=None if disclosed is None else disclosed - len(found) + len(held),
                rows=spans.sequence.basis.rank if counted else None,
                likely=likely,
                lengths=lengths,
                first_find=peeling,
                swaps=public.family.positions == "relative",
                known=held,
                steer=steering_oracle(job, gradients, spans, scan, pairs),
                deadline=job.deadline,
                # Spans that certify nothing (saturated) still answer with the closest ends.
                best_effort=0 if exact else (size.value if size is not None else 1),
            )
            new = results[len(held) :]
            found += [(ids, res, tau2) for ids, res in new]
            held = results
            for ids, residuals in new:
                nearest = nearest_neighbour(
                    spans.sequence, ids, sets, tokenizer=public.tokenizer, chunk_size=cfg.chunk_size
                )
                if nearest < max(residuals) * 10**MIN_SPLIT_DECADES:
                    detail = _NEIGHBOUR_CLOSE.format(nearest, max(residuals))
                    own[ids] = (
                        Cause(CauseKind.NO_SPECTRAL_GAP, block=spans.sequence.block, detail=detail),
                    )
                    peeling = False  # later sentences would be tested on an unproved rest
            if not (gave_up and new and peeling):
                break
            rest = _peeled(job, gradients, spans, [ids for ids, _ in new], proven=scan.threshold)
            if rest is None:
                peeling = False
                continue
            gradients, spans, scan, tau2 = rest
            peeled.append(
                {
                    "sentences": len(new),
                    "rank_left": spans.sequence.basis.rank,
                    "tokens_per_position": [len(s) for s in scan.sets],
                }
            )
            held = []
        if peeled:
            diagnostics["peeled"] = peeled
        batch = (Cause(CauseKind.MISSING_SEQUENCES, detail=_MISSING),) if gave_up else ()
        return Outcome(found, batch_causes=batch, own=own)


def hinted_sentences(
    job: SearchJob, scan: TokenScan, tau2: float
) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """Returns the sentences among the job's hints, each completed by one token of block 0's set
    at the next position (or as it is), whose every row passes the sequence block's test and
    which stand a decade below their closest neighbour, as the encoder search's own finds must."""
    oracle, public = job.require_spans().sequence, job.public
    relative = public.family.positions == "relative"

    def sets_for(length: int) -> tuple[torch.Tensor, ...]:
        return (scan.sets[0],) * length if relative else scan.sets

    candidates = set(job.hints)
    for hint in job.hints:
        if relative or len(hint) < len(scan.sets):
            ends = scan.sets[0] if relative else scan.sets[len(hint)]
            candidates.update((*hint, int(token)) for token in ends)
    kept = []
    for length in sorted({len(ids) for ids in candidates}):
        group = sorted(ids for ids in candidates if len(ids) == length and length > 1)
        if not group or (not relative and length > len(scan.sets)):
            continue
        residuals = torch.cat(
            [
                oracle.residuals(oracle.probe(torch.tensor(chunk))).cpu()
                for chunk in _chunks(group, job.config.chunk_size // length + 1)
            ]
        )
        for ids, rows in zip(group, residuals, strict=True):
            if float(rows.max()) >= tau2:
                continue
            nearest = nearest_neighbour(
                oracle,
                ids,
                sets_for(length),
                tokenizer=public.tokenizer,
                chunk_size=job.config.chunk_size,
            )
            if nearest >= float(rows.max()) * 10**MIN_SPLIT_DECADES:
                kept.append((ids, tuple(float(r) for r in rows)))
    return kept


def _chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


_NEIGHBOUR_CLOSE = (
    "a sentence one token away fits the sequence block's span almost as well (largest residual "
    "{:.1e} against this one's {:.1e}, less than a decade apart): the test cannot tell them apart"
)
_UNEXPLAINED = (
    "the sequence block's span holds {} row(s) that no recovered sequence explains (sequences "
    "missing, or cut short where a true row failed the test)"
)
_MISSING = (
    "the encoder search ended before its sentences accounted for every row of block 1's span "
    "(or, where that span gives no count, before every length where [SEP] passed block 0 "
    "yielded one); raise encoder_restarts to search longer"
)


class RankedSearch:
    """Causal models past the hidden-size limit: candidates ranked by MLP down-projection spans."""

    kind = SearchKind.RANKED

    def run(self, job: SearchJob) -> Reconstruction:
        cfg, public, spans = job.config, job.public, job.require_spans()
        evidence = (
            rounded_evidence(job) if job.rounding else ranking_evidence(public, job.gradients, cfg)
        )
        if evidence is None:
            raise ValueError("the ranked search needs an exposed MLP down-projection")
        started = time.perf_counter()
        # One candidate set for every position: first tokens are told apart by how far they
        # stand out from the others, which needs the others in the scan.
        candidates = embedding_bag(public.family, job.gradients)
        source = "embedding gradient"
        if candidates is None:
            scan = job.scan(
                per_position=public.family.positions == "learned",
                fallback=spans.token.basis.saturated,
            )
            candidates = torch.unique(torch.cat([job.vocab[:0], *scan.sets]))
            source = "block-0 scan"
        job.timings["token_scan"] = time.perf_counter() - started
        started = time.perf_counter()
        rounding = job.rounding
        search = (
            grow_sequences(
                evidence,
                public.family,
                candidates,
                max_length=job.max_length,
                chunk_size=cfg.chunk_size,
                max_frontier=cfg.rank_frontier,
                end=lambda sentences: weight_end_test(
                    public, job.gradients, rounding, min_rank=sentences
                ),
                deadline=job.deadline,
            )
            if rounding is not None
            else search_ranked(
                evidence,
                tokens_at=lambda p: candidates,
                max_length=job.max_length,
                chunk_size=cfg.chunk_size,
                max_frontier=cfg.rank_frontier,
                z_accept=cfg.rank_z,
                per_prefix=cfg.rank_branches,
                deadline=job.deadline,
            )
        )
        job.timings["search"] = time.perf_counter() - started
        diagnostics: dict[str, Any] = {
            "rank": {
                "token_block": spans.token.basis.rank,
                "ranking_layers": [f"{layer.block}.{layer.role}" for layer in evidence.layers],
            },
            "tokens": source,
            "candidate_tokens": len(candidates),
            "prefix_candidates": search.candidates,
            "prefix_accepted": search.accepted,
            "frontier_cut": search.truncated,
        }
        verdict = Assurance(job.plan.causes)
        sequences = tuple(
            RecoveredSequence(ids, decode(public, ids), verdict, residuals=scores)
            for ids, scores in search.sequences
        )
        return Reconstruction("dager", sequences, causes=job.plan.causes, diagnostics=diagnostics)


class PursuitSearch:
    """LoRA past the rank limit: the tokens whose rows make up the adapters' block-0 gradient.

    Block 0's rows are single tokens, so a sparse pursuit over the vocabulary's rows reads the
    batch's tokens (:mod:`gradleak.attacks.dager.pursuit`); with learned positions each one comes
    with its position, which orders them. With rotary positions the tokens come as a bag whose
    order the adapters' spans cannot give. In the first LoRA round past the rank limit the B
    gradient spans the A factor's whole image, and nothing at all can be read.
    """

    kind = SearchKind.PURSUIT

    def run(self, job: SearchJob) -> Reconstruction:
        spans, public = job.require_spans(), job.public
        token = spans.token
        causes = job.plan.causes
        diagnostics: dict[str, Any] = {**spans.describe()}
        if token.projected is not None and token.basis.saturated:
            unread = Cause(CauseKind.UNSUPPORTED, detail=_FIRST_ROUND_FULL.format(token.projected))
            return Reconstruction("dager", (), causes=(*causes, unread), diagnostics=diagnostics)
        started = time.perf_counter()
        learned = public.family.positions == "learned"
        if token.basis.saturated:
            at = _pursued(job, _closest_per_position(job) if learned else None)
        else:
            scan = job.scan(per_position=learned, fallback=False)
            at = [tuple(int(t) for t in tokens) for tokens in scan.sets]
        job.timings["search"] = time.perf_counter() - started
        diagnostics["tokens_per_position"] = [len(tokens) for tokens in at]
        if not any(at):
            none = Cause(CauseKind.NO_TOKENS, block=0)
            return Reconstruction("dager", (), causes=(*causes, none), diagnostics=diagnostics)
        bag: tuple[Cause, ...] = ()
        prior = has_language_prior(public)
        fits = [] if learned else span_fits(public, job.gradients)
        if learned:
            groups = _by_position(at)
        elif prior or fits:
            sentences = _sentences(job)
            started = time.perf_counter()
            groups = order_bag(
                public, at[0], sentences, fits=fits, prior=prior, deadline=job.deadline
            )
            job.timings["order"] = time.perf_counter() - started
            judged = [*(["the public model's language prior"] if prior else []), *_fitted(fits)]
            groups = _descended(job, groups, at[0], diagnostics, judged)
            detail = _BAG_ORDERED.format(sentences, " and ".join(judged))
            bag = (Cause(CauseKind.PURSUIT, detail=detail),)
        else:
            groups, bag = [at[0]], (Cause(CauseKind.PURSUIT, detail=_BAG),)
        verdict = Assurance((*causes, *bag))
        sequences = tuple(RecoveredSequence(ids, decode(public, ids), verdict) for ids in groups)
        return Reconstruction("dager", sequences, causes=causes, diagnostics=diagnostics)


_FIRST_ROUND_FULL = (
    "first LoRA round with at least as many distinct rows as the adapter rank ({}): the B "
    "factor's gradient spans the A factor's whole image, so it shows nothing of the inputs"
)
_BAG = "a bag of tokens: rotary positions leave their order unknown"
_BAG_ORDERED = (
    "a bag of tokens, which rotary positions leave unordered, shared out between {} sentence(s) "
    "and ordered by {}"
)


def _descended(
    job: SearchJob,
    groups: list[tuple[int, ...]],
    bag: tuple[int, ...],
    diagnostics: dict[str, Any],
    judged: list[str],
) -> list[tuple[int, ...]]:
    """Returns the bag's sentences after a descent on the end test's residual, where the update
    shows the test (:mod:`gradleak.attacks.dager.end_descent`); ``judged`` gains its name."""
    seconds = job.config.end_descent
    test = end_test(job.public, job.gradients) if seconds > 0 and groups else None
    if test is None:
        return groups
    started = time.perf_counter()
    descended, scores = descend(
        job.public, test, groups, bag, seconds=seconds, deadline=job.deadline
    )
    job.timings["descent"] = time.perf_counter() - started
    diagnostics["end_log_residuals"] = [round(s, 3) for s in scores]
    judged.append("a descent on each final row's residual to the last query adapter's span")
    return descended


def _fitted(fits: list[SpanFit]) -> list[str]:
    if not fits:
        return []
    first, last = fits[0].layer.block, fits[-1].layer.block
    blocks = f"block {first}" if first == last else f"blocks {first} to {last}"
    return [f"the fit of its rows to the adapters' spans at {blocks}"]


def _sentences(job: SearchJob) -> int:
    """Returns how many sentences to share a bag out between: the batch size where it is read,
    else the fewest sequences the adapters show, else one."""
    size = batch_size(job.public, job.update, job.gradients)
    if size is not None:
        return size.value
    read = batch_size_from_adapters(job.public, read_adapters(job.public, job.gradients))
    return read[0].value if read is not None else 1


def _closest_per_position(job: SearchJob) -> list[torch.Tensor]:
    """Returns, for each position up to :data:`PURSUIT_POSITIONS`, the
    :data:`PURSUIT_CANDIDATES` tokens whose block-0 rows lie closest to the saturated span: what
    the pursuit then chooses from (every token at every position is too many to pursue).

    Each position scans the whole vocabulary (random GPT-2 at B = 16: 64 positions took most of
    170 s on one core), so the scan stops once half the time budget is spent, leaving the rest
    to the pursuit over the positions scanned."""
    oracle = job.require_spans().token
    count = min(PURSUIT_CANDIDATES, len(job.vocab))
    closest: list[torch.Tensor] = []
    for position in range(min(job.max_length, PURSUIT_POSITIONS)):
        if closest and job.deadline.past(0.5):
            break
        residuals = vocabulary_residuals(
            oracle, job.vocab, position=position, chunk_size=job.config.chunk_size
        )
        closest.append(job.vocab[torch.topk(residuals, count, largest=False).indices])
    return closest


def _pursued(job: SearchJob, candidates: list[torch.Tensor] | None) -> list[tuple[int, ...]]:
    """Returns, per position, the tokens the pursuit keeps among each position's candidates
    (learned positions), or one bag from the whole vocabulary (rotary positions: None)."""
    oracle = job.require_spans().token
    gradients = [input_side_gradient(layer, job.gradients) for layer in oracle.layers]
    unique = {id(g): g / g.norm() for g in gradients if g is not None}
    target = torch.cat(list(unique.values()))
    atoms: list[tuple[int, int]] = []
    rows = []
    positions = range(len(candidates)) if candidates is not None else range(1)
    for position in positions:
        tokens = candidates[position] if candidates is not None else job.vocab
        for chunk in tokens.split(job.config.chunk_size):
            rows.append(oracle.probe.token_rows(chunk, position=position)[oracle.layer])
            atoms.extend((position, int(t)) for t in chunk)
    dictionary = torch.cat(rows).reshape(len(atoms), -1)
    found = token_bag(
        target,
        dictionary,
        torch.arange(len(atoms)),
        max_rows=min(dictionary.shape[1] - 1, len(atoms)),
        deadline=job.deadline,
    )
    at: list[list[int]] = [[] for _ in positions]
    for index in found.tokens.tolist():
        position, token_id = atoms[index]
        at[position].append(token_id)
    while at and not at[-1]:
        at.pop()
    return [tuple(tokens) for tokens in at]


def _by_position(at: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Returns sequences read off per-position token lists: the j-th takes each position's j-th
    token, where it has one."""
    depth = max(map(len, at))
    sequences = [tuple(tokens[j] for tokens in at if j < len(tokens)) for j in range(depth)]
    return [s for s in sequences if s]


class NoisySearch:
    """Noised updates: candidates ranked statistically (the paper's filter or gradleak's beam)."""

    def __init__(self, kind: SearchKind) -> None:
        self.kind = kind

    def run(self, job: SearchJob) -> Reconstruction:
        mode = "filter" if self.kind is SearchKind.NOISY_FILTER else "beam"
        return reconstruct_noisy(
            job.public,
            job.update,
            job.config,
            mode=mode,
            vocab=job.vocab,
            causes=job.plan.causes,
            max_length=job.max_length,
            deadline=job.deadline,
        )


class SubspaceSearch:
    """Updates no span test can read: the continuous subspace search, under DAGER's name."""

    kind = SearchKind.SUBSPACE

    def run(self, job: SearchJob) -> Reconstruction:
        return run_subspace(job.public, job.update, job.config, job.deadline)


def run_subspace(
    public: PublicModel, update: ClientUpdate, config: DagerConfig, deadline: Deadline
) -> Reconstruction:
    """Returns the subspace search's reconstruction of ``update`` under DAGER's settings."""
    # Imported here: the subspace attack builds on DAGER's modules, which import this one.
    from gradleak.attacks.subspace import Subspace, SubspaceConfig

    settings = SubspaceConfig(
        max_length=min(config.max_length, SubspaceConfig.max_length),
        chunk_size=config.chunk_size,
        seed=config.seed,
        prior=config.subspace_prior,
        time_budget=None,
    )
    result = Subspace(settings).attack_gradients(public, update, deadline)
    return replace(result, attack="dager")


#: The search that runs each planned kind.
SEARCHES: dict[SearchKind, Search] = {
    SearchKind.PREFIX: PrefixSearch(),
    SearchKind.ENCODER: EncoderSearch(),
    SearchKind.RANKED: RankedSearch(),
    SearchKind.PURSUIT: PursuitSearch(),
    SearchKind.NOISY_FILTER: NoisySearch(SearchKind.NOISY_FILTER),
    SearchKind.NOISY_BEAM: NoisySearch(SearchKind.NOISY_BEAM),
    SearchKind.SUBSPACE: SubspaceSearch(),
    SearchKind.DROPOUT: DropoutSearch(),
}


def ranking_blocks(
    public: PublicModel, gradients: Mapping[str, torch.Tensor], config: DagerConfig
) -> tuple[int, ...]:
    """Returns the blocks, within ``rank_blocks``, whose MLP down-projection the update exposes."""
    family = public.family
    return tuple(
        block
        for block in range(min(config.rank_blocks, family.num_blocks))
        if family.linear_layer(block, "mlp_out").weight_name in gradients
    )


def ranking_evidence(
    public: PublicModel, gradients: Mapping[str, torch.Tensor], config: DagerConfig
) -> RankingEvidence | None:
    """Returns the MLP down-projection spans that rank candidates, or None where none is exposed."""
    layers = tuple(
        public.family.linear_layer(block, "mlp_out")
        for block in ranking_blocks(public, gradients, config)
    )
    if not layers:
        return None
    # Every direction the gradient has counts: the span is a strict subspace of the 4d-wide input.
    bases = tuple(span_basis([layer.weight_gradient(gradients)], min_gap=0.0) for layer in layers)
    probe = LinearInputProbe(public.family, list(layers))
    extension = FactoredExtension(probe) if FactoredExtension.available(probe) else None
    return RankingEvidence(layers=layers, bases=bases, probe=probe, extension=extension)


def rounded_evidence(job: SearchJob) -> RankingEvidence:
    """Returns the spans that rank a float32 multi-step delta's candidates: the attention outputs
    (inputs of ``o``) of blocks 0 and 1, each read above the weights' known rounding, or the
    sequence block's span where those are not shared.

    Where the weakest true directions sit inside the rounding no residual proves a row, but true
    rows still stand closer than false ones. On SmolLM2 (B = 4, E = 2, mini-batch 2, lr 1e-4) the
    two attention outputs put the true next token first among the batch's bag of tokens at 54 of
    61 true prefixes, block 1's q/k/v at 7.
    """
    spans, public = job.require_spans(), job.public
    family = public.family
    blocks = [
        b
        for b in range(min(ROUNDED_BLOCKS, family.num_blocks))
        if family.linear_layer(b, "o").weight_name in job.gradients
    ]
    oracles = [
        block_oracle(
            public,
            job.gradients,
            block,
            job.vocab,
            job.config,
            min_gap=job.min_gap,
            roles=("o",),
            rounding=job.rounding,
        )
        for block in blocks
    ] or [spans.sequence]
    layers = tuple(o.layer for o in oracles)
    return RankingEvidence(
        layers=layers,
        bases=tuple(o.basis for o in oracles),
        probe=LinearInputProbe(family, list(layers)),
    )


def steering_oracle(
    job: SearchJob,
    gradients: Mapping[str, torch.Tensor],
    spans: DagerSpans,
    scan: TokenScan,
    pairs: PairRows | None,
) -> Steer | None:
    """Returns what steers the encoder search in the sequence span's place: block 0's
    attention-output span, computed from ``pairs`` where that agrees with the probe
    (:class:`gradleak.attacks.dager.contexts.SentenceContexts`); None where that span cannot
    steer.

    Block 0's attention output already depends on the whole sentence, and one token off puts it
    off that span as far as block 1's input (MiniLM, Rotten Tomatoes B = 8: the closest one-token
    neighbours' mean log residual -1.3 to -1.8 against the true sentence's -6.3), at a fraction of
    the cost. It steers only where its rank equals the sequence span's (both count the batch's
    rows); every sentence is still tested on the sequence span.
    """
    family, sequence = job.public.family, spans.sequence
    if (
        not family.has_linear_layer(0, "o")
        or family.linear_layer(0, "o").weight_name not in gradients
        or sequence.block == 0
        or sequence.layer.shared_by > 1
        or job.rounding is not None
    ):
        return None
    oracle = block_oracle(
        job.public, gradients, 0, job.vocab, job.config, min_gap=job.min_gap, roles=("o",)
    )
    if oracle.basis.saturated or oracle.basis.rank != sequence.basis.rank:
        return None
    if pairs is None or not scan.sets:
        return oracle
    contexts = SentenceContexts(oracle, pairs)
    sample = torch.stack([tokens[0] for tokens in scan.sets[:_AGREEMENT_LENGTH] if len(tokens)])
    return contexts if contexts.agrees(sample[None]) else oracle


def attention_pairs(family: ArchitectureFamily) -> PairRows | None:
    """Returns an empty table of block 0's (token, position) queries, keys and values, where the
    model's positions are learned and its config states the heads; else None."""
    heads = getattr(getattr(family.model, "config", None), "num_attention_heads", None)
    if family.positions != "learned" or not isinstance(heads, int):
        return None
    return PairRows(family, heads)


def _tokens_at(scan: TokenScan, per_position: bool) -> Callable[[int], torch.Tensor | None]:
    if per_position:
        return lambda p: scan.sets[p] if p < len(scan.sets) else None
    return lambda p: scan.sets[0]


def _placement(public: PublicModel, gradients, scan: TokenScan):
    """Returns the scan's sets cut to the tokens the embedding gradients allow there, and the
    lengths the separator allows, the most likely first; (None, None) where they tell nothing
    (:func:`gradleak.attacks.dager.placement.place_tokens`)."""
    placement = place_tokens(public.family, gradients, len(scan.sets))
    if placement is None:
        return None, None
    return placement.candidates(scan.sets), placement.lengths(public.tokenizer.sep_token_id)


def _peeled(job: SearchJob, gradients, spans: DagerSpans, sentences, *, proven: float):
    """Returns (the gradient without ``sentences``, its spans, scan and threshold), or None unless
    the peel is exact.

    ``proven`` is the threshold of the scan before the peel. A peel only removes rows, so a
    wrong token's residual only grows, and what passed there and remains is still true: a
    rescan's largest gap lying wholly below ``proven`` splits true rows from true rows (the
    rest's weaker sentences sit nearer the raised float noise), and the rescan keeps ``proven``.
    """
    cfg, public = job.config, job.public
    left = spans.sequence.basis.rank - sum(map(len, sentences))
    peeled = peel(public, gradients, sentences) if left > 0 else None
    if peeled is None:
        return None
    rest = peeled[0]
    sequence = sequence_oracle(public, rest, job.vocab, cfg, min_gap=job.min_gap)
    if sequence.basis.rank != left and drops_at(sequence.basis.singular_values, left, job.min_gap):
        # A weak true direction (T5-small, B = 16: one at 1e-4.6 between the bulk's 1e-2.2 and
        # noise's 1e-6.7) can leave the peeled spectrum's largest gap one row short of the rows
        # left; a clear drop right at that count is the same reading the unpeeled span made.
        sequence = sequence_oracle(
            public, rest, job.vocab, replace(cfg, rank=left), min_gap=job.min_gap
        )
    if sequence.basis.saturated or sequence.basis.rank != left:
        return None
    # Block 0 has no more distinct rows than block 1 has rows; the largest gap of a peeled
    # spectrum can fall short of that, leaving weak true directions out.
    token = build_oracle(public.family, rest, 0, rank=sequence.basis.rank)
    # Rescanned to the full length (past position 1, only the bag where the update shows it): a
    # weak true token can end the first scan early.
    scan = scan_tokens(
        token,
        job.vocab,
        per_position=public.family.positions == "learned",
        max_length=job.max_length,
        tau=cfg.tau1,
        chunk_size=cfg.chunk_size,
        later=job.bag,
    )
    if cfg.tau1 is None and scan.split is not None and scan.split.high <= proven:
        scan = scan_tokens(
            token,
            job.vocab,
            per_position=public.family.positions == "learned",
            max_length=job.max_length,
            tau=proven,
            chunk_size=cfg.chunk_size,
            later=job.bag,
        )
    tau2, clean = sequence_threshold(sequence, scan, job.vocab, cfg)
    if token.basis.saturated or scan.split is None or not clean or not scan.sets:
        return None
    return rest, DagerSpans(token, sequence), scan, cfg.tau2 or tau2
