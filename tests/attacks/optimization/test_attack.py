"""The engine end to end: it recovers a sentence, runs on partial views, says what it assumed."""

from __future__ import annotations

from collections import Counter

import pytest

from gradleak.attacks import create_attack
from gradleak.attacks.optimization import (
    GradientInversion,
    LampCosConfig,
    LampL1L2Config,
    LanguageModelPrior,
    PartialConfig,
    TagConfig,
)
from gradleak.errors import GradientNotExposedError, UnknownSpecError

SENTENCE = "the cat sat on the mat"
FAST = dict(steps=150, init_candidates=20, prior="none")


def recovered_tokens(public, reconstruction, text):
    """Returns the share of the true tokens in the reconstruction (as multisets, a recall)."""
    truth = Counter(public.tokenizer(text)["input_ids"])
    got = Counter(reconstruction.sequences[0].token_ids)
    return sum((truth & got).values()) / sum(truth.values())


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_all_gradients_one_sentence_is_recovered(tiny_models, make_update, family):
    public = tiny_models(family)
    update = make_update(public, [SENTENCE], (1,), disclose_labels=True)  # the papers' setting
    result = GradientInversion(LampCosConfig(**FAST)).reconstruct(public, update)
    history = result.diagnostics["history"]
    assert history[-1][1] < history[0][1] / 30  # the gradient distance falls by 1.5 decades
    assert recovered_tokens(public, result, SENTENCE) >= 0.8
    assert not result.certified and result.reason
    assert result.diagnostics["lengths"]["value"] == [len(public.tokenizer(SENTENCE)["input_ids"])]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_longer_runs_recover_the_sentence_with_unknown_labels(tiny_models, make_update, family):
    public = tiny_models(family)
    update = make_update(public, [SENTENCE], (1,))
    result = create_attack("lamp_cos", steps=600, prior="none").reconstruct(public, update)
    assert recovered_tokens(public, result, SENTENCE) >= 0.8
    assert result.diagnostics["labels"]["value"] == [1]


@pytest.mark.slow
def test_tag_lowers_its_distance(tiny_models, make_update):
    # TAG's L2 + L1 stalls far from zero on these tiny random models (LAMP_cos recovers them).
    public = tiny_models("llama")
    update = make_update(public, [SENTENCE], (1,), disclose_labels=True)
    history = create_attack("tag", steps=300).reconstruct(public, update).diagnostics["history"]
    assert history[-1][1] < history[0][1] / 10


def test_a_one_layer_partial_view_runs_end_to_end(tiny_models, make_update):
    public = tiny_models("gpt2")
    update = make_update(public, [SENTENCE], (0,), expose="blocks=1")
    prior = LanguageModelPrior(tiny_models("llama", "next_token"))
    config = PartialConfig(
        steps=24, init_candidates=4, swap_every=10, swap_candidates=8, label_probe_steps=5
    )
    result = GradientInversion(config, prior=prior).reconstruct(public, update)
    (sequence,) = result.sequences
    assert not sequence.certified and len(sequence.token_ids) == 6
    diagnostics = result.diagnostics
    assert all(".h.1." in name for name in diagnostics["matched_tensors"])
    assert (
        diagnostics["labels"]["source"] == "enumerated"
    )  # no head gradient: two hypotheses probed
    assert len(diagnostics["labels"]["probe_losses"]) == 2
    assert sum(diagnostics["moves"].values()) == 2  # rounds at steps 11 and 21, one sequence each
    assert diagnostics["lengths"]["source"] == "rank of 1.mlp_in"
    assert prior.cache  # candidates were scored by the prior
    assert diagnostics["seconds_per_step"] > 0


