"""DAGER's planning function: which search an update gets, and what stands against it beforehand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gradleak.attacks import Cause, CauseKind
from gradleak.attacks.dager import DagerConfig
from gradleak.attacks.dager.plan import (
    DRIFT_MIN_GAP,
    SearchKind,
    Spectra,
    UpdateReading,
    plan_search,
    read_arithmetic,
    reads_token_bag,
    refines_with_subspace,
)
from gradleak.attacks.span import MIN_GAP_DECADES
from gradleak.update import ClientUpdate, UpdateMetadata

CLEAN = Spectra()
SATURATED = Spectra(saturated=((1, 576),), ranking_blocks=(0,), sequence_saturated=True)


def kinds(plan):
    return [c.kind for c in plan.causes]


def test_a_clean_update_is_searched_exactly():
    decoder = plan_search(UpdateReading(causal=True, spectra=CLEAN), DagerConfig())
    encoder = plan_search(UpdateReading(causal=False, spectra=CLEAN), DagerConfig())
    assert decoder.search is SearchKind.PREFIX and decoder.exact
    assert encoder.search is SearchKind.ENCODER and encoder.exact and encoder.peel
    assert not decoder.scan_fallback


def test_a_saturated_decoder_is_ranked_where_a_down_projection_is_shared():
    plan = plan_search(UpdateReading(causal=True, spectra=SATURATED), DagerConfig())
    assert plan.search is SearchKind.RANKED
    assert kinds(plan) == [CauseKind.SATURATED, CauseKind.RANKED] and plan.peel
    cap = plan_search(UpdateReading(causal=True, spectra=SATURATED), DagerConfig(saturated="cap"))
    assert cap.search is SearchKind.PREFIX and kinds(cap) == [CauseKind.SATURATED]
    assert cap.scan_fallback and not cap.peel


def test_saturation_of_block_zero_alone_does_not_rank():
    spectra = Spectra(saturated=((0, 576),), ranking_blocks=(0,))
    plan = plan_search(UpdateReading(causal=True, spectra=spectra), DagerConfig())
    assert plan.search is SearchKind.PREFIX and kinds(plan) == [CauseKind.SATURATED]
    assert plan.causes[0].block == 0


@pytest.mark.parametrize("mode", ["auto", "beam", "filter"])
def test_a_recorded_noise_defence_gets_a_noise_search(mode):
    reading = UpdateReading(causal=True, noise_defence="dp-sgd")
    plan = plan_search(reading, DagerConfig(noise=mode))
    expected = SearchKind.NOISY_FILTER if mode == "filter" else SearchKind.NOISY_BEAM
    assert plan.search is expected and kinds(plan) == [CauseKind.NOISE]
    assert plan.causes[0].detail == "dp-sgd defence"


def test_noise_turned_off_still_denies_the_certificate():
    reading = UpdateReading(causal=True, noise_defence="noise", spectra=CLEAN)
    plan = plan_search(reading, DagerConfig(noise="off"))
    assert plan.search is SearchKind.PREFIX and kinds(plan) == [CauseKind.NOISE]


def test_an_exact_search_needs_spectra():
    with pytest.raises(ValueError, match="spectra"):
        plan_search(UpdateReading(causal=True), DagerConfig())


def test_multi_step_deltas_drift_and_float32_ones_lose_their_gap():
    drift = UpdateReading(causal=True, local_steps=4, dtype="float64", spectra=CLEAN)
    assert kinds(plan_search(drift, DagerConfig())) == [CauseKind.DRIFT]
    assert drift.min_gap == DRIFT_MIN_GAP
    blurred = UpdateReading(causal=True, local_steps=4, dtype="float32", spectra=SATURATED)
    plan = plan_search(blurred, DagerConfig(subspace="off"))
    assert plan.search is SearchKind.PREFIX and kinds(plan) == [CauseKind.PRECISION]
    assert not plan.scan_fallback
    assert plan_search(blurred, DagerConfig()).search is SearchKind.SUBSPACE


def test_the_metadata_is_read_before_any_spectrum():
    meta = dict(model="m", family="llama", task="seq_class")
    one_step = ClientUpdate({}, UpdateMetadata(**meta))
    assert read_arithmetic(one_step, causal=True).min_gap == MIN_GAP_DECADES
    delta = ClientUpdate(
        {},
        UpdateMetadata(
            **meta, kind="weight_delta", local_steps=None, defence={"name": "noise", "sigma": 1e-4}
        ),
    )
    reading = read_arithmetic(delta, causal=False)
    assert reading.drifts and reading.local_steps == 0 and reading.noise_defence == "noise"


def test_updates_no_span_test_can_read_go_to_the_subspace_search():
    int8 = UpdateReading(causal=True, rounding="int8")
    plan = plan_search(int8, DagerConfig())
    assert plan.search is SearchKind.SUBSPACE and kinds(plan) == [CauseKind.LOSSY_UPDATE]
    drifting = UpdateReading(causal=True, local_steps=4, spectra=SATURATED)
    assert plan_search(drifting, DagerConfig()).search is SearchKind.SUBSPACE
    off = DagerConfig(subspace="off")
    assert plan_search(drifting, off).search is SearchKind.PREFIX
    with pytest.raises(ValueError, match="spectra"):
        plan_search(int8, off)
    bf16 = UpdateReading(causal=True, rounding="bfloat16", spectra=CLEAN)
    assert plan_search(bf16, DagerConfig()).search is SearchKind.PREFIX


def test_the_subspace_search_refines_only_a_rounded_or_drifting_search_that_found_nothing():
    lossy = (Cause(CauseKind.LOSSY_UPDATE, detail="bfloat16"), Cause(CauseKind.NO_TOKENS, block=0))
    assert refines_with_subspace(lossy, 0, DagerConfig())
    assert not refines_with_subspace(lossy, 2, DagerConfig())
    assert not refines_with_subspace(lossy, 0, DagerConfig(subspace="off"))
    assert not refines_with_subspace((Cause(CauseKind.NO_TOKENS, block=0),), 0, DagerConfig())


@pytest.mark.parametrize("saturated", [((0, 576),), ((1, 576),), ((0, 576), (1, 576))])
def test_saturated_adapters_get_the_pursuit_never_the_full_models_search(saturated):
    spectra = Spectra(saturated=saturated, adapters=True, width=576)
    plan = plan_search(UpdateReading(causal=True, spectra=spectra), DagerConfig())
    assert plan.search is SearchKind.PURSUIT
    assert kinds(plan) == [CauseKind.SATURATED, CauseKind.PURSUIT] and not plan.exact


def test_adapters_below_the_limit_are_searched_exactly():
    spectra = Spectra(adapters=True, width=576)
    plan = plan_search(UpdateReading(causal=True, spectra=spectra), DagerConfig())
    assert plan.search is SearchKind.PREFIX and plan.exact


def test_a_first_round_span_read_through_a_narrow_a_factor_is_not_certifying():
    narrow = Spectra(adapters=True, projected=16, width=576)
    wide = Spectra(adapters=True, projected=576, width=576)
    plan = plan_search(UpdateReading(causal=True, spectra=narrow), DagerConfig())
    assert plan.search is SearchKind.PREFIX and kinds(plan) == [CauseKind.PROJECTED]
    assert plan.causes[0].count == 16
    assert plan_search(UpdateReading(causal=True, spectra=wide), DagerConfig()).exact


def test_a_float32_delta_read_above_its_weights_rounding_is_ranked_never_certified():
    rounded = UpdateReading(
        causal=True,
        local_steps=8,
        dtype="float32",
        spectra=SATURATED,
        weight_rounding="float32 grid, 8 steps at lr 0.0001",
    )
    plan = plan_search(rounded, DagerConfig())
    assert plan.search is SearchKind.RANKED and not plan.exact and not plan.peel
    assert kinds(plan) == [CauseKind.DRIFT, CauseKind.ROUNDING, CauseKind.RANKED]
    encoder = plan_search(replace(rounded, causal=False), DagerConfig())
    assert encoder.search is SearchKind.ENCODER
    assert kinds(encoder) == [CauseKind.DRIFT, CauseKind.ROUNDING]
    assert refines_with_subspace(plan.causes, 0, DagerConfig())


def test_the_token_bag_is_read_where_only_the_client_or_a_float_grid_touched_the_update():
    """The token table's gradient is zero exactly on the tokens the batch lacks unless a defence
    added rows (noise) or removed them (pruning, an int8 step that zeroes small values)."""
    exact = plan_search(UpdateReading(causal=True, spectra=CLEAN), DagerConfig())
    assert reads_token_bag(exact, UpdateReading(causal=True), None)
    assert not reads_token_bag(exact, UpdateReading(causal=True), {"name": "prune"})
    drift = UpdateReading(causal=True, local_steps=4, spectra=SATURATED)
    assert reads_token_bag(plan_search(drift, DagerConfig(subspace="off")), drift, None)
    bf16 = UpdateReading(causal=True, rounding="bfloat16", spectra=CLEAN)
    assert reads_token_bag(plan_search(bf16, DagerConfig()), bf16, None)
    fp16 = UpdateReading(causal=True, rounding="fp16", spectra=CLEAN)
    quantised = {"name": "quantize", "scheme": "fp16"}
    assert reads_token_bag(plan_search(fp16, DagerConfig()), fp16, quantised)
    int8 = UpdateReading(causal=True, rounding="int8")
    plan = plan_search(int8, DagerConfig())
    assert not reads_token_bag(plan, int8, {"name": "quantize", "scheme": "int8"})
    pruned = [{"name": "prune"}, quantised]
    assert not reads_token_bag(plan_search(fp16, DagerConfig()), fp16, pruned)
