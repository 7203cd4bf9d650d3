"""Which family handles which ``config.model_type``: one dict of the built-ins, plus plug-ins."""

from __future__ import annotations

from torch import nn

from gradleak.errors import UnsupportedFamilyError
from gradleak.models.families.albert import AlbertFamily
from gradleak.models.families.bart import BartFamily
from gradleak.models.families.base import ArchitectureFamily
from gradleak.models.families.bert import BertFamily
from gradleak.models.families.decoders import FalconFamily, GPTNeoXFamily, OPTFamily
from gradleak.models.families.encoders import DistilBertFamily, ElectraFamily, RobertaFamily
from gradleak.models.families.gpt2 import GPT2Family
from gradleak.models.families.llama import LlamaFamily
from gradleak.models.families.relative import DebertaV2Family, T5Family

_FAMILIES: dict[str, type[ArchitectureFamily]] = {
    "gpt2": GPT2Family,
    "llama": LlamaFamily,
    "gpt_neox": GPTNeoXFamily,
    "opt": OPTFamily,
    "falcon": FalconFamily,
    "bert": BertFamily,
    "roberta": RobertaFamily,
    "distilbert": DistilBertFamily,
    "electra": ElectraFamily,
    "deberta-v2": DebertaV2Family,
    "t5": T5Family,
    "albert": AlbertFamily,
    "bart": BartFamily,
}

#: Architectures known and not yet supported: what is missing, said before any work.
_MISSING: dict[str, str] = {}


def register_family(cls: type[ArchitectureFamily], *, force: bool = False) -> None:
    """Adds a family for its ``model_types``; refuses to replace an existing one unless
    ``force``."""
    if cls.name in _FAMILIES and not force:
        raise ValueError(
            f"a family named {cls.name!r} is already registered; pass force=True to replace it"
        )
    _FAMILIES[cls.name] = cls


def families() -> dict[str, type[ArchitectureFamily]]:
    """Returns the registered families by name."""
    return dict(_FAMILIES)


def family_class_for(model_type: str) -> type[ArchitectureFamily]:
    """Returns the family class that handles ``model_type``.

    Raises:
        UnsupportedFamilyError: no registered family handles it.
    """
    for cls in _FAMILIES.values():
        if model_type in cls.model_types:
            return cls
    supported = ", ".join(f"{name} ({', '.join(c.model_types)})" for name, c in _FAMILIES.items())
    if model_type in _MISSING:
        raise UnsupportedFamilyError(
            f"gradleak has no architecture family for model_type {model_type!r}: "
            f"{_MISSING[model_type]}; supported: {supported}."
        )
    raise UnsupportedFamilyError(
        f"gradleak has no architecture family for model_type {model_type!r}; supported: "
        f"{supported}."
    )


def family_for(model: nn.Module) -> ArchitectureFamily:
    """Returns the family bound to ``model``, chosen from its ``config.model_type``."""
    config = getattr(model, "config", None)
    get_base_model = getattr(model, "get_base_model", None)  # a PEFT wrapper
    if config is None and callable(get_base_model):
        config = get_base_model().config
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedFamilyError(
            f"{type(model).__name__} has no config.model_type; pass a Hugging Face transformers "
            "model."
        )
    return family_class_for(model_type)(model)
