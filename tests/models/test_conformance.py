"""Every supported model_type, at two tiny shapes: DAGER recovers every sequence exactly, certified.

The matrix (``conformance.py``): each decoder and encoder, a width that is not a power of two
with grouped or multi-query attention where the architecture has it, and a two-block model;
B = 1 and 4; the classification task, next-token prediction for decoders, and
sequence-to-sequence training for encoder-decoders (sources and targets both recovered, also
with targets other than the texts). Certified implies exact is asserted on its own first, so a
lie is reported as such even where recovery also fails.
"""

from __future__ import annotations

import pytest
from conformance import (
    DECODERS,
    ENCODER_DECODERS,
    ENCODER_SEARCH_SHORT_AT_B4,
    ENCODERS,
    FAMILY,
    ORDER_UNPROVED,
    SATURATED_AT_B4,
    SEQ2SEQ,
    SUMMARIES,
    TEXTS,
    TINY_SHAPES,
    Shape,
    spec_for,
)

from gradleak.attacks.dager import Dager
from gradleak.client import simulate_update
from gradleak.data import Batch
from gradleak.models import load_model

#: The default run keeps a few minutes on 2 cores: per model type the odd shape's classification
#: at B = 4 and next-token at B = 1, and the shallow shape's classification at B = 1 (encoders:
#: B = 1 at both shapes, and B = 4 where the encoder search recovers it at these widths: T5).
#: The rest of the matrix is marked slow (``-m slow``).
_DEFAULT = {("odd", "seq_class", 4), ("odd", "next_token", 1), ("shallow", "seq_class", 1)}


def _slow(model_type: str, shape: Shape, task: str, size: int) -> bool:
    if model_type in ENCODER_DECODERS:
        return (shape.name, size) == ("shallow", 4)
    if model_type in ENCODERS:
        return size == 4 and model_type in ENCODER_SEARCH_SHORT_AT_B4
    return (shape.name, task, size) not in _DEFAULT


def _cases() -> list:
    cases = []
    for model_type in DECODERS + ENCODERS + ENCODER_DECODERS:
        tasks = ("seq_class", "next_token") if model_type in DECODERS else ("seq_class",)
        for shape in TINY_SHAPES:
            for task in tasks:
                for size in (1, 4):
                    marks = [pytest.mark.slow] if _slow(model_type, shape, task, size) else []
                    cases.append(
                        pytest.param(
                            model_type,
                            shape,
                            task,
                            size,
                            id=f"{model_type}-{shape.name}-{task}-B{size}",
                            marks=marks,
                        )
                    )
    return cases


_MODELS: dict[tuple[str, str, str], object] = {}


def _model(model_type: str, shape: Shape, task: str):
    key = (model_type, shape.name, task)
    if key not in _MODELS:
        _MODELS[key] = load_model(spec_for(model_type, shape), task=task)
    return _MODELS[key]


@pytest.mark.parametrize(("model_type", "shape", "task", "size"), _cases())
def test_dager_recovers_every_sequence_exactly_and_certified(model_type, shape, task, size):
    public = _model(model_type, shape, task)
    texts = TEXTS[:size]
    batch = Batch(texts=texts, labels=tuple(i % 2 for i in range(size)))
    update = simulate_update(public, batch)
    result = Dager().reconstruct(public, update)
    truth = {tuple(public.tokenizer(text)["input_ids"]) for text in texts}
    lies = [s.text for s in result.sequences if s.certified and s.token_ids not in truth]
    assert not lies, f"certified but not exact: {lies}"
    assert result.diagnostics["family"] == FAMILY[model_type]
    found = {s.token_ids for s in result.sequences if s.certified}
    missing = [t for t in texts if tuple(public.tokenizer(t)["input_ids"]) not in found]
    if missing and size == 4 and model_type in SATURATED_AT_B4:
        assert result.all_causes, "sequences not recovered, and no cause stated"
        pytest.xfail(f"{model_type}'s spans are saturated at B = 4 at this width")
    if missing and model_type in ORDER_UNPROVED:
        assert result.all_causes, "sequences not recovered, and no cause stated"
        pytest.xfail(f"{model_type}'s tiny blocks cannot tell two tokens exchanged")
    if missing and size == 4 and model_type in ENCODER_SEARCH_SHORT_AT_B4:
        pytest.xfail(f"the encoder search misses {len(missing)} of 4 at this width")
    assert not missing, f"not recovered exactly and certified: {missing} ({result.reason})"
    assert len(result.sequences) == size


def _seq2seq_cases() -> list:
    return [
        pytest.param(
            model_type, shape, size, targets, id=f"{model_type}-{shape.name}-seq2seq-B{size}{tag}"
        )
        for model_type in SEQ2SEQ
        for shape in TINY_SHAPES
        for size in (1, 4)
        for targets, tag in ((None, ""), (SUMMARIES, "-summaries"))
        if targets is None or (shape.name, size) == ("odd", 4)
    ]


@pytest.mark.parametrize(("model_type", "shape", "size", "targets"), _seq2seq_cases())
def test_dager_recovers_sources_and_targets_of_a_seq2seq_update(model_type, shape, size, targets):
    public = _model(model_type, shape, "seq2seq")
    texts = TEXTS[:size]
    batch = Batch(texts=texts, targets=None if targets is None else targets[:size])
    update = simulate_update(public, batch)
    result = Dager().reconstruct(public, update)
    assert result.targets is not None
    for found, truth_texts in ((result, texts), (result.targets, targets or texts)):
        truth = {tuple(public.tokenizer(text)["input_ids"]) for text in truth_texts[:size]}
        lies = [s.text for s in found.sequences if s.certified and s.token_ids not in truth]
        assert not lies, f"certified but not exact: {lies}"
        certified = {s.token_ids for s in found.sequences if s.certified}
        assert certified == truth, f"not recovered exactly and certified ({found.reason})"
        assert len(found.sequences) == size
    assert result.diagnostics["family"] == FAMILY[model_type]
    assert result.targets.diagnostics["family"] == f"{FAMILY[model_type]}-decoder"
    assert result.targets.diagnostics["last_targets"] == "proved"
