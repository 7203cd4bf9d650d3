"""DAGER against a client that trained with dropout on (the DROPOUT search).

Block 0's rows are fitted under dropout masks (:mod:`gradleak.attacks.dager.masks`,
:mod:`gradleak.attacks.dager.mask_scan`): a token passes at a position when some mask puts its
row in block 0's span, which is proved under the mask model (its residual falls to float
rounding, three decades under any false token's), and block 0's rank counts the rows the scan
must find. The proved rows are linked into sentences by block 0's attention-output span
(:mod:`gradleak.attacks.dager.linking`), a ranking: every sequence is best-effort, with the
DROPOUT cause saying so.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gradleak.attacks.base import Reconstruction, RecoveredSequence
from gradleak.attacks.dager.accounting import batch_size
from gradleak.attacks.dager.linking import Linked, link_prefixes, link_sentences
from gradleak.attacks.dager.mask_scan import scan_masked_tokens
from gradleak.attacks.dager.masks import MaskModel
from gradleak.attacks.dager.plan import SearchKind
from gradleak.attacks.dager.spans import block_oracle
from gradleak.attacks.dager.tokens import embedding_bag
from gradleak.attacks.verdict import Assurance, Cause, CauseKind
from gradleak.errors import GradientNotExposedError
from gradleak.models.dropout_site import input_dropout

if TYPE_CHECKING:
    from gradleak.attacks.dager.mask_scan import MaskedScan
    from gradleak.attacks.dager.searches import SearchJob
    from gradleak.models.loading import PublicModel

#: Fewest clean-residual candidates per position whose masks are fitted; a masked true row keeps
#: most of its clean row and ranks within the first few dozen (measured at B = 2 to 8).
MIN_SHORTLIST = 64


class DropoutSearch:
    """Updates computed with dropout on: tokens proved under masks, linked by ranking."""

    kind = SearchKind.DROPOUT

    def run(self, job: SearchJob) -> Reconstruction:
        """Returns the sentences linked from the tokens that fit block 0's span under masks."""
        public, spans, cfg = job.public, job.require_spans(), job.config
        causes = job.plan.causes
        site = input_dropout(public.family)
        if site is None:
            detail = "the model has no dropout before block 0, so no mask can be fitted"
            unsupported = Cause(CauseKind.UNSUPPORTED, detail=detail)
            return Reconstruction("dager", (), causes=(*causes, unsupported))
        model = MaskModel(public.family, site)
        started = time.perf_counter()
        # Dropout leaves the token table's gradient zero on every token the batch lacks.
        bag = (
            embedding_bag(public.family, job.gradients)
            if job.update.metadata.defence is None
            else None
        )
        scan = scan_masked_tokens(
            spans.token,
            model,
            job.vocab,
            max_length=job.max_length,
            shortlist=max(MIN_SHORTLIST, spans.token.basis.rank),
            chunk_size=cfg.chunk_size,
            deadline=job.deadline,
            bag=bag,
            end_token=None if public.family.causal else _end_token(public),
        )
        job.timings["token_scan"] = time.perf_counter() - started
        diagnostics: dict[str, Any] = {
            **spans.describe(),
            "dropout": {"module": site.module_name, "rate": site.rate, "norm": site.norm_name},
            "tau1": scan.threshold,
            "tokens_per_position": [len(s) for s in scan.sets],
            "guessed_positions": list(scan.holes),
            "rows": {"proved": sum(len(s) for s in scan.sets), "rank": scan.rows_total},
            "scanned": "embedding bag past position 0" if bag is not None else "vocabulary",
        }
        if not scan.sets:
            batch = (*causes, Cause(CauseKind.NO_TOKENS, block=0))
            return Reconstruction("dager", (), causes=batch, diagnostics=diagnostics)
        started = time.perf_counter()
        try:
            linked = self._link(job, model, scan)
        except GradientNotExposedError as error:
            unlinked = Cause(CauseKind.UNSUPPORTED, detail=str(error).rstrip("."))
            return Reconstruction("dager", (), causes=(*causes, unlinked), diagnostics=diagnostics)
        job.timings["search"] = time.perf_counter() - started
        verdict = Assurance(causes)
        sequences = tuple(
            RecoveredSequence(ids, public.tokenizer.decode(list(ids)), verdict, residuals=res)
            for ids, res in zip(linked.sentences, linked.residuals, strict=True)
        )
        return Reconstruction("dager", sequences, causes=causes, diagnostics=diagnostics)

    def _link(self, job: SearchJob, model: MaskModel, scan: MaskedScan) -> Linked:
        public = job.public
        output = block_oracle(
            public, job.gradients, 0, job.vocab, job.config, min_gap=job.min_gap, roles=("o",)
        )
        size = batch_size(public, job.update, job.gradients)
        count = size.value if size is not None else None
        if public.family.causal:
            return link_prefixes(model, scan, output, batch_size=count)
        return link_sentences(model, scan, output, batch_size=count, end_token=_end_token(public))


def _end_token(public: PublicModel) -> int | None:
    """Returns the token an encoder's tokenizer ends each sentence with, or None."""
    end = getattr(public.tokenizer, "sep_token_id", None)
    return end if isinstance(end, int) else None
