"""Settings of the optimisation engine; the recipes in :mod:`.recipes` only change the defaults.

The base defaults are LAMP_cos's (``lamp_cos.sh`` and ``args_factory.py`` of eth-sri/lamp).
Every field is an attack option, e.g.
``gradleak attack --attack lamp_cos -o steps=500 -o select="blocks=0 roles=q"``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from gradleak.attacks.optimization.distances import distance_names
from gradleak.attacks.optimization.selector import GradientSelection
from gradleak.errors import UnknownSpecError


@dataclass(frozen=True)
class OptimizationConfig:
    """Settings of :class:`gradleak.attacks.optimization.GradientInversion`.

    Attributes:
        distance: gradient distance: "cos" (per tensor, averaged; LAMP_cos, partial), "tag"
            (L2 + tag_alpha * L1), "l2" (DLG), "global_cos".
        tag_alpha: weight of the L1 term of "tag" (LAMP's --tag_factor, 0.01).
        select: which gradients are matched (see :mod:`.selector`); "exposed" matches every tensor
            the update shares.
        steps: optimisation steps (LAMP: 2000; TAG: 2500).
        lr: Adam learning rate (LAMP: 0.01; TAG: 0.1).
        lr_decay: StepLR factor (LAMP: 0.89; TAG: 1, no decay).
        lr_decay_every: StepLR period in steps (LAMP: 50).
        grad_clip: clip the embeddings' gradient norm (LAMP uses 0.5 for BERT-large only).
        init_candidates: random starts scored, the best kept (LAMP: 500; TAG: 1).
        init_permutations: random orderings of the best start scored (LAMP: as many as
            init_candidates; None means that).
        init_size: rescale every start token vector to this norm and pull the mean norm toward
            it; "auto" measures the model's mean token-embedding norm (LAMP's 1.4 is
            BERT-base's); None keeps the N(0, 1) start (TAG).
        coeff_reg: weight of (mean embedding norm - init_size)^2 (LAMP_cos 1; L1+L2 25; TAG 0).
        coeff_perplexity: weight of the prior's NLL when scoring discrete moves (LAMP_cos 0.2;
            L1+L2 60; 0 disables the prior).
        swaps: run LAMP's discrete moves.
        swap_every: steps between discrete moves (LAMP: 75).
        swap_burnin: fraction of the steps before the first discrete move (LAMP: 0.1).
        swap_candidates: reorderings scored per sequence and round (LAMP: 200).
        prior: causal LM of the prior (model spec; "none" disables it). LAMP's own prior, a
            BERT-vocabulary GPT-2 trained on WikiText-103, is not available offline.
        prior_prefix: text put before each scored candidate (e.g. "<|endoftext|>").
        batch_size: sequences to reconstruct when the update does not disclose it (None: read
            from the last block's MLP gradient of a classifier, else 1).
        lengths: tokens per sequence, special tokens included: one number for all, or one per
            sequence (None: read from a linear gradient's rank, split evenly).
        max_label_hypotheses: label assignments tried when the labels are neither disclosed nor
            readable from the head.
        label_probe_steps: optimisation steps that tell label hypotheses apart (at most ``steps``).
        memory_mb: memory for per-candidate gradients in one batched evaluation.
        max_chunk: most candidates per batched evaluation.
        seed: seeds starts and moves (LAMP: 101).
        log_every: steps between recorded distances in the diagnostics.
    """

    recipe: ClassVar[str] = "optimization"

    distance: str = "cos"
    tag_alpha: float = 0.01
    select: str = "exposed"
    steps: int = 2000
    lr: float = 0.01
    lr_decay: float = 0.89
    lr_decay_every: int = 50
    grad_clip: float | None = None
    init_candidates: int = 500
    init_permutations: int | None = None
    init_size: float | str | None = "auto"
    coeff_reg: float = 1.0
    coeff_perplexity: float = 0.2
    swaps: bool = True
    swap_every: int = 75
    swap_burnin: float = 0.1
    swap_candidates: int = 200
    prior: str | None = "smollm2-135m"
    prior_prefix: str | None = None
    batch_size: int | None = None
    lengths: int | tuple[int, ...] | None = None
    max_label_hypotheses: int = 8
    label_probe_steps: int = 100
    memory_mb: float = 512.0
    max_chunk: int = 64
    seed: int = 101
    log_every: int = 100

    def __post_init__(self) -> None:
        _coerce(self)
        problems = []
        if self.distance not in distance_names():
            problems.append(
                f"distance={self.distance!r} is not one of {', '.join(distance_names())}"
            )
        for name in (
            "steps",
            "init_candidates",
            "lr_decay_every",
            "swap_every",
            "swap_candidates",
            "max_label_hypotheses",
            "max_chunk",
            "log_every",
            "label_probe_steps",
        ):
            value = getattr(self, name)
            if value < (0 if name == "steps" else 1):
                problems.append(f"{name}={value} must be positive")
        for name in ("lr", "lr_decay", "memory_mb"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)} must be > 0")
        for name in ("tag_alpha", "coeff_reg", "coeff_perplexity"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.swap_burnin <= 1:
            problems.append(f"swap_burnin={self.swap_burnin} must lie in [0, 1]")
        if isinstance(self.init_size, str) and self.init_size != "auto":
            problems.append(f"init_size={self.init_size!r} must be a number, 'auto' or none")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} must be positive")
        try:
            GradientSelection.parse(self.select)
        except UnknownSpecError as err:
            problems.append(str(err).rstrip("."))
        if problems:
            raise UnknownSpecError(f"{type(self).__name__}: " + "; ".join(problems) + ".")

    @property
    def permutations(self) -> int:
        """Returns the number of start orderings scored."""
        return self.init_candidates if self.init_permutations is None else self.init_permutations

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as plain JSON values, with the recipe's name."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            "recipe": self.recipe,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
        }


def _coerce(config: OptimizationConfig) -> None:
    """Normalises values that arrive as strings from the command line or YAML."""

    def put(name: str, value: Any) -> None:
        object.__setattr__(config, name, value)

    for name in ("prior", "prior_prefix", "init_size", "grad_clip"):
        if isinstance(getattr(config, name), str) and getattr(config, name).lower() in (
            "none",
            "null",
            "",
        ):
            put(name, None)
    if isinstance(config.init_size, str) and config.init_size != "auto":
        try:
            put("init_size", float(config.init_size))
        except ValueError:
            pass
    lengths = config.lengths
    if isinstance(lengths, str):
        lengths = [int(v) for v in lengths.replace(" ", "").split(",") if v]
    if isinstance(lengths, (list, tuple)):
        put("lengths", lengths[0] if len(lengths) == 1 else tuple(int(v) for v in lengths))
    if isinstance(config.select, GradientSelection):
        put("select", str(config.select))
    for name in ("steps", "init_candidates", "swap_candidates", "swap_every", "seed"):
        value = getattr(config, name)
        if isinstance(value, float) and value.is_integer():
            put(name, int(value))
