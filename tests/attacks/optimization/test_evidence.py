"""What the attack reads from the update: labels, batch size, lengths."""

from __future__ import annotations

import pytest
from helpers import TINY

from gradleak.attacks.optimization import infer_labels
from gradleak.attacks.optimization.shape import estimate_batch_size, estimate_total_tokens
from gradleak.errors import GradleakError, InvalidUpdateError
from gradleak.models import load_model


def guess(public, update, batch_size, **kw):
    return infer_labels(
        public.family,
        update.gradients(),
        task=public.task,
        num_labels=public.num_labels,
        batch_size=batch_size,
        extra=update.metadata.extra,
        **kw,
    )


def test_disclosed_labels_are_used_and_checked(tiny_models, make_update):
    public = tiny_models("gpt2")
    update = make_update(public, ["one text", "two texts"], (1, 1), disclose_labels=True)
    assert (
        guess(public, update, 2).hypotheses == ((1, 1),)
        and guess(public, update, 2).source == "disclosed"
    )
    with pytest.raises(InvalidUpdateError, match="do not fit"):
        guess(public, update, 3)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [((1,), (1,)), ((0,), (0,)), ((1, 0, 1), (0, 1, 1)), ((1, 1, 1), (1, 1, 1))],
)
def test_labels_are_read_from_the_head_bias(tiny_models, make_update, labels, expected):
    public = tiny_models("bert")
    update = make_update(public, ["the cat", "a dog barked", "hello world"][: len(labels)], labels)
    found = guess(public, update, len(labels))
    assert found.hypotheses == (expected,) and found.source == "head_bias"


def test_three_classes_without_bias_read_the_odd_row():
    public = load_model(TINY["llama"], num_labels=3)
    from gradleak.client import compute_update
    from gradleak.data import Batch

    for label in range(3):
        update = compute_update(public, Batch(texts=("the cat sat",), labels=(label,)))
        found = infer_labels(
            public.family, update.gradients(), task="seq_class", num_labels=3, batch_size=1
        )
        assert found.hypotheses == ((label,),) and found.source == "head_weight"


def test_binary_labels_without_bias_become_hypotheses(tiny_models, make_update):
    public = tiny_models("gpt2")
    update = make_update(public, ["a", "b", "c"], (1, 0, 1))
    found = guess(public, update, 3, max_hypotheses=3)
    assert found.source == "enumerated"
    assert found.hypotheses == ((0, 0, 1), (0, 1, 1), (0, 0, 0))  # most balanced first


def test_next_token_needs_no_labels(tiny_models, make_update):
    public = tiny_models("llama", "next_token")
    assert guess(public, make_update(public, ["hello there"]), 1).source == "task"


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_token_count_and_batch_size_come_from_ranks(tiny_models, make_update, family):
    public = tiny_models(family)
    texts = ["the cat sat on the mat", "a dog barked at night"]
    update = make_update(public, texts)
    tokens = sum(len(public.tokenizer(t)["input_ids"]) for t in texts)
    assert estimate_total_tokens(public.family, update.gradients()).value == tokens
    assert estimate_batch_size(public.family, update.gradients(), task="seq_class").value == 2


def test_lengths_need_an_exposed_linear_gradient(tiny_models, make_update):
    public = tiny_models("bert")
    update = make_update(public, ["the cat"], expose="roles=head")
    with pytest.raises(GradleakError, match="pass lengths="):
        estimate_total_tokens(public.family, update.gradients())


def test_the_last_block_of_a_classifier_hides_the_lengths(tiny_models, make_update):
    # One query per sequence reads it: k and v gradients have rank one per head, not one per token.
    public = tiny_models("bert")
    update = make_update(public, ["the cat sat on the mat"], expose="blocks=3")
    with pytest.raises(GradleakError, match="pass lengths="):
        estimate_total_tokens(public.family, update.gradients())
    assert estimate_batch_size(public.family, update.gradients(), task="seq_class").value == 1


def test_batch_size_counts_rows_of_similar_sequences(tiny_models):
    # A shallow random classifier pools nearly the same state for every sequence: the drop after
    # the first singular value is as deep as the one into the rounding bulk.
    import torch

    public = tiny_models("bert")
    layer = public.family.linear_layer(public.family.num_blocks - 1, "mlp_in")
    generator = torch.Generator().manual_seed(0)
    common = torch.randn(1, layer.in_features, generator=generator)
    rows = common + 1e-4 * torch.randn(4, layer.in_features, generator=generator)
    grad = torch.randn(layer.out_features, 4, generator=generator) @ rows
    gradients = {layer.weight_name: grad.float()}
    assert estimate_batch_size(public.family, gradients, task="seq_class").value == 4
