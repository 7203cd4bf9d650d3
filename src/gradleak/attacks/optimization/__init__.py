"""Optimisation attacks on one engine: TAG, LAMP and the partial-gradient attack.

Dummy input embeddings are optimised until their gradient matches the observed one; the
recipes (:mod:`.recipes`) set the papers' defaults. Results are best-effort, never certified.
"""

from gradleak.attacks.optimization.attack import AttackPlan, GradientInversion
from gradleak.attacks.optimization.config import OptimizationConfig
from gradleak.attacks.optimization.distances import (
    L2,
    CosinePerTensor,
    GlobalCosine,
    GradientDistance,
    TagDistance,
    distance_names,
    make_distance,
)
from gradleak.attacks.optimization.labels import LabelGuess, infer_labels
from gradleak.attacks.optimization.prior import LanguageModelPrior
from gradleak.attacks.optimization.recipes import (
    RECIPES,
    LampCosConfig,
    LampL1L2Config,
    PartialConfig,
    TagConfig,
)
from gradleak.attacks.optimization.selector import PAPER_GRAD_TYPES, GradientSelection, TensorView

__all__ = [
    "L2",
    "PAPER_GRAD_TYPES",
    "RECIPES",
    "AttackPlan",
    "CosinePerTensor",
    "GlobalCosine",
    "GradientDistance",
    "GradientInversion",
    "GradientSelection",
    "LabelGuess",
    "LampCosConfig",
    "LampL1L2Config",
    "LanguageModelPrior",
    "OptimizationConfig",
    "PartialConfig",
    "TagConfig",
    "TagDistance",
    "TensorView",
    "distance_names",
    "infer_labels",
    "make_distance",
]
