"""A precision-aware span test for updates rounded coarser than float32 (a bfloat16 client, an
fp16 or int8 quantised update).

Rounding gives every spectrum a noise bulk at the level the update's grid predicts
(:func:`gradleak.attacks.rounding.rounding_floor`, read per tensor off the values), and a batch's
weakest true directions sink into it: a true row then sits off the span by the tilt of its
weakest directions, not by float32 noise. Three facts of such spans shape the test (SmolLM2, a
bfloat16 client, B = 16: about 400 rows in 576 dimensions):

- **One span does not separate; several do.** Block 1's rows are mostly the token's own: a
  wrong token after a true prefix stands only 2 to 3 times above a true one, within the spread
  of true rows. Deeper blocks mix more context into each row (block 2: wrong rows about 10
  times above true ones), and each block's rounding error is drawn apart from the others'. A
  candidate's score is therefore its height above the noise floor, ``log10(residual / floor)``,
  averaged over the sequence block and the blocks after it (``ROUNDED_DEPTH`` in all): the
  geometric mean of its residuals in units of each span's floor. Averaging beats requiring each
  span's own threshold: on three bfloat16 batches it cut no true row where per-span thresholds
  cut 5 to 12 of 613 for as many wrong rows passing.
- **Rows at later positions stand further off than the first.** A sequence's first row carries
  its largest gradient, so it lies in the span's strongest, best-estimated directions (block 1:
  true first rows at most 2e-3 off, later ones up to 1.2e-2). First tokens get a threshold of
  their own, read at position 0 (the batch's tokens against a sample of the rest); later
  positions get one read at position 1, where the pairs (first token, any candidate) hold one
  true row per sequence among thousands of wrong ones.
- **Later true rows reach up to the wrong cluster.** At position 1 the scores' largest log-gap
  splits true pairs from wrong ones; later true rows stand up to 4 times above the true
  cluster there, so the threshold is the least wrong pair's score, and an extension below the
  gap's midpoint is *sure*: a prefix with a sure extension keeps only those (a frequent token
  such as " the" passes after many prefixes just below the threshold), and a prefix with none
  keeps its best unsure one but also ends, so a sentence whose end a wrong token passed is
  returned whole (:class:`~gradleak.attacks.dager.decoder.Gate`'s ``sure``).

Block 0's attention output, the exact search's screen, is not used: its true rows stand up to 0.1
off its rounded span. Nothing here certifies: the plan's ``lossy_update`` cause stays on every
result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from gradleak.attacks.dager.config import DagerConfig
from gradleak.attacks.dager.decoder import Gate
from gradleak.attacks.dager.oracle import ATTENTION_INPUT_ROLES, SpanOracle
from gradleak.attacks.dager.plan import FLOAT_GRIDS
from gradleak.attacks.dager.spans import block_oracle
from gradleak.attacks.dager.tokens import TokenScan
from gradleak.attacks.thresholds import largest_gap_split
from gradleak.attacks.verdict import Cause, CauseKind
from gradleak.models.families import LinearLayer
from gradleak.models.loading import PublicModel
from gradleak.models.probe import LinearInputProbe

#: Blocks whose spans score a rounded update's prefixes, from the sequence block on.
ROUNDED_DEPTH = 3
#: Tokens outside block 0's set sampled as known-false first tokens.
_FALSE_SAMPLE = 1024
#: Most first tokens whose position-1 extensions set the later threshold.
_FIRST_TOKENS = 64


@dataclass(frozen=True)
class FloorGate(Gate):
    """A gate scoring rows by their mean height above the noise floors of several spans.

    ``oracle`` is the sequence block's (whose rows count for the repeat rule); ``oracles`` are
    every span scored, ``floors`` their noise floors (relative residuals); the score is
    ``10 ** mean(log10(residual / floor))``, so ``threshold`` is in units of the floors.
    """

    oracles: tuple[SpanOracle, ...] = ()
    floors: tuple[float, ...] = ()
    _probe: LinearInputProbe | None = field(default=None, repr=False, compare=False)

    @property
    def probe(self) -> LinearInputProbe:
        """Returns one probe computing every scored span's rows."""
        if self._probe is None:
            layers = [o.layer for o in self.oracles]
            object.__setattr__(self, "_probe", LinearInputProbe(self.oracle.probe.family, layers))
        assert self._probe is not None
        return self._probe

    def residuals(
        self, rows: dict[LinearLayer, torch.Tensor], *, below: float | None = None
    ) -> torch.Tensor:
        """Returns each row's geometric-mean residual in units of the spans' floors (always the
        whole score: ``below`` bounds nothing here)."""
        return floor_scores(self.oracles, self.floors, rows)


