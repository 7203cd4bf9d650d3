"""The papers' recipes: one frozen config per method, defaulting to its published settings.

Every recipe runs on the same engine (:class:`GradientInversion`); they differ only in these
defaults, and every default can be overridden (``-o steps=500``).

Deviations shared by all recipes, each on purpose:

- Labels come from the update's metadata when the client disclosed them (the papers' setting);
  otherwise from the head's gradient or a few scored hypotheses (the papers never infer them).
- The model sees an attention mask; the reference code fed padded batches without one.
- The best iterate is the one whose loss was measured; LAMP's code stores the iterate *after*
  the measured step.
- The embedding-norm regulariser averages free positions only (LAMP includes [CLS]/[SEP]/[PAD]).
- Special tokens never decode into free positions (LAMP excludes [unused] ids but not [CLS],
  [SEP], [UNK], [MASK]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gradleak.attacks.optimization.config import OptimizationConfig


@dataclass(frozen=True)
class TagConfig(OptimizationConfig):
    """TAG: Deng et al., "TAG: Gradient Attack on Transformer-based Language Models", Findings of
    EMNLP 2021 (arXiv 2103.06819).

    Threat model: honest-but-curious server with the weights; matches every exposed gradient
    with L2 + alpha * L1; labels known (the paper optimises them jointly, see below).

    No official code exists; the settings are LAMP's re-implementation (``tag.sh`` with
    ``--baseline``): lr 0.1, no decay, tag_factor 0.01, 2500 steps, one N(0, 1) start, no
    rescaling, no regulariser, no discrete moves, no prior.

    Deviation: TAG optimises soft labels jointly with the inputs; here labels are disclosed or
    inferred from the head before the optimisation (as in LAMP's TAG baseline).
    """

    recipe: ClassVar[str] = "tag"

    distance: str = "tag"
    tag_alpha: float = 0.01
    steps: int = 2500
    lr: float = 0.1
    lr_decay: float = 1.0
    init_candidates: int = 1
    init_permutations: int | None = 0
    init_size: float | str | None = None
    coeff_reg: float = 0.0
    coeff_perplexity: float = 0.0
    swaps: bool = False
    prior: str | None = None


@dataclass(frozen=True)
class LampCosConfig(OptimizationConfig):
    """LAMP_cos: Balunovic, Dimitrov, Jovanovic, Vechev, "LAMP: Extracting Text from Gradients with
    Language Model Priors", NeurIPS 2022 (arXiv 2202.08827), code eth-sri/lamp.

    Threat model: honest-but-curious server with the weights; matches every exposed gradient by
    per-tensor cosine; labels and sequence lengths known.

    Settings of ``lamp_cos.sh``: coeff_perplexity 0.2, coeff_reg 1, lr 0.01, StepLR(50, 0.89),
    2000 steps, best of 500 starts and 500 orderings, moves every 75 steps after 10 %.

    Deviations: the prior is SmolLM2-135M on decoded text (LAMP's BERT-vocabulary GPT-2 trained
    on WikiText-103 is not available offline); init_size "auto" is the model's mean
    token-embedding norm (LAMP's 1.4 is BERT-base's).
    """

    recipe: ClassVar[str] = "lamp_cos"


@dataclass(frozen=True)
class LampL1L2Config(OptimizationConfig):
    """LAMP_L1+L2: the LAMP paper's second variant (NeurIPS 2022, arXiv 2202.08827).

    Settings of ``lamp_l1l2.sh``: distance L2 + 0.01 * L1, coeff_perplexity 60, coeff_reg 25,
    lr 0.01, StepLR(50, 0.89), 2000 steps. Deviations as for :class:`LampCosConfig`.
    """

    recipe: ClassVar[str] = "lamp_l1l2"

    distance: str = "tag"
    tag_alpha: float = 0.01
    coeff_perplexity: float = 60.0
    coeff_reg: float = 25.0


@dataclass(frozen=True)
class PartialConfig(OptimizationConfig):
    """Partial gradients: Li, Xu, Dras, "Seeing the Forest through the Trees: Data Leakage from
    Partial Transformer Gradients", EMNLP 2024 (arXiv 2406.00999), code
    weijun-l/partial-gradients-leakage.

    Threat model: the observer sees the gradients of some modules only (one layer, one linear
    component) and the full weights; labels and lengths known. The algorithm is LAMP_cos with a
    parameter selector, so the defaults are ``partial_attack.sh``'s, which equal LAMP_cos's.

    ``select`` picks the view: "exposed" matches what the update shares; ``blocks=3`` is the
    paper's ``layer_encoder``; ``blocks=0 roles=q biases=no`` its ``attn_query``;
    ``paper=ffn_output blocks=0`` reproduces the original substring matching, quirk included.
    Deviations as for :class:`LampCosConfig`; the original handles BERT only, this engine every
    family (GPT-2's fused q|k|v is sliced per role).
    """

    recipe: ClassVar[str] = "partial"


RECIPES: dict[str, type[OptimizationConfig]] = {
    "tag": TagConfig,
    "lamp_cos": LampCosConfig,
    "lamp_l1l2": LampL1L2Config,
    "partial": PartialConfig,
}
