"""The factored extension computes block 0's MLP activations exactly as the model does."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gradleak.attacks.dager import DagerConfig
from gradleak.attacks.dager.ranked import RankingEvidence, search_ranked
from gradleak.attacks.dager.searches import ranking_evidence
from gradleak.attacks.dager.tokens import embedding_bag
from gradleak.attacks.span import span_basis
from gradleak.client import compute_update
from gradleak.data import Batch
from gradleak.models import LinearInputProbe
from gradleak.models.extension import FactoredExtension


def down_projection_probe(public):
    return LinearInputProbe(public.family, [public.family.linear_layer(0, "mlp_out")])


@pytest.mark.parametrize("length", [1, 4])
def test_factored_rows_are_the_probes(tiny_models, length):
    public = tiny_models("gpt2")
    probe = down_projection_probe(public)
    generator = torch.Generator().manual_seed(length)
    _, state = probe.start(torch.randint(0, 5000, (6, length), generator=generator))
    candidates = torch.randint(0, 5000, (9,), generator=generator)
    extension = FactoredExtension(probe)
    (layer,) = probe.layers
    ours, theirs = (
        extension.branch(state, candidates)[layer],
        probe.branch(state, candidates)[layer],
    )
    assert ours.shape == theirs.shape == (6, 9, layer.in_features)
    gap = (ours - theirs).norm(dim=-1) / theirs.norm(dim=-1)
    assert float(gap.max()) < 1e-5
    assert extension.agrees(state, candidates)
    # The state is left as it was: the same call gives the same rows.
    assert torch.equal(extension.branch(state, candidates)[layer], ours)


@pytest.mark.parametrize("rows_per_tile", [1, 7, 20, 1000])
def test_tiles_cover_every_pair_once_with_the_branchs_rows(tiny_models, rows_per_tile):
    public = tiny_models("gpt2")
    probe = down_projection_probe(public)
    generator = torch.Generator().manual_seed(3)
    _, state = probe.start(torch.randint(0, 5000, (6, 3), generator=generator))
    candidates = torch.randint(0, 5000, (9,), generator=generator)
    extension = FactoredExtension(probe)
    whole = probe.branch(state, candidates)[extension.layer]
    covered = torch.zeros(6, 9, dtype=torch.int64)
    for prefixes, columns, rows in extension.tiles(state, candidates, rows_per_tile=rows_per_tile):
        covered[prefixes, columns] += 1
        assert rows.shape[0] * rows.shape[1] <= max(rows_per_tile, 1)
        gap = (rows - whole[prefixes, columns]).norm(dim=-1) / whole[prefixes, columns].norm(dim=-1)
        assert float(gap.max()) < 1e-5
    assert bool((covered == 1).all())


def test_only_a_pre_norm_blocks_down_projection_is_factored(tiny_models):
    gpt2, llama = tiny_models("gpt2"), tiny_models("llama")
    assert FactoredExtension.available(down_projection_probe(gpt2))
    assert not FactoredExtension.available(down_projection_probe(llama))  # rotary positions
    block_one = LinearInputProbe(gpt2.family, [gpt2.family.linear_layer(1, "mlp_out")])
    assert not FactoredExtension.available(block_one)
    with pytest.raises(ValueError):
        FactoredExtension(block_one)


def test_evidence_whose_extension_disagrees_falls_back_to_the_probe(tiny_models, monkeypatch):
    public = tiny_models("gpt2")
    probe = down_projection_probe(public)
    (layer,) = probe.layers
    basis = span_basis([torch.randn(8, layer.in_features, dtype=torch.float64)], min_gap=0.0)
    extension = FactoredExtension(probe)
    evidence = RankingEvidence((layer,), (basis,), probe, extension)
    _, state = probe.start(torch.tensor([[11, 12], [13, 14]]))
    candidates = torch.tensor([5, 6, 7])
    assert evidence.checked(state, candidates).extension is extension
    wrong = extension.branch(state, candidates)[layer] * 1.01
    monkeypatch.setattr(extension, "branch", lambda *args: {layer: wrong})
    fallback = evidence.checked(state, candidates)
    assert fallback.extension is None
    expected = probe.branch(state, candidates)[layer]
    assert torch.equal(fallback.branch(state, candidates)[layer], expected)


def test_the_ranked_search_finds_the_same_with_and_without_it(tiny_models):
    public = tiny_models("gpt2")  # d = 32: four sentences hold more rows than that
    texts = (
        "Call Maria at 555-0147 before noon.",
        "The rent is due on Friday, not Monday.",
        "My new password is blue-harbor-42.",
        "Her flight lands in Oslo at seven in the evening.",
    )
    gradients = compute_update(public, Batch(texts=texts, labels=(0, 1, 0, 1))).gradients()
    evidence = ranking_evidence(public, gradients, DagerConfig())
    assert evidence is not None and evidence.extension is not None
    bag = embedding_bag(public.family, gradients)
    assert bag is not None

    def search(chosen):
        return search_ranked(
            chosen,
            tokens_at=lambda p: bag,
            max_length=16,
            chunk_size=512,
            max_frontier=64,
            z_accept=3.0,
            per_prefix=4,
        ).sequences

    factored, probed = search(evidence), search(replace(evidence, extension=None))
    assert [ids for ids, _ in factored] == [ids for ids, _ in probed] and factored
    for (_, ours), (_, theirs) in zip(factored, probed, strict=True):
        assert ours == pytest.approx(theirs, rel=1e-3, abs=1e-3)
