"""The decoder's side of a sequence-to-sequence update: its probe, its pairing, and what it
certifies when the head's gradient or a source is missing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conformance import SUMMARIES, TEXTS, TINY_SHAPES, spec_for

from gradleak.attacks.budget import NO_DEADLINE
from gradleak.attacks.dager import Dager
from gradleak.attacks.dager.config import DagerConfig
from gradleak.attacks.dager.seq2seq import complete_targets, pair_sources, search_targets
from gradleak.attacks.verdict import CauseKind
from gradleak.client import simulate_update
from gradleak.data import Batch
from gradleak.errors import UnsupportedFamilyError
from gradleak.models import load_model
from gradleak.models.probe import LinearInputProbe
from gradleak.models.task_loss import loss_gradient
from gradleak.update import ClientUpdate

_MODELS: dict[str, object] = {}


def _public(model_type: str):
    if model_type not in _MODELS:
        _MODELS[model_type] = load_model(spec_for(model_type, TINY_SHAPES[0]), task="seq2seq")
    return _MODELS[model_type]


def _ids(public, texts) -> list[tuple[int, ...]]:
    return [tuple(public.tokenizer(t)["input_ids"]) for t in texts]


@pytest.mark.parametrize("model_type", ["bart", "t5"])
def test_the_decoder_side_probe_gives_the_rows_of_the_real_forward_pass(model_type):
    public = _public(model_type)
    side = public.family.decoder_side()
    layers = [side.linear_layer(0, "q"), side.linear_layer(0, "o"), side.cross_query(0)]
    source, target = _ids(public, TEXTS[:2])
    decoder_ids = torch.tensor([(side.start_token(), *target[:-1])])
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        public.model.get_submodule(layer.module_name).register_forward_pre_hook(
            lambda m, args, key=layer.key: seen.setdefault(key, args[0])
        )
        for layer in layers
    ]
    with torch.no_grad():
        public.model(input_ids=torch.tensor([source]), decoder_input_ids=decoder_ids)
    for hook in hooks:
        hook.remove()
    probe = LinearInputProbe(side, layers)
    rows = probe(decoder_ids)
    for layer in layers:  # none of these reads the encoder: a stand-in memory changes nothing
        torch.testing.assert_close(rows[layer], seen[layer.key], rtol=1e-5, atol=1e-6)
    # Candidates branched side by side equal each extension computed on its own.
    start, state = probe.start(decoder_ids[:, :3])
    candidates = decoder_ids[0, 3:6]
    branched = probe.branch(state, candidates)
    for column, token in enumerate(candidates):
        own, _ = probe.extend(state.select([0]), token[None])
        for layer in layers:
            torch.testing.assert_close(
                branched[layer][0, column], own[layer][0], rtol=1e-5, atol=1e-6
            )


def test_each_target_is_paired_with_its_own_source():
    public = _public("bart")
    update = simulate_update(public, Batch(texts=TEXTS, targets=SUMMARIES))
    gradients = update.gradients()
    start = public.family.decoder_side().start_token()
    prefixes = [(start, *ids[:-1]) for ids in _ids(public, SUMMARIES)]
    sources = Dager().reconstruct(public, update).sequences
    expected = [[s.token_ids for s in sources].index(ids) for ids in _ids(public, TEXTS)]
    assert pair_sources(public, gradients, prefixes, sources) == expected


def test_the_client_and_the_attack_compute_the_same_seq2seq_gradient():
    public = _public("t5")
    update = simulate_update(public, Batch(texts=TEXTS[:3], targets=SUMMARIES[:3]))
    names = ["shared.weight", "decoder.block.0.layer.1.EncDecAttention.q.weight"]
    ours = loss_gradient(
        public, _ids(public, SUMMARIES[:3]), None, names, sources=_ids(public, TEXTS[:3])
    )
    for name in names:  # float32 sums in another order: equal to about 1e-6 of the norm
        misfit = (ours[name] - update.tensors[name]).norm() / update.tensors[name].norm()
        assert float(misfit) < 1e-5


def test_without_the_heads_gradient_the_last_target_tokens_are_unread():
    public = _public("t5")  # the head is the token table (tied), which this update keeps back
    update = simulate_update(public, Batch(texts=TEXTS[:2]))
    table = public.family.weight_name(public.family.embedding())
    shared = {n: t for n, t in update.tensors.items() if n != table}
    result = Dager().reconstruct(public, ClientUpdate(tensors=shared, metadata=update.metadata))
    truth = _ids(public, TEXTS[:2])
    assert {s.token_ids for s in result.sequences if s.certified} == set(truth)
    assert result.targets is not None and len(result.targets.sequences) == 2
    for target in result.targets.sequences:
        assert not target.certified
        assert CauseKind.TOKEN_UNREAD in {c.kind for c in target.assurance.causes}
        assert target.token_ids in {ids[:-1] for ids in truth}  # proved tokens kept, last unread


def test_a_target_whose_source_is_missing_keeps_its_proved_tokens_unread():
    public = _public("bart")
    update = simulate_update(public, Batch(texts=TEXTS[:2]))
    gradients = update.gradients()
    prefixes = search_targets(public, update, gradients, DagerConfig(), NO_DEADLINE)
    targets = complete_targets(public, gradients, prefixes, sources=())
    truth = {ids[:-1] for ids in _ids(public, TEXTS[:2])}
    assert {s.token_ids for s in targets.sequences} == truth
    for target in targets.sequences:
        assert not target.certified
        assert CauseKind.TOKEN_UNREAD in {c.kind for c in target.assurance.causes}


def test_a_wrong_source_leaves_the_last_target_tokens_inferred():
    public = _public("bart")
    update = simulate_update(public, Batch(texts=TEXTS[:2], targets=SUMMARIES[:2]))
    gradients = update.gradients()
    prefixes = search_targets(public, update, gradients, DagerConfig(), NO_DEADLINE)
    found = Dager().reconstruct(public, update).sequences
    wrong = found[0].token_ids
    wrong = (*wrong[:2], *wrong[3:])  # one token dropped from a source
    sources = (replace(found[0], token_ids=wrong), found[1])
    targets = complete_targets(public, gradients, prefixes, sources=sources)
    assert not any(t.certified for t in targets.sequences)


def test_seq2seq_needs_an_encoder_decoder_and_next_token_a_decoder():
    with pytest.raises(UnsupportedFamilyError, match="encoder-decoder"):
        load_model(spec_for("gpt2", TINY_SHAPES[1]), task="seq2seq")
    with pytest.raises(UnsupportedFamilyError, match="seq2seq"):
        load_model(spec_for("bart", TINY_SHAPES[1]), task="next_token")


@pytest.mark.parametrize("model_type", ["bart", "t5"])
def test_decoder_prefixes_are_tested_as_sources_never_trusted(model_type):
    public = _public(model_type)
    update = simulate_update(public, Batch(texts=TEXTS[:3]))
    gradients = update.gradients()
    truth = _ids(public, TEXTS[:3])
    idle = Dager(DagerConfig(encoder_restarts=0))  # the search alone finds nothing
    assert not idle.attack_gradients(public, update, gradients).sequences
    hinted = idle.attack_gradients(public, update, gradients, hints=tuple(t[:-1] for t in truth))
    assert {s.token_ids for s in hinted.sequences if s.certified} == set(truth)
    wrong = tuple((*t[:2], t[3], t[2], *t[4:-1]) for t in truth)  # two tokens swapped
    misled = idle.attack_gradients(public, update, gradients, hints=wrong)
    assert not [s for s in misled.sequences if s.certified]


def test_targets_cut_off_by_the_time_budget_are_not_certified():
    public = _public("bart")
    update = simulate_update(public, Batch(texts=TEXTS[:2]))
    result = Dager(DagerConfig(time_budget=1e-6)).reconstruct(public, update)
    assert result.targets is not None
    assert not [s for s in (*result.sequences, *result.targets.sequences) if s.certified]
    assert CauseKind.TIME_BUDGET in {c.kind for c in result.targets.all_causes}
