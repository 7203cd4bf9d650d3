"""Loading models and knowing where their linear layers are."""

from gradleak.models.bundled import BUNDLED, BundledModel
from gradleak.models.families import ArchitectureFamily, LinearLayer, family_for
from gradleak.models.loading import TASKS, PublicModel, load_model, load_model_for, load_tokenizer
from gradleak.models.probe import LinearInputProbe, PrefixState
from gradleak.models.spec import ModelSpec, parse_model_spec

__all__ = [
    "BUNDLED",
    "TASKS",
    "ArchitectureFamily",
    "BundledModel",
    "LinearInputProbe",
    "LinearLayer",
    "ModelSpec",
    "PrefixState",
    "PublicModel",
    "family_for",
    "load_model",
    "load_model_for",
    "load_tokenizer",
    "parse_model_spec",
]
