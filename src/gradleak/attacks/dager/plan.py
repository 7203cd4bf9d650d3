"""Which DAGER search an update gets, decided by a pure function of what the update shows.

:func:`read_arithmetic` reads what the metadata says of the update's arithmetic (a recorded
noise defence, local steps, dtype) before any spectrum is computed; the spectra, once read, join
the reading; :func:`plan_search` turns the reading and the settings into a :class:`SearchPlan`:
the search to run, and the causes that keep every result from a certificate before any search
begins. Nothing here touches a tensor, so every decision can be tested on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from gradleak.attacks.dager.config import DagerConfig
from gradleak.attacks.span import MIN_GAP_DECADES
from gradleak.attacks.verdict import Cause, CauseKind
from gradleak.update import ClientUpdate

#: Defences whose noise breaks the exact span test (names as the client records them).
NOISY_DEFENCES = ("noise", "dp-sgd")
#: Client dtypes whose rounding keeps true rows a rounding step off the span.
LOSSY_DTYPES = ("bfloat16", "float16")
#: Roundings so coarse that true rows sit as far off the span as wrong ones (SmolLM2, int8:
#: residuals 0.05 to 0.5): the exact search is not tried.
COARSE_ROUNDINGS = ("int8",)
#: Roundings to a float grid (a 16-bit client or an fp16 update): 0 stays 0, and a value goes to
#: 0 only below half the format's smallest step (float16: 3e-8), where an int8 step (max|g| / 127)
#: zeroes small values, and so whole rows, of every tensor.
FLOAT_GRIDS = ("bfloat16", "float16", "fp16")
#: Sequence causes of updates whose rows are only near their spans, not in them.
_NEAR_SPAN = (CauseKind.LOSSY_UPDATE, CauseKind.DRIFT, CauseKind.PRECISION, CauseKind.ROUNDING)
#: Smallest spectral drop (decades) read as the end of a multi-step weight delta's signal: the
#: drifting inputs of later blocks blur the gap that a one-step gradient shows.
DRIFT_MIN_GAP = 0.5
#: What ranks candidates on a float32 multi-step delta (the ranked search's evidence there).
ROUNDED = "the attention-output spans of blocks 0 and 1, read above the weights' known rounding,"


class SearchKind(str, Enum):
    """The searches DAGER can run."""

    PREFIX = "prefix"
    """Causal models: grow prefixes, each tested against the sequence block's span."""
    ENCODER = "encoder"
    """Encoders: fill whole sentences of each likely length, peeling each one found."""
    RANKED = "rank"
    """Causal models past the hidden-size limit: rank candidates by MLP down-projection spans."""
    PURSUIT = "pursuit"
    """LoRA past the rank limit: rows found by a sparse pursuit over the adapters' gradients."""
    NOISY_FILTER = "noise-filter"
    """Noised updates: the paper's statistical filter (App. C.4)."""
    NOISY_BEAM = "noise-beam"
    """Noised updates: gradleak's soft beam over summed z-scores."""
    DROPOUT = "dropout"
    """Updates computed with dropout on: block 0's rows fitted under masks, linked by ranking."""
    SUBSPACE = "subspace"
    """Updates no span test can read: the continuous subspace search ranks tokens instead."""


@dataclass(frozen=True)
class Spectra:
    """What the spans' spectra show.

    Attributes:
        saturated: (block, input width) of every saturated span, token block first.
        ranking_blocks: blocks whose MLP down-projection the update exposes, within
            ``rank_blocks`` (the ranked search's evidence).
        sequence_saturated: the span that tests sequences is saturated.
        adapters: the spans are LoRA adapters' (the update carries no base weight): past their
            rank limit no span test applies, and the pursuit replaces every other search.
        projected: the adapter rank where the spans were read through the A factors (the first
            LoRA round), else None.
        width: the spans' input width (what a projected test falls short of).
    """

    saturated: tuple[tuple[int, int], ...] = ()
    ranking_blocks: tuple[int, ...] = ()
    sequence_saturated: bool = False
    adapters: bool = False
    projected: int | None = None
    width: int = 0


