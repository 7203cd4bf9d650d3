"""The two real bundled models load offline and their families compute the real layer inputs."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_rows_close, hooked_inputs, probed_layers

from gradleak.models import LinearInputProbe, load_model


@pytest.fixture(scope="module", params=["minilm", "smollm2-135m"])
def bundled(request):
    return load_model(request.param)


def test_bundled_model_shapes(bundled):
    d = {"minilm": 384, "smollm2-135m": 576}[bundled.spec]
    assert bundled.family.hidden_size() == d
    assert bundled.model.dtype == torch.float32


def test_bundled_inputs_match_forward_hooks(bundled):
    layers = probed_layers(bundled.family)
    batch = bundled.tokenizer(
        ["The quick brown fox jumps over the lazy dog.", "Call me at 555-0199."],
        padding=True,
        return_tensors="pt",
    )
    expected = hooked_inputs(bundled.model, layers, **batch)
    got = LinearInputProbe(bundled.family, layers)(
        batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    valid = batch["attention_mask"].bool()
    for layer in layers:
        assert_rows_close(got[layer][valid], expected[layer][valid], msg=layer.key)


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m", task="next_token")


def test_smollm2_incremental_inputs_match(smollm2):
    bundled = smollm2
    layers = probed_layers(bundled.family)
    ids = bundled.tokenizer(["Meet Anna at the station at noon"], return_tensors="pt")["input_ids"]
    expected = hooked_inputs(bundled.model, layers, input_ids=ids)
    probe = LinearInputProbe(bundled.family, layers)
    _, state = probe.start(ids[:, :2])
    for t in range(2, ids.shape[1]):
        rows, state = probe.extend(state, ids[:, t])
        for layer in layers:
            assert_rows_close(rows[layer], expected[layer][:, t], msg=f"{layer.key} at {t}")


def test_gguf_cache_reloads_identical_weights(smollm2):
    again = load_model("smollm2-135m", task="next_token")
    for (name, a), (_, b) in zip(
        smollm2.model.named_parameters(), again.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
