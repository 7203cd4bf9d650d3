"""Reading DAGER's spans off a gradient: the token block's, the sequence block's, their thresholds.

These are the stages every DAGER search shares: build a block's oracle with its rank read from the
spectrum (capped where the span is saturated), derive a sequence gate's threshold from the data,
and add the cheap screening gate when the update exposes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from gradleak.attacks.dager.adapters import adapters_only, read_adapters
from gradleak.attacks.dager.config import DagerConfig
from gradleak.attacks.dager.decoder import Gate
from gradleak.attacks.dager.oracle import (
    ATTENTION_INPUT_ROLES,
    MLP_GATE_ROLES,
    MLP_INPUT_ROLES,
    SpanOracle,
    build_oracle,
    input_side_gradient,
    row_space_rank,
)
from gradleak.attacks.dager.tokens import TokenScan
from gradleak.attacks.span import estimate_rank
from gradleak.attacks.thresholds import MIN_SPLIT_DECADES, ResidualSplit, largest_gap_split
from gradleak.attacks.weight_rounding import WeightRounding
from gradleak.models.families import LinearLayer
from gradleak.models.loading import PublicModel

Gradients = Mapping[str, torch.Tensor]
#: How far above its noise floor (the spectrum's ratio across the rank) a true row may sit.
FLOOR_MARGIN = 3.0


@dataclass(frozen=True)
class DagerSpans:
    """The two spans DAGER tests against: block 0's (tokens) and the sequence block's."""

    token: SpanOracle
    sequence: SpanOracle

    def saturated(self) -> SpanOracle | None:
        """Returns the first saturated oracle, or None when both leave room."""
        return next((o for o in (self.token, self.sequence) if o.basis.saturated), None)

    def describe(self) -> dict[str, dict[str, float]]:
        """Returns the ranks and spectral gaps, for diagnostics."""
        return {
            "rank": {
                "token_block": self.token.basis.rank,
                "sequence_block": self.sequence.basis.rank,
            },
            "gap_decades": {
                "token_block": round(self.token.basis.gap_decades, 2),
                "sequence_block": round(self.sequence.basis.gap_decades, 2),
            },
        }


def read_spans(
    public: PublicModel,
    gradients: Gradients,
    vocab: torch.Tensor,
    config: DagerConfig,
    *,
    min_gap: float,
    rounding: WeightRounding | None = None,
) -> DagerSpans:
    """Returns block 0's span and the sequence block's, each capped where it is saturated;
    ``rounding`` is a float32 multi-step delta's known rounding (spans read above its floor)."""
    return DagerSpans(
        token=block_oracle(public, gradients, 0, vocab, config, min_gap=min_gap, rounding=rounding),
        sequence=sequence_oracle(
            public, gradients, vocab, config, min_gap=min_gap, rounding=rounding
        ),
    )


def sequence_oracle(
    public: PublicModel,
    gradients: Gradients,
    vocab: torch.Tensor,
    config: DagerConfig,
    *,
    min_gap: float,
    rounding: WeightRounding | None = None,
) -> SpanOracle:
    """Returns the span that tests whole prefixes (decoders) or sentences (encoders).

    A block shared across depth (ALBERT) whose attention inputs fill their width is read at its
    MLP down-projection instead where that is not full: its input is the MLP's width (4d), and
    every depth's rows together can leave room there (ALBERT-base at B = 16: about 11 x 150 rows
    of 3072), while block 0's rows there already depend on the whole sentence.
    """
    block, roles = sequence_layer(public, gradients, config)
    oracle = block_oracle(
        public, gradients, block, vocab, config, min_gap=min_gap, roles=roles, rounding=rounding
    )
    if not (oracle.basis.saturated and oracle.layer.shared_by > 1) or config.rank is not None:
        return oracle
    family = public.family
    if not family.has_linear_layer(0, "mlp_out"):
        return oracle
    if input_side_gradient(family.linear_layer(0, "mlp_out"), gradients) is None:
        return oracle
    wide = block_oracle(
        public, gradients, 0, vocab, config, min_gap=min_gap, roles=("mlp_out",), rounding=rounding
    )
    return oracle if wide.basis.saturated else wide


