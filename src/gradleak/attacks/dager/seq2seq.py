"""The decoder's side of a sequence-to-sequence update: each target, grown as a causal prefix.

A sequence-to-sequence client trains an encoder-decoder on (source, target) pairs: the encoder
reads the source, which DAGER's encoder search recovers as for classification; the decoder reads
the target shifted right (the start token, then every target token but the last), under causal
self-attention, so the decoder-only prefix search applies to it
(:class:`~gradleak.models.families.decoder_side.DecoderSide`):

- block 0's self-attention q/k/v span gives the tokens (per position with BART's learned
  positions, one bag with T5's relative ones);
- block 0's cross-attention query reads the decoder's prefix after self-attention and nothing of
  the encoder (its key and value read the encoder's rows): its span certifies whole prefixes.
  Every later decoder input also depends on the source, which the prefix search does not know.

Every decoder input starts with the model's start token (public), so position 0 is that token
alone. A prefix search ends each target one token short: the last target token is only a
prediction target, whose input row (where the batch's longest target has none, or where padding
follows it) gets no gradient. It reaches the language-model head's gradient, and is read there
as a next-token client's last token is (:mod:`gradleak.attacks.dager.targets`), with each target
paired with its source: the decoder block 0's MLP input depends on both, so the pair whose rows
lie in that MLP's span is the true one. The last tokens are proved only where the whole batch,
sources and targets paired, reproduces the head's gradient to float precision; a target whose
source was not recovered keeps its proved tokens and says its last one is unread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from gradleak.attacks.base import Reconstruction, RecoveredSequence
from gradleak.attacks.budget import Deadline
from gradleak.attacks.dager.accounting import out_of_time
from gradleak.attacks.dager.adapters import adapters_only
from gradleak.attacks.dager.config import DagerConfig
from gradleak.attacks.dager.oracle import MLP_INPUT_ROLES, input_side_gradient
from gradleak.attacks.dager.plan import SearchKind, Spectra, plan_search, read_arithmetic
from gradleak.attacks.dager.searches import SEARCHES, SearchJob
from gradleak.attacks.dager.spans import DagerSpans, block_oracle, max_positions, vocabulary
from gradleak.attacks.dager.targets import complete_next_token
from gradleak.attacks.span import span_basis
from gradleak.attacks.thresholds import largest_gap_split
from gradleak.attacks.verdict import Cause, CauseKind
from gradleak.errors import GradientNotExposedError
from gradleak.models.families.decoder_side import CROSS_QUERY, DecoderSide
from gradleak.models.loading import PublicModel
from gradleak.models.task_loss import seq2seq_inputs
from gradleak.update import ClientUpdate

Gradients = Mapping[str, torch.Tensor]
#: A span within this many directions of its room pairs nothing (the paper's margin).
_MARGIN = 20

_NO_SOURCE = Cause(
    CauseKind.TOKEN_UNREAD,
    count=1,
    detail="the target's last token reaches only the language-model head, and is read there "
    "with its source, which was not recovered",
)


def search_targets(
    public: PublicModel,
    update: ClientUpdate,
    gradients: Gradients,
    config: DagerConfig,
    deadline: Deadline,
) -> Reconstruction:
    """Returns the decoder inputs the decoder's spans prove (each target's start token and all
    but its last token), or why none could be searched."""
    side = public.family.decoder_side()
    if not isinstance(side, DecoderSide):
        return _unsupported(f"{public.family.name} has no decoder to search")
    view = replace(public, family=side)
    vocab = torch.unique(torch.cat([vocabulary(public), torch.tensor([side.start_token()])]))
    reading = read_arithmetic(update, causal=True)
    if update.metadata.train_mode:
        return _unsupported("the client trained with dropout, which the decoder's side ignores")
    try:
        spans = DagerSpans(
            token=block_oracle(view, gradients, 0, vocab, config, min_gap=reading.min_gap),
            sequence=block_oracle(
                view, gradients, 0, vocab, config, min_gap=reading.min_gap, roles=(CROSS_QUERY,)
            ),
        )
    except GradientNotExposedError as err:
        return _unsupported(str(err))
    saturated = tuple(
        (o.block, o.basis.in_features) for o in (spans.token, spans.sequence) if o.basis.saturated
    )
    spectra = Spectra(
        saturated=saturated,
        sequence_saturated=spans.sequence.basis.saturated,
        adapters=adapters_only(side, gradients),
        width=spans.token.basis.in_features,
    )
    plan = plan_search(replace(reading, spectra=spectra), config)
    if plan.search != SearchKind.PREFIX:
        return _unsupported(f"the decoder's side is searched exactly only, not {plan.search.value}")
    job = SearchJob(
        public=view,
        update=update,
        gradients=gradients,
        # The certifying gate sits in block 0 as the screen would, so a screen saves nothing,
        # and the attention output's weakest directions can hold true rows out (BART, 2 blocks
        # of 64, B = 4: true rows at 2e-5 against a threshold of 1e-5).
        config=replace(config, screen=False),
        plan=plan,
        vocab=vocab,
        max_length=min(config.max_length, max_positions(public)),
        min_gap=reading.min_gap,
        spans=spans,
        deadline=deadline,
    )
    found = SEARCHES[SearchKind.PREFIX].run(job)
    if deadline.expired():  # the frontier was returned as it stood
        found = out_of_time(found, deadline)
    started = [s for s in found.sequences if s.token_ids[:1] == (side.start_token(),)]
    diagnostics = {
        **found.diagnostics,
        "family": side.name,
        "search": plan.search.value,
        "seconds": job.timings,
        "not_from_start": len(found.sequences) - len(started),
    }
    return replace(found, sequences=tuple(started), diagnostics=diagnostics)


def complete_targets(
    public: PublicModel,
    gradients: Gradients,
    prefixes: Reconstruction,
    sources: Sequence[RecoveredSequence],
) -> Reconstruction:
    """Returns the targets: each decoder input found, paired with its source, its last token read
    from the head's gradient and its start token dropped."""
    side = public.family.decoder_side()
    if not prefixes.sequences or not isinstance(side, DecoderSide):
        return prefixes
    pairs = pair_sources(public, gradients, [s.token_ids for s in prefixes.sequences], sources)
    paired = [s for s, j in zip(prefixes.sequences, pairs, strict=True) if j is not None]
    completed = complete_next_token(
        public,
        gradients,
        replace(prefixes, sequences=tuple(paired)),
        sources=[sources[j].token_ids for j in pairs if j is not None],
    )
    by_prefix = dict(zip([s.token_ids for s in paired], completed.sequences, strict=True))
    targets = tuple(
        _target(public, by_prefix.get(s.token_ids) or _unread(s)) for s in prefixes.sequences
    )
    diagnostics = {
        **completed.diagnostics,
        "pairs": [None if j is None else int(j) for j in pairs],
    }
    return replace(prefixes, sequences=targets, diagnostics=diagnostics)