@dataclass(frozen=True)
class UpdateReading:
    """What the server reads off an update before searching.

    Attributes:
        causal: the model is a decoder.
        noise_defence: the recorded defence that noised the update, or None.
        local_steps: local steps of a multi-step weight delta (0 when unknown); None for a
            one-step update.
        dtype: the client's parameter dtype.
        rounding: how the update's values were rounded coarser than float32 (a 16-bit dtype or
            a recorded quantisation scheme), or None.
        spectra: what the spans show; None until they are read (a noised update needs none).
        dropout: the rate of the dropout that masked block 0's rows, where the client trained
            with dropout on and the model has one; None otherwise.
        weight_rounding: where the spans were read above the known rounding of a float32
            multi-step delta (:mod:`gradleak.attacks.weight_rounding`), that rounding in words.
    """

    causal: bool
    noise_defence: str | None = None
    local_steps: int | None = None
    dtype: str = "float32"
    rounding: str | None = None
    spectra: Spectra | None = None
    dropout: float | None = None
    weight_rounding: str | None = None

    @property
    def drifts(self) -> bool:
        """Returns whether the update is a weight delta over several local steps."""
        return self.local_steps is not None

    @property
    def min_gap(self) -> float:
        """Returns the smallest spectral drop read as the end of the signal."""
        return DRIFT_MIN_GAP if self.drifts else MIN_GAP_DECADES


@dataclass(frozen=True)
class SearchPlan:
    """The search chosen for an update.

    Attributes:
        search: which search runs.
        causes: what keeps every result best-effort before the search begins.
        peel: whether sentences found are peeled off and the rest attacked again.
        scan_fallback: whether block 0's scan may rank tokens where its residuals show no gap.
    """

    search: SearchKind
    causes: tuple[Cause, ...] = ()
    peel: bool = False
    scan_fallback: bool = False

    @property
    def exact(self) -> bool:
        """Returns whether the search can certify (nothing stands against it yet)."""
        return not self.causes


def read_arithmetic(
    update: ClientUpdate, *, causal: bool, dropout: float | None = None
) -> UpdateReading:
    """Returns what the update's metadata says of its arithmetic (no spectra yet); ``dropout`` is
    the rate of the model's dropout before block 0, which counts only if the client trained."""
    meta = update.metadata
    steps = None
    if meta.kind == "weight_delta" and meta.local_steps != 1:
        steps = meta.local_steps or 0
    return UpdateReading(
        causal=causal,
        noise_defence=noisy_defence(meta.defence),
        local_steps=steps,
        dtype=meta.dtype,
        rounding=lossy_rounding(meta.dtype, meta.defence),
        dropout=dropout if meta.train_mode and dropout else None,
    )


def plan_search(reading: UpdateReading, config: DagerConfig) -> SearchPlan:
    """Returns the search for ``reading`` under ``config``, and the causes known before it runs.

    Raises:
        ValueError: an update that is searched exactly has no spectra in ``reading`` yet.
    """
    noise = noise_search(reading, config)
    if noise is not None:
        return SearchPlan(noise, (Cause(CauseKind.NOISE, detail=_noise_detail(reading)),))
    if skips_exact_search(reading, config):
        return SearchPlan(SearchKind.SUBSPACE, _rounding_causes(reading))
    if reading.spectra is None:
        raise ValueError("plan_search needs the spans' spectra for an update searched exactly")
    causes = (*_arithmetic_causes(reading), *_rounding_causes(reading), *_projected(reading))
    if reading.dropout is not None:
        masked = Cause(CauseKind.DROPOUT, detail=f"p = {reading.dropout:g}")
        return SearchPlan(SearchKind.DROPOUT, (*causes, masked))
    if config.subspace == "auto" and any(c.kind == CauseKind.PRECISION for c in causes):
        return SearchPlan(SearchKind.SUBSPACE, causes)
    spectra = reading.spectra
    if reading.causal and reading.drifts and reading.weight_rounding is not None:
        return SearchPlan(SearchKind.RANKED, (*causes, Cause(CauseKind.RANKED, detail=ROUNDED)))
    if spectra.adapters and spectra.saturated and not reading.drifts:
        return SearchPlan(SearchKind.PURSUIT, (*causes, Cause(CauseKind.PURSUIT)))
    if (
        reading.causal
        and spectra.sequence_saturated
        and config.saturated == "rank"
        and spectra.ranking_blocks
        and not reading.drifts
    ):
        ranked = Cause(CauseKind.RANKED, detail=", ".join(map(str, spectra.ranking_blocks)))
        return SearchPlan(SearchKind.RANKED, (*causes, ranked), peel=config.peel)
    search = SearchKind.PREFIX if reading.causal else SearchKind.ENCODER
    return SearchPlan(
        search,
        causes,
        peel=config.peel and not causes,
        scan_fallback=bool(causes) and not reading.drifts,
    )


def skips_exact_search(reading: UpdateReading, config: DagerConfig) -> bool:
    """Returns whether the update goes to the subspace search before any span is read: its
    values were rounded so coarsely that no span test can separate true rows."""
    return (
        config.subspace == "auto"
        and reading.noise_defence is None
        and reading.rounding in COARSE_ROUNDINGS
    )


def refines_with_subspace(causes: tuple[Cause, ...], found: int, config: DagerConfig) -> bool:
    """Returns whether an exact search's result is handed to the subspace search: it found no
    sequence on an update whose rows are only near their spans (rounded or drifting)."""
    return config.subspace == "auto" and found == 0 and any(c.kind in _NEAR_SPAN for c in causes)