def sequence_layer(
    public: PublicModel, gradients: Gradients, config: DagerConfig
) -> tuple[int, tuple[str, ...]]:
    """Returns the block and roles whose inputs test sequences: the sequence block's attention
    inputs, or block 0's MLP input where that block is a classifier's last.

    A classifier reads its last block at one pooled position, so that block's attention-input
    gradients see the other rows only through the pooled query: their output side has rank at
    most heads x B, far below the batch's rows, and true rows fall off the span. Block 0's MLP
    input already depends on the whole prefix (or sentence), and the activation's derivative,
    different at every row, gives its gradient one direction per row.
    """
    family = public.family
    block = config.sequence_block
    if public.task == "seq_class" and block >= family.num_blocks - 1:
        roles = tuple(
            role
            for role in MLP_INPUT_ROLES
            if family.has_linear_layer(0, role)
            and input_side_gradient(family.linear_layer(0, role), gradients) is not None
        )
        if roles:
            return 0, roles
    return block, ATTENTION_INPUT_ROLES


def block_oracle(
    public: PublicModel,
    gradients: Gradients,
    block: int,
    vocab: torch.Tensor,
    config: DagerConfig,
    *,
    min_gap: float,
    roles: tuple[str, ...] = ATTENTION_INPUT_ROLES,
    rounding: WeightRounding | None = None,
) -> SpanOracle:
    """Returns ``block``'s oracle, its rank read from the spectrum within the room its rows have.

    Where the span fills that room it certifies nothing: the rank is capped at the room minus
    ``rank_cutoff`` (the paper's) and the basis is marked saturated.
    """
    family = public.family
    adapters = read_adapters(public, gradients) if adapters_only(family, gradients) else ()
    oracle = build_oracle(
        family,
        gradients,
        block,
        roles=roles,
        rank=config.rank,
        rank_tol=config.rank_tol,
        min_gap=min_gap,
        adapters=adapters,
        rounding=rounding,
    )
    # Single-token rows show the room of a normalised input (attention or MLP); an attention
    # output's room (mixtures of values) is larger than they show, so only its spectrum is checked.
    # A module shared across depth (ALBERT) sums every depth's gradient: its span holds every
    # depth's rows, whose room is the whole width, whatever block 0's rows keep to.
    shared = oracle.layer.shared_by > 1
    capacity = (
        row_space_rank(oracle, seed=config.seed)
        if roles not in (("o",), ("mlp_out",)) and not shared
        else oracle.basis.in_features
    )
    if shared:
        least = least_shared_rank(public, gradients, oracle.layer)
        # Deep rows' faint directions can read as a gap below the rows the span must hold; and
        # rows the span must hold that reach the room less the paper's margin leave no room.
        if oracle.basis.rank < least or least >= capacity - config.rank_cutoff:
            oracle.basis = replace(oracle.basis, rank=max(least, oracle.basis.rank), saturated=True)
    elif capacity < oracle.basis.in_features and config.rank is None:
        oracle = build_oracle(
            family,
            gradients,
            block,
            roles=roles,
            rank_tol=config.rank_tol,
            min_gap=min_gap,
            capacity=capacity,
            adapters=adapters,
            rounding=rounding,
        )
    if oracle.basis.rank >= capacity or oracle.basis.saturated:
        rank = min(oracle.basis.rank, max(1, capacity - config.rank_cutoff))
        oracle = build_oracle(
            public.family,
            gradients,
            block,
            roles=roles,
            rank=rank,
            adapters=adapters,
            rounding=rounding,
        )
        oracle.basis = replace(oracle.basis, saturated=True)
    return oracle


def least_shared_rank(public: PublicModel, gradients: Gradients, layer: LinearLayer) -> int:
    """Returns the fewest rows the span of a module shared across depth holds: every block that
    runs it but the last (a classifier's last block reaches the gradient only through its pooled
    rows) sees at least as many distinct rows as block 0, which are counted where the family
    has an embedding projection before block 0 (its gradient's rank; its width E if that is
    reached), and otherwise not at all (one row per block).

    Rows of deep blocks can carry gradients decades fainter than block 0's, so the spectrum of
    a span past its bound can drop inside its signal and read a rank far below its rows.
    """
    projection = public.family.embedding_projection()
    name = None if projection is None else public.family.weight_name(projection)
    if name is None or name not in gradients:
        return layer.shared_by - 1
    grad = gradients[name].detach().double()
    if float(grad.abs().max()) == 0.0:
        return layer.shared_by - 1
    rank, _ = estimate_rank(torch.linalg.svdvals(grad / grad.norm()))
    return (layer.shared_by - 1) * rank