def test_component_view_and_batch_of_two(tiny_models, make_update):
    public = tiny_models("bert")
    update = make_update(
        public, ["the cat sat", "a dog barked loudly"], (0, 1), expose="blocks=0 roles=v"
    )
    attack = create_attack(
        "partial",
        select="blocks=0 roles=v biases=no",
        steps=5,
        init_candidates=3,
        prior="none",
        label_probe_steps=3,
        lengths=[5, 6],
    )
    result = attack.reconstruct(public, update)
    assert [len(s.token_ids) for s in result.sequences] == [5, 6]
    assert result.diagnostics["matched_tensors"] == [
        "bert.encoder.layer.0.attention.self.value.weight"
    ]
    assert result.diagnostics["batch_size"] == {"value": 2, "source": "lengths option"}


def test_next_token_updates_are_attacked(tiny_models, make_update):
    public = tiny_models("llama", "next_token")
    update = make_update(public, [SENTENCE])
    result = create_attack("tag", steps=5).reconstruct(public, update)
    assert (
        len(result.sequences[0].token_ids) == 6 and result.diagnostics["labels"]["source"] == "task"
    )


def test_selecting_an_unshared_tensor_fails_clearly(tiny_models, make_update):
    public = tiny_models("llama")
    update = make_update(public, [SENTENCE], expose="blocks=0 roles=q")
    with pytest.raises(GradientNotExposedError, match="does not share"):
        create_attack("partial", select="blocks=0 roles=k", steps=1).reconstruct(public, update)


@pytest.mark.parametrize(
    ("name", "config", "distance"),
    [
        ("tag", TagConfig, "tag"),
        ("lamp_cos", LampCosConfig, "cos"),
        ("lamp_l1l2", LampL1L2Config, "tag"),
        ("partial", PartialConfig, "cos"),
    ],
)
def test_recipes_are_registered_with_the_papers_defaults(name, config, distance):
    attack = create_attack(name)
    assert (
        attack.name == name and type(attack.config) is config and attack.config.distance == distance
    )
    assert name in repr(attack) or config.__name__ in repr(attack)
    assert create_attack(name, steps=7).config.steps == 7


def test_recipe_defaults_follow_the_scripts():
    tag, cos, l1l2 = TagConfig(), LampCosConfig(), LampL1L2Config()
    assert (tag.lr, tag.lr_decay, tag.steps, tag.tag_alpha, tag.init_candidates, tag.swaps) == (
        0.1,
        1.0,
        2500,
        0.01,
        1,
        False,
    )
    assert (cos.coeff_perplexity, cos.coeff_reg, cos.lr, cos.lr_decay, cos.steps) == (
        0.2,
        1.0,
        0.01,
        0.89,
        2000,
    )
    assert (cos.init_candidates, cos.permutations, cos.swap_every, cos.swap_candidates) == (
        500,
        500,
        75,
        200,
    )
    assert (l1l2.coeff_perplexity, l1l2.coeff_reg) == (60.0, 25.0)


def test_bad_options_are_refused_together():
    with pytest.raises(UnknownSpecError, match=r"distance='l3'.*steps=-1"):
        create_attack("lamp_cos", distance="l3", steps=-1)
    with pytest.raises(UnknownSpecError, match="has no option 'colour'; valid options: distance"):
        create_attack("tag", colour="red")


def test_command_line_values_are_coerced():
    config = LampCosConfig(lengths="7,9", prior="none", init_size="1.4", steps=10.0)
    assert (config.lengths, config.prior, config.init_size, config.steps) == ((7, 9), None, 1.4, 10)


def test_the_plan_says_what_is_assumed_before_optimising(tiny_models, make_update):
    public = tiny_models("gpt2")
    update = make_update(public, ["the cat sat", "a dog"], (1, 0), expose="blocks=0,1")
    plan = create_attack("partial", batch_size=2).plan(public, update)
    described = plan.describe()
    assert described["batch_size"] == {"value": 2, "source": "option"}
    assert described["lengths"] == {
        "value": [3, 2],
        "source": "rank of 0.mlp_in",
    }  # 5 tokens split evenly
    assert described["labels"] == {"source": "enumerated", "hypotheses": 3}
    assert plan.layout.left_pad  # causal: the head reads the last position of every row
