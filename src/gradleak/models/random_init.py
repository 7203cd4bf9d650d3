"""Randomly initialised models of a named architecture, with a real tokenizer.

No GPT-2 weights can be had offline, so GPT-2 code paths run on a random-init ``GPT2Config``
model paired with the real GPT-2 tokenizer (shipped in ``assets/gpt2-tokenizer``). The same seed
always gives the same weights, so a client and an attacker that share the spec share the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from gradleak.errors import UnknownSpecError
from gradleak.models.bundled import BUNDLED

ASSETS = Path(__file__).parent / "assets"

#: Config defaults per architecture, where the library default is not a sensible size.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    # SmolLM2-135M's shape: the library's LlamaConfig default is a 7B model.
    "llama": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
    },
    "bert": {},
    # DeBERTa-v3-small's shape and relative attention: the library default adds absolute
    # positions to the input rows (DeBERTa v1's layout), which no v2/v3 checkpoint does.
    "deberta-v2": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "relative_attention": True,
        "position_biased_input": False,
        "pos_att_type": ["p2c", "c2p"],
        "max_relative_positions": -1,
        "position_buckets": 256,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "type_vocab_size": 0,
    },
}
_RESERVED = ("seed", "tokenizer")


#: Tokenizers that belong with an architecture's default shape (SmolLM2's for random:llama);
#: MiniLM's [CLS] ... [SEP] play an encoder-decoder's <s> ... </s>.
_TOKENIZERS: dict[str, str] = {"llama": "smollm2-135m", "t5": "minilm", "bart": "minilm"}


def default_tokenizer_source(arch: str) -> str:
    """Returns where the tokenizer of ``random:ARCH`` comes from when none is named: MiniLM's
    WordPiece for encoders, the GPT-2 byte-level BPE for decoders."""
    if arch in _TOKENIZERS:
        return _TOKENIZERS[arch]
    try:
        encoder_decoder = bool(AutoConfig.for_model(arch).is_encoder_decoder)
    except ValueError:
        encoder_decoder = True  # no such architecture: random_config says so
    if encoder_decoder:
        raise UnknownSpecError(
            f"random:{arch} has no default tokenizer; add tokenizer=PATH, e.g. "
            f"random:{arch}?tokenizer=./tok"
        )
    if arch in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "minilm"
    return str(ASSETS / "gpt2-tokenizer")


def random_config(
    arch: str,
    options: dict[str, str],
    *,
    vocab_size: int | None,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> PretrainedConfig:
    """Returns the config of ``random:ARCH``: defaults, then the user's overrides.

    The config is built from the values, so fields derived from others (Falcon's MLP width, a
    head's width) follow them; ``pad_token_id`` is the tokenizer's (RoBERTa counts positions
    from it), and so is ``eos_token_id`` for encoder-decoders (where a T5 classifier pools).
    """
    try:
        default = AutoConfig.for_model(arch)
    except ValueError:
        raise UnknownSpecError(
            f"random:{arch} names no transformers architecture; use e.g. random:gpt2, "
            "random:llama, random:bert."
        ) from None
    values = dict(_DEFAULTS.get(arch, {}))
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    if pad_token_id is not None:
        values["pad_token_id"] = pad_token_id
    if getattr(default, "is_encoder_decoder", False):
        # The tokenizer's ends: a T5 classifier pools at the end-of-sequence token, and its
        # decoder starts from padding.
        if eos_token_id is not None:
            values["eos_token_id"] = eos_token_id
        if pad_token_id is not None:
            values.setdefault("decoder_start_token_id", pad_token_id)
    for key, raw in options.items():
        if key in _RESERVED:
            continue
        if not hasattr(default, key):
            raise UnknownSpecError(
                f"random:{arch} has no config field {key!r}; check the spelling."
            )
        values[key] = _coerce(raw, getattr(default, key))
    config = AutoConfig.for_model(arch, **values)
    settable_head_dim = not isinstance(getattr(type(config), "head_dim", None), property)
    if settable_head_dim and getattr(config, "head_dim", None) is not None:
        if "head_dim" not in options:
            # The library default belongs to its default width; a head spans hidden / heads here.
            config.head_dim = config.hidden_size // config.num_attention_heads
    return config


def _coerce(raw: str, current: Any) -> Any:
    if isinstance(current, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def tokenizer_source_is_alias(source: str) -> bool:
    """Returns whether a tokenizer source names a bundled model rather than a path or hub id."""
    return source in BUNDLED
