"""ClientUpdate files round-trip bit-exactly and refuse damaged or mismatched content."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from gradleak.client import compute_update
from gradleak.data import Batch
from gradleak.errors import InvalidUpdateError
from gradleak.update import ClientUpdate, load_update, save_update


@pytest.fixture(scope="module")
def update(tiny_models):
    return compute_update(
        tiny_models("gpt2"), Batch(texts=("Meet me at 9 at Elm Street.",), labels=(1,))
    )


def test_round_trip_is_bit_exact(update, tiny_models, tmp_path):
    path = save_update(update, tmp_path / "u")
    assert path.suffix == ".safetensors"
    loaded = load_update(path, model=tiny_models("gpt2").model)
    assert loaded.metadata == update.metadata
    assert set(loaded.tensors) == set(update.tensors)
    for name, tensor in update.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor), name


def test_metadata_is_plain_json_in_the_header(update, tmp_path):
    path = save_update(update, tmp_path / "u.safetensors")
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    meta = json.loads(header["__metadata__"]["gradleak"])
    assert meta["model"] == update.metadata.model and meta["kind"] == "gradient"


def test_update_for_another_model_is_refused(update, tiny_models, tmp_path):
    path = save_update(update, tmp_path / "u")
    with pytest.raises(
        InvalidUpdateError, match="does not fit model .*load the model the update was made for"
    ):
        load_update(path, model=tiny_models("llama").model)


def test_shape_mismatch_is_refused(update, tiny_models, tmp_path):
    name = "transformer.h.0.mlp.c_fc.weight"
    tensors = {**update.tensors, name: torch.zeros(3, 3)}
    path = save_update(update.with_tensors(tensors), tmp_path / "u")
    with pytest.raises(InvalidUpdateError, match=r"c_fc.weight has shape \(3, 3\)"):
        load_update(path, model=tiny_models("gpt2").model)


def test_truncated_file_is_refused(update, tmp_path):
    path = save_update(update, tmp_path / "u")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidUpdateError, match="truncated"):
        load_update(path)


def test_nan_is_refused(update, tmp_path):
    name = next(iter(update.tensors))
    bad = update.tensors[name].clone()
    bad.view(-1)[0] = float("nan")
    path = save_update(update.with_tensors({**update.tensors, name: bad}), tmp_path / "u")
    with pytest.raises(InvalidUpdateError, match="NaN or Inf"):
        load_update(path)


def test_file_without_gradleak_header_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(InvalidUpdateError, match="no gradleak header"):
        load_update(path)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidUpdateError, match="no update file"):
        load_update(tmp_path / "nope.safetensors")


def test_weight_delta_converts_to_gradient(update):
    delta = update.with_tensors(
        {k: -0.1 * v for k, v in update.tensors.items()},
        kind="weight_delta",
        learning_rate=0.1,
        local_steps=1,
    )
    name = next(iter(update.tensors))
    torch.testing.assert_close(delta.gradients()[name], update.tensors[name])
    assert isinstance(delta, ClientUpdate)
