"""Architecture families: where each model keeps its linear layers, found by role."""

from gradleak.models.families.base import (
    LINEAR_ROLES,
    ROLES,
    ArchitectureFamily,
    LinearLayer,
    ModuleSlot,
)
from gradleak.models.families.bert import BertFamily
from gradleak.models.families.gpt2 import GPT2Family
from gradleak.models.families.llama import LlamaFamily
from gradleak.models.families.registry import (
    families,
    family_class_for,
    family_for,
    register_family,
)

__all__ = [
    "LINEAR_ROLES",
    "ROLES",
    "ArchitectureFamily",
    "BertFamily",
    "GPT2Family",
    "LinearLayer",
    "LlamaFamily",
    "ModuleSlot",
    "families",
    "family_class_for",
    "family_for",
    "register_family",
]
