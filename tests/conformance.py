"""The conformance matrix: tiny random-init models of every supported model_type, two shapes each.

Shared by ``test_conformance.py`` and ``benchmarks/conformance_bench.py``. Shape "odd" has a
width that is not a power of two, three blocks, and grouped- or multi-query attention where the
architecture has it; shape "shallow" has only two blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What each model_type calls its sizes: (layers, width, MLP width, heads, KV heads or None).
_FIELDS: dict[str, tuple[str, str, str | None, str, str | None]] = {
    "gpt2": ("n_layer", "n_embd", "n_inner", "n_head", None),
    "opt": ("num_hidden_layers", "hidden_size", "ffn_dim", "num_attention_heads", None),
    "falcon": ("num_hidden_layers", "hidden_size", None, "num_attention_heads", None),
    "gpt_neox": (
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        None,
    ),
    "distilbert": ("n_layers", "dim", "hidden_dim", "n_heads", None),
    "t5": ("num_layers", "d_model", "d_ff", "num_heads", None),
    "bart": ("encoder_layers", "d_model", "encoder_ffn_dim", "encoder_attention_heads", None),
}
_LLAMA_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
)
_BERT_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    None,
)

DECODERS: tuple[str, ...] = (
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "phi3",
    "gpt_neox",
    "opt",
    "falcon",
)
ENCODERS: tuple[str, ...] = (
    "bert",
    "roberta",
    "distilbert",
    "electra",
    "deberta-v2",
    "t5",
    "albert",
)
#: Encoder-decoders attacked through their encoder, their decoder confirming (classification).
ENCODER_DECODERS: tuple[str, ...] = ("bart",)
#: Encoder-decoders trained sequence-to-sequence: the encoder's sources and the decoder's targets
#: are both attacked.
SEQ2SEQ: tuple[str, ...] = ("bart", "t5")
#: The family each model_type must be attacked as.
FAMILY: dict[str, str] = {
    **{t: "llama" for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")},
    **{t: t for t in ("gpt2", "gpt_neox", "opt", "falcon", "bert", "roberta", "distilbert")},
    "electra": "electra",
    "deberta-v2": "deberta-v2",
    "t5": "t5",
    "albert": "albert",
    "bart": "bart",
}
#: Encoders whose B = 4 batches the encoder search does not recover at these widths (BERT's
#: included): an attack limitation, reported by an expected failure, never hidden. (DeBERTa-v2:
#: its tiny random blocks attend nearly uniformly, so block 1's span shows fewer directions than
#: the batch has rows.) T5's encoder search recovers its B = 4 at both shapes.
ENCODER_SEARCH_SHORT_AT_B4 = tuple(t for t in (*ENCODERS, *ENCODER_DECODERS) if t != "t5")
#: Model types whose tiny random blocks attend so nearly uniformly that a sentence with two of
#: its tokens exchanged fits the sequence span within a decade of the true one (DeBERTa-v2 at 72
#: wide: all 15 exchanges of "my pin is 4471" pass the threshold, 13 within a decade): the order
#: is not proved, so nothing is certified, and a cause says so.
ORDER_UNPROVED: tuple[str, ...] = ("deberta-v2",)
#: Model types whose B = 4 spans are saturated at the tiny widths: ALBERT's one block runs at
#: every depth, so its gradient spans about depth x tokens rows (3 x 29 > 72, 2 x 29 near 64).
SATURATED_AT_B4: tuple[str, ...] = ("albert",)
#: Model types whose attention can share keys and values between heads (grouped or multi-query).
_GROUPED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")

TEXTS: tuple[str, ...] = (
    "my pin is 4471",
    "Call Maria at noon.",
    "see you at six",
    "The rent is due Friday.",
)
#: Targets other than the texts, for sequence-to-sequence clients (summary-like).
SUMMARIES: tuple[str, ...] = ("pin 4471", "Maria at noon", "six", "rent Friday")


@dataclass(frozen=True)
class Shape:
    """A model size: blocks, width, MLP width, heads and KV heads (None: as many as heads)."""

    name: str
    blocks: int
    width: int
    mlp: int
    heads: int
    kv_heads: int | None = None
    embedding: int | None = None  # a factorised embedding's width E (ALBERT), if not d / 4


TINY_SHAPES: tuple[Shape, ...] = (
    Shape("odd", blocks=3, width=72, mlp=100, heads=6, kv_heads=2),
    Shape("shallow", blocks=2, width=64, mlp=96, heads=4),
)


def spec_for(model_type: str, shape: Shape, *, extra: str = "") -> str:
    """Returns the ``random:`` spec of ``model_type`` at ``shape``."""
    fields = _FIELDS.get(model_type) or (_LLAMA_FIELDS if model_type in _GROUPED else _BERT_FIELDS)
    layers, width, mlp, heads, kv = fields
    values = {layers: shape.blocks, width: shape.width, heads: shape.heads}
    if mlp is not None:
        values[mlp] = shape.mlp
    if kv is not None:
        values[kv] = shape.kv_heads or shape.heads
    if model_type == "gpt2":
        values["n_positions"] = 128
    if model_type == "opt":
        values["word_embed_proj_dim"] = shape.width
    if model_type == "falcon" and shape.kv_heads is None:
        values["multi_query"] = False  # all heads their own keys: the grouped fused layout
        values["new_decoder_architecture"] = True
        values["num_kv_heads"] = shape.heads
    if model_type == "electra":
        values["embedding_size"] = shape.width * 2 // 3  # the projection E -> d
    if model_type == "albert":
        values["embedding_size"] = shape.embedding or shape.width // 4  # factorised E -> d
    if model_type == "bart":  # the decoder as wide and deep as the encoder
        values.update(decoder_layers=shape.blocks, decoder_attention_heads=shape.heads)
        values["decoder_ffn_dim"] = shape.mlp
    query = "&".join(f"{key}={value}" for key, value in values.items())
    return f"random:{model_type}?{query}{extra}"
