"""The engine: random starts, then Adam on the dummy embeddings with LAMP's discrete moves.

One loop serves every recipe; what differs is data in the config (distance, selection,
learning rate, regulariser, moves, prior).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from gradleak.attacks.optimization.config import OptimizationConfig
from gradleak.attacks.optimization.decoding import NearestTokens
from gradleak.attacks.optimization.moves import reorder_step
from gradleak.attacks.optimization.objective import GradientObjective
from gradleak.attacks.optimization.prior import LanguageModelPrior

logger = logging.getLogger(__name__)


@dataclass
class Start:
    """The chosen starting point: free embeddings, labels and their distance."""

    free: torch.Tensor
    classes: torch.Tensor
    distance: float
    hypothesis: int = 0


@dataclass
class Trajectory:
    """What the optimisation ended with.

    Attributes:
        free: the best iterate's free embeddings (B, F, d).
        loss: its total loss (distance plus regulariser).
        history: (step, distance) every ``log_every`` steps.
        moves: how often each discrete move won.
        seconds: time in the continuous steps and in the discrete moves.
    """

    free: torch.Tensor
    loss: float
    history: list[tuple[int, float]] = field(default_factory=list)
    moves: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def free_mask(objective: GradientObjective) -> torch.Tensor:
    """Returns the (B, F) mask of real free positions (rows shorter than F leave slots unused)."""
    lengths = torch.tensor(objective.inputs.layout.free_lengths)
    width = objective.inputs.free_shape[1]
    return (torch.arange(width)[None, :] < lengths[:, None]).to(objective.inputs.template.device)


def choose_start(
    objective: GradientObjective,
    hypotheses: Sequence[torch.Tensor],
    config: OptimizationConfig,
    *,
    init_size: float | None,
    norm_target: float,
    generator: torch.Generator,
) -> tuple[Start, list[float]]:
    """Returns the start of the best label hypothesis, and each hypothesis's probe loss.

    One hypothesis needs no probe. Several are told apart by a short optimisation from each
    one's start: a binary head without bias flips the sign of every gradient with the label, so
    which sign is right depends on the input, and only fitting an input tells.
    """
    starts = []
    for index, classes in enumerate(hypotheses):
        start = random_start(
            objective,
            [classes],
            candidates=config.init_candidates,
            permutations=config.permutations,
            init_size=init_size,
            generator=generator,
        )
        start.hypothesis = index
        starts.append(start)
    if len(starts) == 1:
        return starts[0], []
    steps = max(1, min(config.label_probe_steps, config.steps))  # never longer than the run itself
    probe = replace(config, steps=steps, swaps=False, log_every=steps)
    losses = [
        optimise(
            objective,
            start,
            probe,
            norm_target=norm_target,
            decoder=None,
            decode_text=str,
            prior=None,
            rng=random.Random(0),
        ).loss
        for start in starts
    ]
    return starts[min(range(len(starts)), key=losses.__getitem__)], losses


def random_start(
    objective: GradientObjective,
    hypotheses: Sequence[torch.Tensor],
    *,
    candidates: int,
    permutations: int,
    init_size: float | None,
    generator: torch.Generator,
) -> Start:
    """Returns the best of ``candidates`` N(0, 1) starts (for each label hypothesis), then of
    ``permutations`` reorderings of it, rescaled to ``init_size`` per token (LAMP ``init.py``)."""
    device = objective.inputs.template.device
    shape = objective.inputs.free_shape
    draws = torch.randn((candidates, *shape), generator=generator).to(
        device, objective.targets[0].dtype
    )
    best: Start | None = None
    for h, classes in enumerate(hypotheses):
        scores = objective.batch(draws, classes)
        index = int(torch.argmin(scores))
        if best is None or float(scores[index]) < best.distance:
            best = Start(draws[index], classes, float(scores[index]), h)
    assert best is not None
    if permutations > 0:
        orders = torch.stack([_random_orders(objective, generator) for _ in range(permutations)])
        rows = torch.arange(shape[0])[None, :, None]
        shuffled = best.free[rows, orders]
        scores = objective.batch(shuffled, best.classes)
        index = int(torch.argmin(scores))
        if float(scores[index]) < best.distance:
            best.free, best.distance = shuffled[index], float(scores[index])
    if init_size is not None:
        best.free = best.free / best.free.norm(dim=-1, keepdim=True).clamp_min(1e-12) * init_size
    return best


def _random_orders(objective: GradientObjective, generator: torch.Generator) -> torch.Tensor:
    width = objective.inputs.free_shape[1]
    rows = []
    for n in objective.inputs.layout.free_lengths:
        rows.append(torch.cat([torch.randperm(n, generator=generator), torch.arange(n, width)]))
    return torch.stack(rows).to(objective.inputs.template.device)


def optimise(
    objective: GradientObjective,
    start: Start,
    config: OptimizationConfig,
    *,
    norm_target: float,
    decoder: NearestTokens | None,
    decode_text: Callable[[Sequence[int]], str],
    prior: LanguageModelPrior | None,
    rng: random.Random,
) -> Trajectory:
    """Returns the best iterate of Adam on the free embeddings from ``start``."""
    free = start.free.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([free], lr=config.lr)
    schedule = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.lr_decay_every, gamma=config.lr_decay
    )
    mask = free_mask(objective).to(free.dtype)
    best = Trajectory(free.detach().clone(), math.inf)
    moves: Counter[str] = Counter()
    continuous = discrete = 0.0
    for step in range(config.steps):
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        distance = objective(free, start.classes)
        total = distance
        if config.coeff_reg > 0:
            mean_norm = (free.norm(dim=-1) * mask).sum() / mask.sum()
            total = total + config.coeff_reg * (mean_norm - norm_target).square()
        total.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([free], config.grad_clip)
        value = float(total.detach())
        if value <= best.loss:  # LAMP keeps the post-step iterate here; we keep the measured one
            best.free, best.loss = free.detach().clone(), value
        if step % config.log_every == 0 or step == config.steps - 1:
            best.history.append((step, float(distance.detach())))
        optimizer.step()
        schedule.step()
        continuous += time.perf_counter() - began
        if (
            config.swaps
            and step >= config.swap_burnin * config.steps
            and step % config.swap_every == 1
        ):
            if decoder is None:
                raise ValueError("swap moves decode the dummy tokens: pass a decoder")
            began = time.perf_counter()
            moves.update(
                reorder_step(
                    objective,
                    free,
                    start.classes,
                    decoder=decoder,
                    decode_text=decode_text,
                    prior=prior,
                    coeff=config.coeff_perplexity,
                    count=config.swap_candidates,
                    rng=rng,
                )
            )
            discrete += time.perf_counter() - began
    if config.steps == 0:
        best.loss = start.distance
    best.moves = dict(moves)
    best.seconds = {"continuous": continuous, "discrete": discrete}
    return best
