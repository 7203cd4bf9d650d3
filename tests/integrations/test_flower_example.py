"""The Flower example runs end to end, in process, and its audit recovers the clients' texts."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the flower extra is not installed")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flower" / "run_in_process.py"


def test_the_example_federation_is_audited(tmp_path, capsys):
    example = runpy.run_path(str(EXAMPLE), run_name="example")
    out = tmp_path / "audit"
    code = example["main"](
        [
            "--model",
            "random:gpt2?n_layer=3&n_embd=128&n_head=2",
            "--clients",
            "2",
            "--rounds",
            "1",
            "--batch-size",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    records = [
        json.loads(line) for line in (out / "round-001" / "records.jsonl").read_text().splitlines()
    ]
    assert len(records) == 2
    for r in records:
        assert r["metrics"]["exact_rate"] == 1.0 and all(r["certified"]), (
            r["reconstructions"][:3],
            r["reason"],
            r["references"],
        )
    assert "[certified]" in capsys.readouterr().out
