"""The report: tables, CSV and an HTML page that parses, built only from summary and records."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from gradleak.report import csv_text, load_runs, markdown_table, render_html, word_diff

NS = "{http://www.w3.org/2000/svg}"


def _pair(ref, rec, index, exact, certified=True):
    return {
        "reference": ref,
        "reconstruction": rec,
        "reconstruction_index": index,
        "rouge1": 100.0 if exact else 50.0,
        "rouge2": 0.0,
        "rougeL": 50.0,
        "exact": exact,
        "token_accuracy": 1.0,
        "certified": certified,
    }


def _write_run(folder, *, dataset, batch_size, rouge1, partial_line=False):
    folder.mkdir(parents=True)
    config = {
        "model": "tiny",
        "dataset": dataset,
        "batch_size": batch_size,
        "batches": 2,
        "attack": "dager",
        "task": "seq_class",
        "seed": 101,
    }
    summary = {
        "config": config,
        "batches": 2,
        "batches_planned": 2,
        "complete": True,
        "rouge1": rouge1,
        "rouge1_stderr": 1.5,
        "rouge2": 80.0,
        "rouge2_stderr": 0.0,
        "rougeL": 90.0,
        "rougeL_stderr": 0.0,
        "exact_rate": 0.5,
        "exact_rate_stderr": 0.25,
        "certified_rate": 1.0,
        "certified_rate_stderr": 0.0,
        "seconds_per_batch": 2.5 * batch_size,
        "versions": {"gradleak": "0.1.0"},
        "hardware": {"cpu": "Test CPU", "device": "cpu"},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    records = [
        {
            "batch": 0,
            "references": ["Call Anna <now>", "PIN 4821"],
            "metrics": {"rouge1": 75.0, "rouge2": 50.0, "exact_rate": 0.5},
            "seconds": {"total": 1.0},
            "reason": None,
            "reconstructions": [
                {"text": "Call Bob <now>", "certified": False},
                {"text": "PIN 4821", "certified": True},
                {"text": "spare guess", "certified": False},
            ],
            "pairs": [
                _pair("Call Anna <now>", "Call Bob <now>", 0, False, False),
                _pair("PIN 4821", "PIN 4821", 1, True),
            ],
        },
        {
            "batch": 1,
            "references": ["lost"],
            "metrics": {"rouge1": 0.0, "rouge2": 0.0, "exact_rate": 0.0},
            "seconds": {"total": 2.0},
            "reason": "block 1's gradient span is saturated & best-effort",
            "reconstructions": [],
            "pairs": [_pair("lost", "", None, False, False)],
        },
    ]
    text = "".join(json.dumps(r) + "\n" for r in records) + (
        '{"batch": 2, "refer' if partial_line else ""
    )
    (folder / "records.jsonl").write_text(text)


@pytest.fixture
def sweep(tmp_path):
    for dataset, rouge in (("cola", 100.0), ("sst2", 95.0)):
        for b in (1, 4):
            _write_run(
                tmp_path / "sweep" / f"{dataset}-b{b}",
                dataset=dataset,
                batch_size=b,
                rouge1=rouge - b,
                partial_line=b == 4,
            )
    return tmp_path / "sweep"


def test_tables_and_csv(sweep):
    runs = load_runs([sweep])
    assert [r.name for r in runs] == ["cola-b1", "cola-b4", "sst2-b1", "sst2-b4"]
    assert all(len(r.records) == 2 for r in runs)  # the half-written third line is skipped
    table = markdown_table(runs)
    assert (
        "| cola-b1 | tiny | cola | 1 | 2 | 99.0 ± 3.0 | 80.0 ± 0.0 | 90.0 ± 0.0 | 50.0 ± 50.0 "
        "| 100.0 ± 0.0 | 2.50 |" in table
    )
    rows = list(csv.DictReader(io.StringIO(csv_text(runs))))
    assert len(rows) == 4 and rows[3]["dataset"] == "sst2" and float(rows[3]["rouge1"]) == 91.0
    assert rows[0]["rouge1_stderr"] == "1.5" and rows[0]["cpu"] == "Test CPU"


def test_html_parses_and_holds_the_table_texts_and_plots(sweep):
    page = render_html(load_runs([sweep]), title="Test <report>")
    root = ET.fromstring(page.removeprefix("<!DOCTYPE html>\n"))  # well-formed XML as well as HTML
    assert root.find("head/title").text == "Test <report>"
    summary = root.find(".//table[@class='summary']")
    cells = [["".join(td.itertext()) for td in tr.findall("td")] for tr in summary.find("tbody")]
    assert cells[0][:6] == ["cola-b1", "tiny", "cola", "1", "2", "99.0 ± 3.0"]
    svgs = root.findall(f".//{NS}svg")
    assert len(svgs) == 3 and {"cola", "sst2"} <= {t.text for t in svgs[0].iter(f"{NS}text")}
    assert len(svgs[0].findall(f".//{NS}circle")) == 4  # two series of two batch sizes
    batch = root.find(".//table[@class='batch']")
    first = ["".join(td.itertext()) for td in batch.find("tbody")[0]]
    assert first[1:3] == ["Call Anna <now>", "Call Bob <now>"]
    assert [s.text for s in batch.iter("span") if s.get("class") == "miss"][0] == "Anna"
    assert "spare guess" in "".join(batch.itertext()) and "(nothing recovered)" in page
    assert (
        "saturated &amp; best-effort" in page
        and "<script" not in page
        and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    )


def test_word_diff_marks_only_the_differences():
    ref, rec = word_diff("the cat sat", "the dog sat down")
    assert ref == 'the <span class="miss">cat</span> sat'
    assert rec == 'the <span class="extra">dog</span> sat <span class="extra">down</span>'
    assert word_diff("a < b", "a < b") == ("a &lt; b", "a &lt; b")


def test_missing_runs_are_clear_errors(tmp_path):
    from gradleak.errors import GradleakError

    with pytest.raises(GradleakError, match="holds no summary.json"):
        load_runs([tmp_path])
    with pytest.raises(GradleakError, match="is not a directory"):
        load_runs([tmp_path / "nope"])


def test_report_imports_no_torch():
    code = "import sys, gradleak.report, gradleak.cli.report; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
