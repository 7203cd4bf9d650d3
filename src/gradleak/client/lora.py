"""LoRA through PEFT: the client trains low-rank adapters and shares only their tensors.

``apply_lora`` wraps a copy of the public model with PEFT's ``get_peft_model`` (or loads a saved
adapter); the wrapped model is the public model of the round: the server sent the adapter, so it
knows its weights. Tensors are named as in the wrapped model's ``named_parameters()``, e.g.
``base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight``.

PEFT initialises ``lora_B`` to zero, which makes every ``lora_A`` gradient exactly zero on the
first step (ecosystem.md §6.4), so DAGER attacks an adapter that has already trained (dager.md
§3.2). :func:`apply_lora` therefore supports a warm start: ``warmup_steps`` SGD steps on seeded
random tokens (reproducible by the server from the metadata alone), or a saved adapter folder;
:func:`warm_start` trains on any other batches a caller has.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from gradleak.client._optional import require
from gradleak.client.fedsgd import batch_gradient
from gradleak.data.batch import Batch
from gradleak.errors import UnknownSpecError
from gradleak.models.families import ArchitectureFamily, family_for
from gradleak.models.loading import PublicModel

if TYPE_CHECKING:
    from gradleak.client.settings import ClientSettings

#: Roles that get adapters when none are named (the LoRA paper's and PEFT's usual q and v).
DEFAULT_LORA_ROLES: tuple[str, ...] = ("q", "v")
#: Shape of the random-token warm-up batches: (sequences, tokens).
WARMUP_SHAPE = (4, 16)


@dataclass(frozen=True)
class LoraSpec:
    """Everything needed to rebuild a client's starting adapter; recorded in ``extra["lora"]``.

    Attributes:
        rank: adapter rank r (ignored when ``adapter`` is given).
        alpha: scaling numerator (scaling alpha / r); None uses the rank.
        targets: roles that get adapters; None uses the family's ``lora_roles`` or q and v.
        blocks: blocks that get adapters; None: every block.
        seed: seeds PEFT's initialisation of lora_A and the warm-up tokens.
        warmup_steps: SGD steps on seeded random tokens before the round.
        warmup_lr: learning rate of the warm-up.
        adapter: a saved PEFT adapter folder to start from instead.
    """

    rank: int | None = 8
    alpha: float | None = None
    targets: tuple[str, ...] | None = None
    blocks: tuple[int, ...] | None = None
    seed: int = 0
    warmup_steps: int = 0
    warmup_lr: float = 1e-2
    adapter: str | None = None

    def roles(self, family: ArchitectureFamily) -> tuple[str, ...]:
        """Returns the roles that get adapters: ``targets``, else the family's default."""
        return tuple(self.targets or getattr(family, "lora_roles", DEFAULT_LORA_ROLES))

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> LoraSpec:
        """Returns the spec the client settings describe."""
        from gradleak.client.exposure import Exposure

        return cls(
            rank=settings.lora_rank,
            alpha=settings.lora_alpha,
            targets=settings.lora_targets,
            blocks=Exposure.parse(settings.expose).blocks,
            seed=settings.lora_seed,
            warmup_steps=settings.lora_warmup_steps,
            warmup_lr=settings.lora_warmup_lr,
            adapter=settings.lora_adapter,
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns the spec as plain JSON values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraSpec:
        """Returns the spec from :meth:`to_dict` output (extra keys are ignored)."""
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("targets", "blocks"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def lora_modules(
    family: ArchitectureFamily, roles: Sequence[str], blocks: Sequence[int] | None = None
) -> list[str]:
    """Returns the names of the linear modules with these roles, in model order, without repeats.

    GPT-2 fuses q, k and v in ``c_attn``: asking for q or v adapts the whole fused module.
    """
    n = family.num_blocks
    chosen = range(n) if blocks is None else sorted({b % n for b in blocks})
    names: list[str] = []
    for block in chosen:
        for role in roles:
            try:
                name = family.linear_layer(block, role).module_name
            except KeyError:
                raise UnknownSpecError(
                    f"{family.name} has no {role!r} layer in block {block} for LoRA."
                ) from None
            if name not in names:
                names.append(name)
    return names


def is_lora(public: PublicModel) -> bool:
    """Returns whether the public model is already wrapped with PEFT adapters."""
    return hasattr(public.model, "peft_config")


def lora_parameter_names(public: PublicModel) -> list[str]:
    """Returns the adapter parameters' names in the wrapped model, in model order."""
    return [n for n, _ in public.model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def apply_lora(public: PublicModel, spec: LoraSpec) -> PublicModel:
    """Returns a new PublicModel whose model is a PEFT-wrapped copy of ``public``'s, warm-started.

    ``public`` itself is not changed. The same spec gives bit-identical adapters.

    Raises:
        MissingDependencyError: PEFT is not installed.
    """
    peft = require("peft")
    model = copy.deepcopy(public.model)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=FutureWarning
        )  # PEFT's use of transformers 5 deprecations
        if spec.adapter is not None:
            model = peft.PeftModel.from_pretrained(model, spec.adapter, is_trainable=True)
        else:
            config = peft.LoraConfig(
                r=spec.rank,
                lora_alpha=spec.alpha or spec.rank,
                lora_dropout=0.0,
                target_modules=lora_modules(public.family, spec.roles(public.family), spec.blocks),
                fan_in_fan_out=public.family.transposed_weights,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.seed)
                model = peft.get_peft_model(model, config)
    model.eval()
    model.gradleak_lora_spec = spec  # what describe_lora records, whoever calls it later
    wrapped = replace(public, model=model, family=family_for(model))
    if spec.warmup_steps:
        warm_start(
            wrapped,
            random_token_batches(wrapped, steps=spec.warmup_steps, seed=spec.seed),
            lr=spec.warmup_lr,
        )
    return wrapped


def warm_start(
    public: PublicModel, batches: Sequence[Batch], *, lr: float, max_length: int | None = None
) -> int:
    """Trains the adapters in place, one SGD step per batch; returns the number of steps."""
    names = lora_parameter_names(public)
    params = dict(public.model.named_parameters())
    for batch in batches:
        grads = batch_gradient(public, batch, names=names, max_length=max_length)
        with torch.no_grad():
            for name in names:
                params[name].add_(grads[name], alpha=-lr)
    return len(batches)


def random_token_batches(public: PublicModel, *, steps: int, seed: int) -> list[Batch]:
    """Returns ``steps`` batches of texts decoded from seeded random token ids (public warm-up
    data)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = len(public.tokenizer)
    n, length = WARMUP_SHAPE
    batches = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (n, length), generator=generator)
        labels = torch.randint(0, public.num_labels, (n,), generator=generator).tolist()
        texts = public.tokenizer.batch_decode(ids, skip_special_tokens=True)
        batches.append(
            Batch(texts=tuple(t or "." for t in texts), labels=tuple(labels), source="lora-warmup")
        )
    return batches


def describe_lora(public: PublicModel, spec: LoraSpec | None = None) -> dict[str, Any]:
    """Returns the metadata entry ``extra["lora"]``: the spec plus what PEFT actually built.

    The spec :func:`apply_lora` used wins over ``spec``; a model wrapped elsewhere needs ``spec``.
    """
    peft = require("peft")
    spec = getattr(public.model, "gradleak_lora_spec", None) or spec or LoraSpec(rank=None)
    config = public.model.peft_config["default"]
    modules = config.target_modules
    return {
        **spec.to_dict(),
        "targets": list(spec.roles(public.family)) if spec.adapter is None else None,
        "rank": int(config.r),
        "alpha": float(config.lora_alpha),
        "modules": sorted(modules) if isinstance(modules, (set, list, tuple)) else modules,
        "peft_version": peft.__version__,
    }
