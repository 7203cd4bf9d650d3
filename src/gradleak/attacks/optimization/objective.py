"""The gradient-matching objective: the loss gradient at dummy inputs against the observed one.

Two paths share one definition of the loss:

- :meth:`GradientObjective.__call__` for the optimisation step: one dummy batch, the gradient of
  the selected parameters only (``torch.autograd.grad(..., create_graph=True)``), and the
  distance, differentiable with respect to the dummy embeddings;
- :meth:`GradientObjective.batch` for scoring many candidates at once (random starts,
  permutations, LAMP's discrete moves): per-candidate gradients with ``torch.func.vmap`` over
  ``torch.func.grad``, in chunks sized so the per-candidate gradients fit a memory budget.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.func import functional_call, grad, vmap

from gradleak.attacks.optimization.decoding import NearestTokens
from gradleak.attacks.optimization.distances import GradientDistance
from gradleak.attacks.optimization.layout import DummyInputs
from gradleak.attacks.optimization.selector import TensorView
from gradleak.models.grad_scope import only_grad_for

logger = logging.getLogger(__name__)


@contextmanager
def attack_mode(model: torch.nn.Module, selected: Sequence[str]) -> Iterator[None]:
    """Puts ``model`` in the state the objective needs, and restores it afterwards.

    Eval mode; eager attention (PyTorch's fused CPU attention has no double backward); only the
    selected parameters require gradients, so autograd builds nothing for the others.
    """
    was_training = model.training
    attention = getattr(model.config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)  # transformers models only
    set_attention = setter if attention not in (None, "eager") and callable(setter) else None
    try:
        model.eval()
        if set_attention is not None:
            set_attention("eager")
        with only_grad_for(model, selected):
            yield
    finally:
        if set_attention is not None:
            set_attention(attention)
        model.train(was_training)


class GradientObjective:
    """Distance between the selected gradients of dummy inputs and the observed ones.

    Args:
        model: the public task model, in :func:`attack_mode`.
        views: the matched tensors.
        targets: the observed tensor of each view.
        distance: the gradient distance.
        inputs: places free embeddings into full model inputs.
        task: "seq_class" (labels are class ids) or "next_token" (labels are the tokens).
        decoder: nearest-token decoding, for next-token targets.
        memory_mb: budget for the per-candidate gradients of one batched chunk.
        max_chunk: most candidates per batched chunk.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        views: Sequence[TensorView],
        targets: Sequence[torch.Tensor],
        distance: GradientDistance,
        inputs: DummyInputs,
        *,
        task: str,
        decoder: NearestTokens | None = None,
        memory_mb: float = 512.0,
        max_chunk: int = 64,
    ) -> None:
        params = dict(model.named_parameters())
        self.model, self.views, self.distance, self.inputs = model, list(views), distance, inputs
        self.names = list(dict.fromkeys(v.name for v in self.views))
        self.params = [params[n] for n in self.names]
        self.slot = [self.names.index(v.name) for v in self.views]
        self.targets = [t.to(self.params[0].device, self.params[0].dtype) for t in targets]
        self.task, self.decoder = task, decoder
        per_candidate = sum(p.numel() for p in self.params) * self.params[0].element_size() * 3
        self.chunk = int(max(1, min(max_chunk, memory_mb * 2**20 // max(per_candidate, 1))))
        self._vmap_ok = True
        self.evaluations = 0

    @property
    def matched_elements(self) -> int:
        """Returns the number of gradient entries matched."""
        return sum(
            v.take(p).numel()
            for v, p in zip(self.views, (self.params[i] for i in self.slot), strict=True)
        )

    def labels(self, free: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Returns the model's ``labels`` for free embeddings (..., B, F, d).

        Classification takes the class ids; next-token prediction the nearest tokens
        themselves, masked at padding (targets are recomputed as the dummy moves).
        """
        if self.task != "next_token":
            return classes.expand(*free.shape[:-3], *classes.shape)
        if self.decoder is None:
            raise ValueError("next-token targets are the nearest tokens: pass a decoder")
        ids = self.inputs.full_ids(self.decoder(free))
        return ids.masked_fill(~self.inputs.targets, -100)

    def __call__(self, free: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Returns the distance for one dummy batch (B, F, d), differentiable in ``free``."""
        out = self.model(
            inputs_embeds=self.inputs.assemble(free),
            labels=self.labels(free, classes),
            **self.inputs.model_kwargs(),
        )
        grads = torch.autograd.grad(out.loss, self.params, create_graph=True)
        self.evaluations += 1
        return self.distance(
            [v.take(grads[i])[None] for v, i in zip(self.views, self.slot, strict=True)],
            self.targets,
        )[0]

    @torch.no_grad()
    def batch(self, free: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Returns the (K,) distances of K candidate dummy batches (K, B, F, d)."""
        labels = self.labels(free, classes)
        out: list[torch.Tensor] = []
        for start in range(0, free.shape[0], self.chunk):
            part, part_labels = free[start : start + self.chunk], labels[start : start + self.chunk]
            grads = (
                self._batched_grads(part, part_labels) if self.chunk > 1 and self._vmap_ok else None
            )
            if grads is None:  # one candidate at a time, each scored as soon as it is computed
                out.extend(
                    self._one(one, one_labels)
                    for one, one_labels in zip(part, part_labels, strict=True)
                )
            else:
                out.append(
                    self.distance(
                        [v.take(grads[i]) for v, i in zip(self.views, self.slot, strict=True)],
                        self.targets,
                    )
                )
            self.evaluations += part.shape[0]
        return torch.cat(out)

    def _loss(
        self, selected: dict[str, torch.Tensor], free: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        kwargs = {
            "inputs_embeds": self.inputs.assemble(free),
            "labels": labels,
            **self.inputs.model_kwargs(),
        }
        return functional_call(self.model, selected, args=(), kwargs=kwargs).loss

    def _batched_grads(self, free: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor] | None:
        selected = {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}
        try:
            grads = vmap(grad(self._loss), in_dims=(None, 0, 0))(selected, free, labels)
        except (RuntimeError, NotImplementedError) as err:  # an op without a batching rule
            logger.warning("batched candidate scoring unavailable (%s); scoring one by one", err)
            self._vmap_ok = False
            return None
        return [grads[n] for n in self.names]

    def _one(self, free: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Returns the (1,) distance of one candidate (B, F, d), without stacking its gradient
        with others' (on a 100 M-parameter model each gradient is as large as the model)."""
        with torch.enable_grad():
            out = self.model(
                inputs_embeds=self.inputs.assemble(free),
                labels=labels,
                **self.inputs.model_kwargs(),
            )
            grads = torch.autograd.grad(out.loss, self.params)
        return self.distance(
            [v.take(grads[i])[None] for v, i in zip(self.views, self.slot, strict=True)],
            self.targets,
        )
