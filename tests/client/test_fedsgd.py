"""A simulated FedSGD update is exactly the autograd gradient of the client's loss."""

from __future__ import annotations

import pytest
import torch

from gradleak.client import Exposure, compute_update, encode, task_loss
from gradleak.data import Batch
from gradleak.errors import UnknownSpecError

TEXTS = ("Call Maria at 555-0147 before noon.", "The rent is due on Friday.")


@pytest.mark.parametrize(
    "name,task", [("gpt2", "seq_class"), ("llama", "next_token"), ("bert", "seq_class")]
)
def test_update_equals_autograd(tiny_models, name, task):
    public = tiny_models(name, task)
    batch = Batch(texts=TEXTS, labels=(1, 0))
    update = compute_update(public, batch)
    params = dict(public.model.named_parameters())
    loss = task_loss(public, encode(public, batch.texts), batch.labels)
    expected = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    assert set(update.tensors) == set(params)
    for (name_, param), grad in zip(params.items(), expected, strict=True):
        want = grad if grad is not None else torch.zeros_like(param)
        torch.testing.assert_close(update.tensors[name_], want, rtol=1e-5, atol=1e-8, msg=name_)
    assert update.metadata.kind == "gradient" and update.metadata.batch_size is None


def test_right_padding_with_attention_mask(tiny_models):
    public = tiny_models("gpt2")
    inputs = encode(public, TEXTS)
    mask = inputs["attention_mask"]
    assert mask[:, 0].all() and not mask[:, -1].all()  # padding sits on the right
    assert (inputs["input_ids"][mask == 0] == public.tokenizer.eos_token_id).all()


def test_partial_exposure_shares_only_the_chosen_parameters(tiny_models):
    gpt2, llama = tiny_models("gpt2"), tiny_models("llama")
    batch = Batch(texts=TEXTS, labels=(1, 0))
    update = compute_update(gpt2, batch, exposure=Exposure.parse("blocks=1 roles=q"))
    assert set(update.tensors) == {
        "transformer.h.1.attn.c_attn.weight",
        "transformer.h.1.attn.c_attn.bias",
    }
    update = compute_update(llama, batch, exposure=Exposure(blocks=(-1,), roles=("mlp_out",)))
    assert set(update.tensors) == {"model.layers.3.mlp.down_proj.weight"}
    assert update.metadata.exposure == "blocks=-1 roles=mlp_out"
    full = compute_update(llama, batch)
    torch.testing.assert_close(
        update.tensors["model.layers.3.mlp.down_proj.weight"],
        full.tensors["model.layers.3.mlp.down_proj.weight"],
    )


def test_exposure_errors():
    with pytest.raises(UnknownSpecError, match="unknown role"):
        Exposure.parse("roles=query")
    with pytest.raises(UnknownSpecError, match="cannot read exposure"):
        Exposure.parse("layers=1")


def test_exposure_out_of_range(tiny_models):
    with pytest.raises(UnknownSpecError, match="out of range"):
        Exposure(blocks=(9,)).select(tiny_models("gpt2").family)


def test_train_mode_turns_dropout_on_and_restores_eval(tiny_models):
    public = tiny_models("bert")
    batch = Batch(texts=TEXTS, labels=(1, 0))
    a = compute_update(public, batch, train_mode=True)
    assert not public.model.training
    b = compute_update(public, batch)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(a.tensors[name], b.tensors[name])
    assert a.metadata.train_mode


def test_exposure_blocks_must_be_integers():
    with pytest.raises(UnknownSpecError, match="blocks must be integers"):
        Exposure.parse("blocks=x")
