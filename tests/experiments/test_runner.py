"""The runner: records per batch, summary, resume after an interruption, and the trust boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gradleak.experiments.runner as runner_module
from gradleak.experiments import build_config, read_records, read_summary, run_experiment
from gradleak.experiments.rundir import RECORDS_FILE
from gradleak.models import PublicModel
from gradleak.update import ClientUpdate

BERT = "random:bert?num_hidden_layers=2&hidden_size=32&intermediate_size=64&num_attention_heads=2"


GPT2 = "random:gpt2?n_layer=3&n_embd=64&n_head=2&n_positions=64"


def _config(data: Path, **changes):
    return build_config(
        {
            "model": GPT2,
            "dataset": str(data),
            "attack": "spy",
            "batch_size": 2,
            "batches": 3,
            **changes,
        }
    )


def _without_times(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_the_attack_is_given_the_public_model_and_the_update_only(spy_attack, tiny_texts, tmp_path):
    run_experiment(_config(tiny_texts, batches=1), tmp_path)
    ((args, kwargs),) = spy_attack.calls
    assert kwargs == {} and [type(a) for a in args] == [PublicModel, ClientUpdate]
    # And in the code: the only reconstruct call passes exactly (public, update).
    tree = ast.parse(Path(runner_module.__file__).read_text())
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "reconstruct"
    ]
    assert [[ast.unparse(a) for a in c.args] for c in calls] == [["public", "update"]]
    assert all(not c.keywords for c in calls)


def test_records_and_summary(spy_attack, tiny_texts, texts, tmp_path):
    summary = run_experiment(_config(tiny_texts), tmp_path)
    records = read_records(tmp_path)
    assert [r["batch"] for r in records] == [0, 1, 2]
    assert sorted(t for r in records for t in r["references"]) == sorted(
        texts
    )  # 3 x 2 distinct texts
    first = records[0]
    assert first["reconstructions"][0]["text"] == "Call Anna at 555-0142." and first[
        "certified"
    ] == [True]
    assert set(first["metrics"]) == {
        "rouge1",
        "rouge2",
        "rougeL",
        "exact_rate",
        "token_accuracy",
        "certified_rate",
    }
    assert len(first["pairs"]) == 2 and first["diagnostics"] == {"rank": 3}
    assert set(first["seconds"]) == {"update", "attack", "score", "total", "attack_stages"}
    # The spy's one text is exact in the batch holding it, half of that batch's references.
    assert [r["metrics"]["exact_rate"] for r in records].count(0.5) == 1
    assert summary == read_summary(tmp_path)
    assert (
        summary["batches"] == 3
        and summary["complete"]
        and summary["exact_rate"] == pytest.approx(1 / 6)
    )
    rouge1 = [r["metrics"]["rouge1"] for r in records]
    assert summary["rouge1"] == pytest.approx(sum(rouge1) / 3)
    assert summary["certified_rate"] == pytest.approx(1 / 2)  # one certified guess per batch of two
    for key in (
        "rouge2",
        "rougeL",
        "rouge1_stderr",
        "rouge2_stderr",
        "rougeL_stderr",
        "seconds_per_batch",
    ):
        assert isinstance(summary[key], float)
    assert summary["versions"]["torch"] and summary["hardware"]["cpu_count"] >= 1
    assert summary["config"]["sampler"] == "random"  # auto, resolved for a local file


def test_interrupted_run_resumes_to_the_same_results(spy_attack, tiny_texts, tmp_path):
    full = run_experiment(_config(tiny_texts), tmp_path / "full")

    def crash_at_second_batch(event):
        if event.kind == "batch_started" and event.done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(_config(tiny_texts), tmp_path / "cut", on_event=crash_at_second_batch)
    with (tmp_path / "cut" / RECORDS_FILE).open("a") as handle:
        handle.write('{"batch": 1, "conf')  # and a record cut short by the crash
    assert read_summary(tmp_path / "cut")["batches"] == 1
    spy_attack.calls.clear()
    resumed = run_experiment(_config(tiny_texts), tmp_path / "cut")
    assert len(spy_attack.calls) == 2  # only the unfinished batches ran again
    assert _without_times(read_records(tmp_path / "cut")) == _without_times(
        read_records(tmp_path / "full")
    )
    timeless = {"seconds_per_batch", "attack_seconds_per_batch", "updated_at"}
    assert {k: v for k, v in resumed.items() if k not in timeless} == {
        k: v for k, v in full.items() if k not in timeless
    }
    assert (
        run_experiment(_config(tiny_texts), tmp_path / "cut")["batches"] == 3
    )  # finished: nothing to do
    assert len(spy_attack.calls) == 2


def test_uncased_references_are_scored_as_the_tokenizer_round_trip(
    spy_attack, tiny_texts, tmp_path
):
    config = _config(tiny_texts, model=BERT, batch_size=6, batches=1, sampler="lamp")
    run_experiment(config, tmp_path)
    record = read_records(tmp_path)
    (pair,) = [p for p in record[0]["pairs"] if p["exact"]]
    assert (
        pair["reference"].strip() == "call anna at 555 - 0142."
    )  # [CLS]/[SEP] stripped, lower-cased
    assert record[0]["references"][record[0]["pairs"].index(pair)] == "Call Anna at 555-0142."


def test_records_and_summary_name_the_family_the_search_and_the_causes(tiny_texts, tmp_path):
    summary = run_experiment(_config(tiny_texts, attack="dager", batches=1), tmp_path)
    (record,) = read_records(tmp_path)
    assert record["family"] == "gpt2" and record["search"] == "prefix"
    assert summary["families"] == {"gpt2": 1} and summary["searches"] == {"prefix": 1}
    for reconstruction in record["reconstructions"]:
        assert reconstruction["certified"] == (not reconstruction["causes"])
    assert set(summary["causes"]) == {c["cause"] for c in record["causes"]}
    assert all(c["message"] for c in record["causes"])


def test_a_seq2seq_record_scores_the_targets_beside_the_sources(tiny_texts, tmp_path):
    bart = (
        "random:bart?encoder_layers=2&decoder_layers=2&d_model=64&encoder_ffn_dim=96"
        "&decoder_ffn_dim=96&encoder_attention_heads=4&decoder_attention_heads=4"
    )
    config = _config(tiny_texts, model=bart, task="seq2seq", attack="dager", batches=1)
    run_experiment(config, tmp_path)
    (record,) = read_records(tmp_path)
    targets = record["targets"]
    assert targets["references"] == record["references"]  # each text is its own target
    assert targets["metrics"]["exact_rate"] == 1.0 and targets["metrics"]["certified_rate"] == 1.0
    assert targets["family"] == "bart-decoder" and targets["search"] == "prefix"