def ranked_plan(reading: UpdateReading, blocks: tuple[int, ...]) -> SearchPlan:
    """Returns the ranked search over ``blocks``' MLP down-projections, to complete an exact
    prefix search that left rows unexplained; nothing it finds is certified."""
    ranked = Cause(CauseKind.RANKED, detail=", ".join(map(str, blocks)))
    causes = (*_arithmetic_causes(reading), *_rounding_causes(reading), ranked)
    return SearchPlan(SearchKind.RANKED, causes, peel=True)


def noisy_defence(defence: Mapping | list | None) -> str | None:
    """Returns the name of a noise-adding defence in an update's defence record, or None."""
    if isinstance(defence, (list, tuple)):
        return next((n for n in map(noisy_defence, defence) if n), None)
    if not isinstance(defence, Mapping):
        return None
    if defence.get("name") in NOISY_DEFENCES:
        return str(defence["name"])
    return noisy_defence(defence.get("steps")) or noisy_defence(defence.get("client_defence"))


def lossy_rounding(dtype: str, defence: Mapping | list | None) -> str | None:
    """Returns the coarsest rounding the update's values went through, or None (float32/64)."""
    scheme = _quantisation(defence)
    return scheme if scheme is not None else (dtype if dtype in LOSSY_DTYPES else None)


def reads_token_bag(plan: SearchPlan, reading: UpdateReading, defence: object) -> bool:
    """Returns whether the token table's gradient shows the batch's bag of tokens: zero on every
    token the batch lacks and non-zero on every token it holds. It does where nothing but the
    client's own arithmetic made the update (an exact search, a weight delta over local steps) and
    where the only change was a rounding to a float grid (:data:`FLOAT_GRIDS`): a used token's row
    would vanish only if every entry fell below half the grid's smallest step (SmolLM2, B = 16,
    float16: the smallest used row's largest entry 3e-5, a thousand times above that). A noise,
    pruning or int8 defence adds or removes rows."""
    if defence is None and (plan.exact or reading.drifts):
        return True
    quantised_only = isinstance(defence, Mapping) and defence.get("name") == "quantize"
    return reading.rounding in FLOAT_GRIDS and (defence is None or quantised_only)


def _quantisation(defence: Mapping | list | None) -> str | None:
    if isinstance(defence, (list, tuple)):
        return next((n for n in map(_quantisation, defence) if n), None)
    if not isinstance(defence, Mapping):
        return None
    if defence.get("name") == "quantize":
        return str(defence.get("scheme", "int8"))
    return _quantisation(defence.get("steps")) or _quantisation(defence.get("client_defence"))


def _projected(reading: UpdateReading) -> tuple[Cause, ...]:
    """Returns the cause of a first-round span read through an A factor narrower than the
    input."""
    spectra = reading.spectra or Spectra()
    if spectra.projected is None or spectra.projected >= spectra.width:
        return ()
    return (Cause(CauseKind.PROJECTED, count=spectra.projected),)


def _rounding_causes(reading: UpdateReading) -> tuple[Cause, ...]:
    if reading.rounding is None:
        return ()
    return (Cause(CauseKind.LOSSY_UPDATE, detail=reading.rounding),)


def noise_search(reading: UpdateReading, config: DagerConfig) -> SearchKind | None:
    mode = config.noise
    if mode == "auto":
        mode = "beam" if reading.noise_defence else "off"
    return {"filter": SearchKind.NOISY_FILTER, "beam": SearchKind.NOISY_BEAM}.get(mode)


def _noise_detail(reading: UpdateReading) -> str | None:
    return f"{reading.noise_defence} defence" if reading.noise_defence else None


def _arithmetic_causes(reading: UpdateReading) -> tuple[Cause, ...]:
    """Returns the causes the update's arithmetic and spectra impose on every result."""
    if reading.noise_defence:  # noise recorded, but the exact search was asked for
        return (Cause(CauseKind.NOISE, detail=_noise_detail(reading)),)
    spectra = reading.spectra or Spectra()
    drift = Cause(CauseKind.DRIFT, count=reading.local_steps) if reading.drifts else None
    if drift is not None and reading.weight_rounding is not None:
        # The spans were read above the weights' known rounding: searched, never certified.
        return (drift, Cause(CauseKind.ROUNDING, detail=reading.weight_rounding))
    if spectra.saturated:
        if drift is None:
            block, width = spectra.saturated[0]
            return (Cause(CauseKind.SATURATED, block=block, count=width),)
        if reading.dtype == "float32":
            return (Cause(CauseKind.PRECISION, detail=reading.dtype),)
        return (drift,)
    return (drift,) if drift is not None else ()
