"""One entry point that turns a model specification into the public model the server sends out.

Everything the server knows about the model lives in :class:`PublicModel`: the weights (task head
included, initialised from a seed so client and attacker agree), the tokenizer and the family.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from gradleak.errors import UnknownSpecError, UnsupportedFamilyError
from gradleak.models.bundled import BUNDLED
from gradleak.models.families import ArchitectureFamily, family_class_for, family_for
from gradleak.models.gguf import cached_gguf_dir
from gradleak.models.random_init import default_tokenizer_source, random_config
from gradleak.models.spec import ModelSpec, parse_model_spec

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("seq_class", "next_token", "seq2seq")
#: DAGER initialises decoder classification heads N(0, 1e-3^2); encoders keep their config's range.
DECODER_HEAD_STD = 1e-3


@dataclass
class PublicModel:
    """The model as the server sees it: weights, tokenizer, family and how it was built.

    Attributes:
        spec: the specification string the model was loaded from.
        model: the task model (sequence classifier or causal LM), in eval mode.
        tokenizer: its tokenizer (None for a random model built without one).
        family: the architecture family bound to ``model``.
        task: "seq_class", "next_token" or "seq2seq".
        num_labels: classes of the sequence-classification head.
        seed: the seed that initialised random weights and the head.
        head_init_std: standard deviation of the head initialisation (None: the model's own).
        revision: the hub commit, when loaded from the hub.
    """

    spec: str
    model: PreTrainedModel
    tokenizer: Any
    family: ArchitectureFamily
    task: str
    num_labels: int
    seed: int
    head_init_std: float | None
    revision: str | None = None

    def describe(self) -> dict[str, Any]:
        """Returns the facts an attacker needs to rebuild this model, as plain JSON values."""
        return {
            "model": self.spec,
            "revision": self.revision,
            "family": self.family.name,
            "task": self.task,
            "num_labels": self.num_labels,
            "seed": self.seed,
            "head_init_std": self.head_init_std,
            "dtype": str(self.model.dtype).removeprefix("torch."),
        }


def load_model(
    spec: str,
    *,
    task: str = "seq_class",
    num_labels: int = 2,
    seed: int = 0,
    head_init_std: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> PublicModel:
    """Returns the public model for a specification (see :mod:`gradleak.models.spec`).

    Args:
        spec: bundled alias, ``random:ARCH[?k=v&...]``, ``.gguf`` file, local directory or hub id.
        task: "seq_class" (classification head), "next_token" (language-model head) or
            "seq2seq" (an encoder-decoder's language-model head, trained on (source, target)
            pairs; see :mod:`gradleak.models.task_loss`).
        num_labels: classes of the classification head.
        seed: seeds random weights and the head, so the same arguments give the same model.
        head_init_std: head initialisation std; None picks 1e-3 for decoders (as DAGER does) and
            the model's own initialiser range for encoders.
        dtype: parameter dtype (float64 helps exact attacks on multi-step updates).

    Raises:
        UnknownSpecError: nothing answers to ``spec``, or ``task`` is unknown.
        UnsupportedFamilyError: the architecture has no gradleak family, or cannot do ``task``.
        MissingDependencyError: a bundled model's package or a GGUF dependency is missing.
    """
    if task not in TASKS:
        raise UnknownSpecError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    parsed = parse_model_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if parsed.kind == "random":
            model, tokenizer = _build_random(parsed, task=task, num_labels=num_labels)
        else:
            model, tokenizer = _load_pretrained(
                parsed, task=task, num_labels=num_labels, dtype=dtype
            )
    model = model.to(dtype).eval()
    family = family_for(model)
    std = _init_head(model, family, seed=seed, std=head_init_std) if task == "seq_class" else None
    _set_padding(model, tokenizer)
    revision = parsed.revision or getattr(model.config, "_commit_hash", None)
    return PublicModel(
        spec=parsed.text,
        model=model,
        tokenizer=tokenizer,
        family=family,
        task=task,
        num_labels=num_labels,
        seed=seed,
        head_init_std=std,
        revision=revision if parsed.kind == "hub" else None,
    )


def load_model_for(metadata: Any, *, spec: str | None = None) -> PublicModel:
    """Returns the public model an update's metadata names (``spec`` overrides its model)."""
    dtype = getattr(torch, str(getattr(metadata, "dtype", "float32")), torch.float32)
    return load_model(
        spec or metadata.model,
        task=metadata.task,
        num_labels=metadata.num_labels,
        seed=metadata.seed,
        head_init_std=metadata.head_init_std,
        dtype=dtype,
    )


def load_tokenizer(source: str) -> Any:
    """Returns a tokenizer from a bundled alias, a local directory, a ``.gguf`` file or a hub id."""
    parsed = parse_model_spec(source)
    location = _local_dir(parsed, need_config=False) if parsed.kind != "hub" else parsed.target
    try:
        return AutoTokenizer.from_pretrained(location, revision=parsed.revision)
    except OSError as err:
        raise UnknownSpecError(f"could not load a tokenizer from {source!r}: {err}") from None


def _local_dir(parsed: ModelSpec, *, need_config: bool = True) -> Path | str:
    if parsed.kind == "bundled":
        path = BUNDLED[parsed.target].path()
        return cached_gguf_dir(path) if path.suffix == ".gguf" else path
    if parsed.kind == "gguf":
        path = Path(parsed.target).expanduser()
        if not path.is_file():
            raise UnknownSpecError(f"the GGUF file {parsed.target} does not exist; check the path.")
        return cached_gguf_dir(path)
    if parsed.kind == "directory":
        if need_config and not (Path(parsed.target) / "config.json").exists():
            raise UnknownSpecError(
                f"{parsed.target} is a folder without config.json; point at a saved transformers "
                "model."
            )
        return Path(parsed.target)
    return parsed.target


def _task_class(model_type: str, task: str):
    family = family_class_for(model_type)
    if task == "seq2seq":
        if not family.encoder_decoder:
            raise UnsupportedFamilyError(
                f"{family.name} models have no decoder beside an encoder and cannot do "
                "sequence-to-sequence training; use an encoder-decoder (bart, t5) or --task "
                "next_token / seq_class."
            )
        return AutoModelForSeq2SeqLM
    if task == "next_token":
        if not family.causal:
            raise UnsupportedFamilyError(
                f"{family.name} models are encoders and cannot do next-token prediction; use "
                "--task seq_class" + (" or seq2seq." if family.encoder_decoder else ".")
            )
        return AutoModelForCausalLM
    return AutoModelForSequenceClassification


def _load_pretrained(parsed: ModelSpec, *, task: str, num_labels: int, dtype: torch.dtype):
    location = _local_dir(parsed)
    try:
        config = AutoConfig.from_pretrained(location, revision=parsed.revision)
    except OSError:
        aliases = ", ".join(BUNDLED)
        raise UnknownSpecError(
            f"could not find model {parsed.text!r}: it is not a bundled alias ({aliases}), "
            "random:ARCH, a .gguf file or a local model folder, and the Hugging Face hub did not "
            "provide it (offline, or a wrong id)."
        ) from None
    cls = _task_class(config.model_type, task)
    extra = {"num_labels": num_labels} if task == "seq_class" else {}
    model = cls.from_pretrained(location, revision=parsed.revision, dtype=dtype, **extra)
    return model, AutoTokenizer.from_pretrained(location, revision=parsed.revision)


def _build_random(parsed: ModelSpec, *, task: str, num_labels: int):
    source = parsed.options.get("tokenizer") or default_tokenizer_source(parsed.target)
    tokenizer = load_tokenizer(source)
    vocab = None if "vocab_size" in parsed.options else len(tokenizer)
    config = random_config(
        parsed.target,
        parsed.options,
        vocab_size=vocab,
        pad_token_id=_pad_id(tokenizer),
        eos_token_id=_end_id(tokenizer),
    )
    if task == "seq_class":
        config.num_labels = num_labels
    torch.manual_seed(int(parsed.options.get("seed", 0)))
    return _task_class(config.model_type, task).from_config(config), tokenizer


def _pad_id(tokenizer: Any) -> int | None:
    """Returns the id the client will pad with (GPT-2 clients pad with EOS)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return None if pad is None else int(pad)


def _end_id(tokenizer: Any) -> int | None:
    """Returns the id that ends each tokenised text ([SEP] for WordPiece, else EOS)."""
    end = getattr(tokenizer, "sep_token_id", None)
    return int(end) if end is not None else tokenizer.eos_token_id


def _init_head(
    model: PreTrainedModel, family: ArchitectureFamily, *, seed: int, std: float | None
) -> float:
    head = family.classification_head()
    if head is None:
        raise UnsupportedFamilyError(
            f"{type(model).__name__} has no classification head to initialise."
        )
    if std is None:
        std = (
            DECODER_HEAD_STD
            if family.causal
            else float(getattr(model.config, "initializer_range", 0.02))
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, torch.nn.Linear):
                weight = (
                    torch.randn(module.weight.shape, generator=generator, dtype=torch.float64) * std
                )
                module.weight.copy_(weight.to(module.weight.dtype))
                if module.bias is not None:
                    module.bias.zero_()
    return std


def _set_padding(model: PreTrainedModel, tokenizer: Any) -> None:
    if tokenizer is None:
        return
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 clients pad with EOS
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
