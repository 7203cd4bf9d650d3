"""GradientInversion: the attack that runs one recipe of the optimisation engine.

The attack receives the public model and the update, and nothing else. It decides what it
assumes (batch size, lengths, labels) from the update and its options, records where each
assumption came from in the diagnostics, and returns best-effort (never certified) sequences.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from gradleak.attacks.base import Attack, Reconstruction, RecoveredSequence
from gradleak.attacks.optimization.config import OptimizationConfig
from gradleak.attacks.optimization.decoding import NearestTokens, allowed_tokens
from gradleak.attacks.optimization.distances import make_distance
from gradleak.attacks.optimization.engine import choose_start, optimise
from gradleak.attacks.optimization.labels import LabelGuess, infer_labels
from gradleak.attacks.optimization.layout import (
    DummyInputs,
    SequenceLayout,
    as_lengths,
    special_frame,
    split_total,
)
from gradleak.attacks.optimization.objective import GradientObjective, attack_mode
from gradleak.attacks.optimization.prior import LanguageModelPrior
from gradleak.attacks.optimization.recipes import LampCosConfig
from gradleak.attacks.optimization.selector import (
    GradientSelection,
    TensorView,
    drop_null,
    select_targets,
)
from gradleak.attacks.optimization.shape import Estimate, estimate_batch_size, estimate_total_tokens
from gradleak.attacks.verdict import Cause, CauseKind, best_effort
from gradleak.errors import GradleakError
from gradleak.models.loading import PublicModel
from gradleak.update import ClientUpdate

logger = logging.getLogger(__name__)

#: Why no optimisation result is ever certified.
NOT_A_SPAN_TEST = Cause(CauseKind.OPTIMIZATION)


@dataclass(frozen=True)
class AttackPlan:
    """What the attack matches and assumes for one update.

    Attributes:
        selection: the gradient selection.
        views: the matched tensors (numerically zero ones dropped).
        targets: their observed values.
        dropped: labels of tensors dropped as numerically zero.
        batch_size: the number of sequences, and where it came from.
        layout: the dummy token grid (lengths, special tokens, padding).
        lengths_source: where the lengths came from.
        labels: the label hypotheses, and where they came from.
    """

    selection: GradientSelection
    views: list[TensorView]
    targets: list[torch.Tensor]
    dropped: list[str]
    batch_size: Estimate
    layout: SequenceLayout
    lengths_source: str
    labels: LabelGuess

    def describe(self) -> dict[str, Any]:
        """Returns the plan as plain JSON values."""
        return {
            "selection": str(self.selection),
            "matched_tensors": [v.label for v in self.views],
            "dropped_null_tensors": self.dropped,
            "batch_size": {"value": self.batch_size.value, "source": self.batch_size.source},
            "lengths": {"value": list(self.layout.lengths), "source": self.lengths_source},
            "labels": {"source": self.labels.source, "hypotheses": len(self.labels.hypotheses)},
        }


class GradientInversion(Attack):
    """Gradient matching by optimising dummy input embeddings (TAG, LAMP, partial gradients).

    The recipe is the config's class (:mod:`.recipes`); ``name`` is the recipe's name.

    Args:
        config: the recipe and its settings (default: LAMP_cos).
        prior: a ready language-model prior (default: loaded from ``config.prior`` on first use).
    """

    name = "optimization"

    def __init__(
        self, config: OptimizationConfig | None = None, *, prior: LanguageModelPrior | None = None
    ) -> None:
        self.config = config or LampCosConfig()
        self.name = self.config.recipe
        self._prior = prior

    def __repr__(self) -> str:
        return f"GradientInversion({self.config})"

    def reconstruct(self, public: PublicModel, update: ClientUpdate) -> Reconstruction:
        """Returns the best-effort sequences whose gradient best matches the update's."""
        began = time.perf_counter()
        plan = self.plan(public, update)
        cfg, embedding = self.config, public.family.embedding()
        decoder = NearestTokens(
            embedding.weight, allowed_tokens(public.tokenizer, embedding.num_embeddings)
        )
        norm = decoder.mean_norm if cfg.init_size in (None, "auto") else float(cfg.init_size)
        prior = (
            self._load_prior(embedding.weight.device)
            if cfg.swaps and cfg.coeff_perplexity > 0
            else None
        )
        seconds: dict[str, float] = {"setup": time.perf_counter() - began}
        with attack_mode(public.model, [v.name for v in plan.views]):
            objective = GradientObjective(
                public.model,
                plan.views,
                plan.targets,
                make_distance(cfg.distance, alpha=cfg.tag_alpha),
                DummyInputs(plan.layout, embedding),
                task=public.task,
                decoder=decoder,
                memory_mb=cfg.memory_mb,
                max_chunk=cfg.max_chunk,
            )
            hypotheses = [
                torch.tensor(h, dtype=torch.long, device=embedding.weight.device)
                for h in plan.labels.hypotheses
            ]
            began = time.perf_counter()
            start, probes = choose_start(
                objective,
                hypotheses,
                cfg,
                init_size=None if cfg.init_size is None else norm,
                norm_target=norm,
                generator=torch.Generator().manual_seed(cfg.seed),
            )
            seconds["init"] = time.perf_counter() - began
            trajectory = optimise(
                objective,
                start,
                cfg,
                norm_target=norm,
                decoder=decoder,
                decode_text=public.tokenizer.decode,
                prior=prior,
                rng=random.Random(cfg.seed),
            )
            seconds.update(trajectory.seconds)
            began = time.perf_counter()
            tokens = decoder(trajectory.free)
            ids = objective.inputs.sequences(objective.inputs.full_ids(tokens))
            token_distance = float(objective.batch(embedding(tokens)[None], start.classes)[0])
            seconds["decode"] = time.perf_counter() - began
        sequences = tuple(
            RecoveredSequence(
                tuple(seq), public.tokenizer.decode(seq), best_effort(NOT_A_SPAN_TEST)
            )
            for seq in ids
        )
        diagnostics = {
            **plan.describe(),
            "config": cfg.to_dict(),
            "labels": {
                **plan.describe()["labels"],
                "value": list(plan.labels.hypotheses[start.hypothesis]),
                "probe_losses": probes,
            },
            "matched_elements": objective.matched_elements,
            "start_distance": start.distance,
            "final_loss": trajectory.loss,
            "token_distance": token_distance,
            "history": trajectory.history,
            "moves": trajectory.moves,
            "gradient_evaluations": objective.evaluations,
            "seconds_per_step": trajectory.seconds["continuous"] / max(cfg.steps, 1),
            "seconds": seconds,
        }
        return Reconstruction(
            self.name, sequences, causes=(NOT_A_SPAN_TEST,), diagnostics=diagnostics
        )

    def plan(self, public: PublicModel, update: ClientUpdate) -> AttackPlan:
        """Returns what the attack will match and assume for ``update``, before any optimisation.

        Raises:
            GradientNotExposedError: the selection needs a tensor the update does not share.
            GradleakError: nothing to match, or the lengths cannot be told.
        """
        gradients = update.gradients()
        selection = GradientSelection.parse(self.config.select)
        views = selection.views(public.family, gradients.keys())
        views, targets, dropped = drop_null(views, select_targets(views, gradients))
        if not views:
            raise GradleakError(
                "every selected gradient is zero, so there is nothing to match; check the update."
            )
        batch = self._batch_size(public, update, gradients)
        layout, lengths_source = self._layout(public, gradients, batch.value)
        labels = infer_labels(
            public.family,
            gradients,
            task=public.task,
            num_labels=public.num_labels,
            batch_size=batch.value,
            extra=update.metadata.extra,
            max_hypotheses=self.config.max_label_hypotheses,
        )
        return AttackPlan(selection, views, targets, dropped, batch, layout, lengths_source, labels)

    def _batch_size(self, public: PublicModel, update: ClientUpdate, gradients) -> Estimate:
        if update.metadata.batch_size is not None:
            return Estimate(int(update.metadata.batch_size), "disclosed")
        if self.config.batch_size is not None:
            return Estimate(self.config.batch_size, "option")
        if isinstance(self.config.lengths, tuple):
            return Estimate(len(self.config.lengths), "lengths option")
        found = estimate_batch_size(public.family, gradients, task=public.task)
        return found if found is not None else Estimate(1, "assumed")

    def _layout(
        self, public: PublicModel, gradients, batch_size: int
    ) -> tuple[SequenceLayout, str]:
        prefix, suffix = special_frame(public.tokenizer)
        if self.config.lengths is not None:
            lengths, source = as_lengths(self.config.lengths, batch_size), "option"
        else:
            total = estimate_total_tokens(public.family, gradients, task=public.task)
            if public.task == "next_token" and public.family.causal:
                # A sequence's last token predicts nothing, so no gradient row shows it.
                total = Estimate(
                    total.value + batch_size, f"{total.source} + {batch_size} last token(s)"
                )
            if total.value < batch_size * (len(prefix) + len(suffix) + 1):
                raise GradleakError(
                    f"the update shows {total.value} tokens, too few for {batch_size} sequences; "
                    f"pass lengths= or batch_size=."
                )
            lengths, source = split_total(total.value, batch_size), total.source
        pad = public.tokenizer.pad_token_id
        layout = SequenceLayout(
            lengths,
            prefix,
            suffix,
            pad_id=pad if pad is not None else 0,
            left_pad=public.family.causal,
        )
        return layout, source

    def _load_prior(self, device: torch.device) -> LanguageModelPrior | None:
        if self._prior is None and self.config.prior is not None:
            self._prior = LanguageModelPrior.load(
                self.config.prior, prefix=self.config.prior_prefix, device=device
            )
        return self._prior