def pair_sources(
    public: PublicModel,
    gradients: Gradients,
    prefixes: Sequence[tuple[int, ...]],
    sources: Sequence[RecoveredSequence],
) -> list[int | None]:
    """Returns, per decoder prefix, the index of its source in ``sources``, or None.

    The decoder block 0's MLP input depends on the prefix and, through cross-attention, on the
    source: the true pair's rows lie in that MLP's span (residuals at float noise), the others'
    decades off; each prefix takes the closest source still free, while it stands on the near
    side of the residuals' largest log-gap. Where that span is not shared or fills its room,
    prefixes and sources are paired in the order found (the head's fit still tests the pairs).
    """
    if not sources:
        return [None] * len(prefixes)
    scores = _pair_residuals(public, gradients, prefixes, [s.token_ids for s in sources])
    if scores is None:
        return [j if j < len(sources) else None for j in range(len(prefixes))]
    split = largest_gap_split(scores.flatten().clamp_min(1e-30))
    limit = split.threshold() if split is not None else float("inf")
    pairs: list[int | None] = [None] * len(prefixes)
    free = set(range(len(sources)))
    for flat in torch.argsort(scores.flatten()).tolist():
        i, j = divmod(flat, len(sources))
        if pairs[i] is None and j in free and float(scores[i, j]) < limit:
            pairs[i] = j
            free.discard(j)
    return pairs


def _pair_residuals(
    public: PublicModel,
    gradients: Gradients,
    prefixes: Sequence[tuple[int, ...]],
    sources: Sequence[tuple[int, ...]],
) -> torch.Tensor | None:
    """Returns the largest residual of each (prefix, source) pair's rows at the decoder block 0's
    MLP input, shaped (prefixes, sources), or None where that span cannot pair them."""
    side = public.family.decoder_side()
    assert side is not None
    layer = next(
        (
            side.linear_layer(0, role)
            for role in MLP_INPUT_ROLES
            if side.has_linear_layer(0, role)
            and input_side_gradient(side.linear_layer(0, role), gradients) is not None
        ),
        None,
    )
    if layer is None:
        return None
    gradient = input_side_gradient(layer, gradients)
    assert gradient is not None
    basis = span_basis([gradient])
    if basis.saturated or basis.rank >= basis.in_features - _MARGIN:
        return None
    pairs = [(p, s) for p in prefixes for s in sources]
    inputs = seq2seq_inputs(public, [s for _, s in pairs], [p for p, _ in pairs])
    inputs.pop("labels")
    decoder_ids = torch.zeros(len(pairs), max(len(p) for p in prefixes), dtype=torch.long)
    for row, (prefix, _) in enumerate(pairs):
        decoder_ids[row, : len(prefix)] = torch.tensor(prefix)
    captured: dict[str, torch.Tensor] = {}
    module = public.model.get_submodule(layer.module_name)
    hook = module.register_forward_pre_hook(lambda m, args: captured.setdefault("rows", args[0]))
    try:
        with torch.no_grad():
            public.model(**inputs, decoder_input_ids=decoder_ids.to(inputs["input_ids"].device))
    finally:
        hook.remove()
    residuals = basis.residuals(captured["rows"]).cpu()
    lengths = torch.tensor([len(p) for p, _ in pairs])
    valid = torch.arange(residuals.shape[1])[None] < lengths[:, None]
    worst = residuals.masked_fill(~valid, 0).amax(dim=1)
    return worst.reshape(len(prefixes), len(sources))


def _target(public: PublicModel, sequence: RecoveredSequence) -> RecoveredSequence:
    """Returns a decoder input (start token first, last target appended) as its target."""
    ids = sequence.token_ids[1:]
    return replace(
        sequence,
        token_ids=ids,
        text=public.tokenizer.decode(list(ids)),
        residuals=sequence.residuals[1:],
    )


def _unread(sequence: RecoveredSequence) -> RecoveredSequence:
    return replace(sequence, assurance=sequence.assurance.with_causes([_NO_SOURCE]))


def _unsupported(detail: str) -> Reconstruction:
    cause = Cause(CauseKind.UNSUPPORTED, detail=detail)
    return Reconstruction("dager", (), causes=(cause,), diagnostics={"status": detail})