def sequence_threshold(
    oracle: SpanOracle, scan: TokenScan, vocab: torch.Tensor, config: DagerConfig
) -> tuple[float, bool]:
    """Returns (threshold, whether the residuals showed a clean gap) for a sequence gate.

    In a causal model the sequence block's input at position 0 depends on the first token
    alone, so true first tokens and tokens that failed block 0 form two clean clusters; the
    threshold is their largest log-gap. Encoders have no such position; they reuse block 0's.
    """
    if not oracle.probe.family.causal:
        if oracle.layers[0].role in MLP_GATE_ROLES:
            return _encoder_mlp_threshold(oracle, scan, vocab, config)
        return scan.threshold, scan.split is not None
    generator = torch.Generator().manual_seed(config.seed)
    first = scan.sets[0]
    outside = vocab[~torch.isin(vocab, first)]
    sample = outside[torch.randperm(len(outside), generator=generator)[:1024]]
    candidates = torch.cat([first, sample])
    residuals = torch.cat(
        [
            oracle.residuals(oracle.probe.start(chunk[:, None])[0]).flatten().cpu()
            for chunk in candidates.split(config.chunk_size)
        ]
    )
    split = largest_gap_split(residuals)
    if split is not None:
        return split.threshold(), True
    return _fallback_threshold(residuals), False


def _encoder_mlp_threshold(
    oracle: SpanOracle, scan: TokenScan, vocab: torch.Tensor, config: DagerConfig
) -> tuple[float, bool]:
    """Returns (threshold, clean) for an encoder's block-0 MLP layer, where no row depends on one
    token, so no row is known true.

    A true row sits off the span by at most the tilt float noise gives the span's weakest
    direction (``FLOOR_MARGIN`` times its noise floor), and the threshold is that tilt, never
    more: wrong sentences of the batch's own tokens (one token off, two exchanged) can sit far
    below rows of tokens the batch lacks, so a threshold placed between the tilt and those rows
    passes them (T5-small at B = 16: 0.026, three wrong sentences certified). Known-false rows
    come from two-token sentences whose second token failed block 0 there; the threshold is clean
    when they stand a decade above the tilt, and what tells a sentence from its close wrong
    neighbours is :func:`~gradleak.attacks.dager.encoder.nearest_neighbour`.
    """
    tilt = max(FLOOR_MARGIN * oracle.basis.noise_floor, scan.threshold)
    if len(scan.sets) < 2 and oracle.probe.family.positions != "relative":
        return tilt, False
    generator = torch.Generator().manual_seed(config.seed)
    # Rows without positions (relative attention) are scanned once: that set holds everywhere.
    outside = vocab[~torch.isin(vocab, scan.sets[min(1, len(scan.sets) - 1)])]
    sample = outside[torch.randperm(len(outside), generator=generator)[:256]]
    start = scan.sets[0][:1].expand(len(sample))
    false = oracle.residuals(oracle.probe(torch.stack([start, sample], dim=1)))[:, 1]
    split = ResidualSplit(low=tilt, high=float(torch.quantile(false.double().cpu(), 0.01)), count=0)
    return tilt, scan.split is not None and split.decades >= MIN_SPLIT_DECADES


def screening_gates(
    public: PublicModel,
    gradients: Gradients,
    vocab: torch.Tensor,
    scan: TokenScan,
    config: DagerConfig,
    *,
    min_gap: float,
    rounding: WeightRounding | None = None,
) -> list[Gate]:
    """Returns the cheap screening gate (block 0's attention output) when the update exposes it."""
    if not config.screen or public.family.linear_layer(0, "o").weight_name not in gradients:
        return []
    oracle = block_oracle(
        public, gradients, 0, vocab, config, min_gap=min_gap, roles=("o",), rounding=rounding
    )
    if oracle.basis.saturated:
        return []
    tau, clean = sequence_threshold(oracle, scan, vocab, config)
    return [Gate(oracle, tau)] if clean else []


def vocabulary(public: PublicModel) -> torch.Tensor:
    """Returns the token ids a search may use: the embedding rows the tokenizer knows, but padding.

    Padding rows never reach the span (their gradient rows are zero); a pad-as-EOS token would
    otherwise pass wherever it mixes with real positions.
    """
    size = public.family.embedding().num_embeddings
    vocab = torch.arange(min(size, len(public.tokenizer)))
    pad = public.tokenizer.pad_token_id
    return vocab[vocab != pad] if pad is not None else vocab


def max_positions(public: PublicModel) -> int:
    """Returns the longest sequence the model's positions allow (unbounded for rotary positions)."""
    config = public.model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 10**9


def _fallback_threshold(residuals: torch.Tensor) -> float:
    if residuals.numel() == 0:
        return 1e-3  # the paper's tau2, used only when nothing can be measured
    return float(torch.quantile(residuals.double(), 0.01))