def scores_above_floor(causes: Sequence[Cause]) -> bool:
    """Returns whether a search under ``causes`` tests prefixes with :func:`rounded_gate`: the
    update was rounded to a float grid coarser than float32 (an int8 step buries most of a
    batch's directions, ARCHITECTURE, *Rounded updates*; it keeps the exact gate)."""
    return any(c.kind == CauseKind.LOSSY_UPDATE and c.detail in FLOAT_GRIDS for c in causes)


def floor_scores(
    oracles: Sequence[SpanOracle], floors: Sequence[float], rows: dict[LinearLayer, torch.Tensor]
) -> torch.Tensor:
    """Returns ``10 ** mean(log10(residual / floor))`` over ``oracles`` for the probed rows."""
    logs = [
        torch.log10(o.basis.residuals(rows[o.layer]).clamp_min(1e-30) / floor)
        for o, floor in zip(oracles, floors, strict=True)
    ]
    return torch.pow(10.0, torch.stack(logs).mean(dim=0))


def rounded_gate(
    public: PublicModel,
    gradients: Mapping[str, torch.Tensor],
    vocab: torch.Tensor,
    scan: TokenScan,
    sequence: SpanOracle,
    config: DagerConfig,
    *,
    min_gap: float,
) -> FloorGate:
    """Returns the gate that tests a rounded update's prefixes: the sequence block's span and
    those of the blocks after it that the update exposes, scored above their noise floors, with
    the first tokens' threshold read at position 0 and the later positions' at position 1."""
    oracles = _oracles(public, gradients, vocab, sequence, config, min_gap=min_gap)
    floors = tuple(o.basis.rounding_floor or 1.0 for o in oracles)
    gate = FloorGate(sequence, math.inf, oracles=oracles, floors=floors)
    first, starts = _first_threshold(gate, scan, vocab, config)
    later = scan.sets[1] if len(scan.sets) > 1 else scan.sets[0]
    split = _later_split(gate, starts, later) if starts.numel() else None
    if split is None:
        return FloorGate(sequence, first, oracles=oracles, floors=floors)
    return FloorGate(
        sequence,
        max(split[1], first),
        first=first,
        sure=max(split[0], first),
        oracles=oracles,
        floors=floors,
    )


def _oracles(
    public: PublicModel,
    gradients: Mapping[str, torch.Tensor],
    vocab: torch.Tensor,
    sequence: SpanOracle,
    config: DagerConfig,
    *,
    min_gap: float,
) -> tuple[SpanOracle, ...]:
    """Returns the sequence block's oracle and those of the next exposed, unsaturated blocks."""
    oracles = [sequence]
    family = public.family
    for block in range(sequence.block + 1, sequence.block + ROUNDED_DEPTH):
        exposed = block < family.num_blocks and any(
            family.has_linear_layer(block, role)
            and family.linear_layer(block, role).weight_name in gradients
            for role in ATTENTION_INPUT_ROLES
        )
        if not exposed:
            break
        oracle = block_oracle(public, gradients, block, vocab, config, min_gap=min_gap)
        if oracle.basis.saturated:
            break
        oracles.append(oracle)
    return tuple(oracles)


def _first_threshold(
    gate: FloorGate, scan: TokenScan, vocab: torch.Tensor, config: DagerConfig
) -> tuple[float, torch.Tensor]:
    """Returns the first tokens' threshold (block 0's tokens at position 0 against a sample of
    the rest, split at their scores' largest log-gap) and the tokens below it, surest first."""
    generator = torch.Generator().manual_seed(config.seed)
    tokens = scan.sets[0]
    outside = vocab[~torch.isin(vocab, tokens)]
    sample = outside[torch.randperm(len(outside), generator=generator)[:_FALSE_SAMPLE]]
    candidates = torch.cat([tokens, sample])
    scores = torch.cat(
        [
            gate.residuals(gate.probe(chunk[:, None])).flatten().cpu()
            for chunk in candidates.split(config.chunk_size)
        ]
    )
    split = largest_gap_split(scores, min_decades=0.0)
    if split is None:
        return 0.0, tokens[:0]
    threshold = split.threshold()
    order = torch.argsort(scores)
    order = order[scores[order] < threshold][:_FIRST_TOKENS]
    return threshold, candidates[order]


def _later_split(
    gate: FloorGate, starts: torch.Tensor, candidates: torch.Tensor
) -> tuple[float, float] | None:
    """Returns (sure, threshold) for later positions from every (first token, candidate) pair at
    position 1 (less those repeating their first token, whose rows equal the first row): the
    scores' largest log-gap splits true pairs from wrong ones; below its geometric midpoint an
    extension is sure, and the threshold is the least wrong pair's score. None where no gap
    shows."""
    _, state = gate.probe.start(starts[:, None])
    scores = gate.residuals(gate.probe.branch(state, candidates)).cpu()
    scores = scores[starts[:, None] != candidates[None, :]]
    split = largest_gap_split(scores, min_decades=0.0)
    if split is None:
        return None
    return split.threshold(), split.high
