"""What a reader sees first and what they need: the headline, settings, spreads, plots, causes."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET

from gradleak.report import csv_text, headline, load_runs, markdown_table, render_html

NS = "{http://www.w3.org/2000/svg}"


def _pair(text, exact, certified, index=0):
    return {
        "reference": text,
        "reconstruction": text if exact else "something else",
        "reconstruction_index": index,
        "rouge1": 100.0 if exact else 20.0,
        "exact": exact,
        "certified": certified,
    }


def _run(folder, *, batch_size=4, sigma=None, batches=1, records=None, changed=True):
    folder.mkdir(parents=True)
    config = {
        "model": "tiny",
        "dataset": "cola",
        "batch_size": batch_size,
        "batches": batches,
        "attack": "dager",
        "client": {"defence": ["noise"] if sigma else [], "sigma": sigma or 1e-4},
    }
    summary = {
        "config": config,
        "batches": batches,
        "batches_planned": batches,
        "complete": True,
        "rouge1": 87.654321,
        "rouge1_stderr": 0.0 if batches == 1 else 1.23456,
        "rouge2": 50.0,
        "rouge2_stderr": 0.0,
        "exact_rate": 0.333333333,
        "exact_rate_stderr": 0.0,
        "seconds_per_batch": 1.23456789,
    }
    if changed:
        summary["settings_changed"] = {"batch_size": batch_size} | (
            {"client.defence": ["noise"], "client.sigma": sigma} if sigma else {}
        )
    (folder / "summary.json").write_text(json.dumps(summary))
    lines = records or [{"batch": 0, "pairs": [], "reconstructions": []}]
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_the_headline_says_what_leaked_first(tmp_path):
    records = [
        {"batch": 0, "pairs": [_pair("my pin is 4821", False, False)], "reconstructions": [{}]},
        {"batch": 1, "pairs": [_pair("call anna at 555-0142", True, True)], "reconstructions": []},
    ]
    runs = load_runs([_run(tmp_path / "run", records=records)])
    assert headline(runs) == (
        "Leaked: 1 of 2 private texts recovered word for word (50 %), 1 of them certified; "
        "first: \u201ccall anna at 555-0142\u201d."
    )
    assert headline(runs) in render_html(runs)


def test_one_batch_says_n_1_and_csv_numbers_are_rounded(tmp_path):
    runs = load_runs([_run(tmp_path / "run")])
    assert "| 87.7 (n = 1) |" in markdown_table(runs) and "± 0.0" not in markdown_table(runs)
    (row,) = csv.DictReader(io.StringIO(csv_text(runs)))
    assert (row["rouge1"], row["exact_rate"], row["seconds_per_batch"]) == (
        "87.65",
        "0.3333",
        "1.235",
    )


def test_settings_are_a_table_of_what_differs_from_the_defaults(tmp_path):
    runs = load_runs([_run(tmp_path / "run", sigma=1e-5)])
    root = ET.fromstring(render_html(runs).removeprefix("<!DOCTYPE html>\n"))
    rows = [
        (tr.find("th").text, tr.find("td").text)
        for tr in root.find(".//table[@class='settings']").iter("tr")
    ]
    assert rows == [
        ("model", "tiny"),
        ("dataset", "cola"),
        ("batch_size", "4"),
        ("client.defence", "noise"),
        ("client.sigma", "1e-05"),
    ]
    assert "{" not in "".join(root.find(".//table[@class='settings']").itertext())


def test_older_summaries_show_their_set_values_as_a_table(tmp_path):
    runs = load_runs([_run(tmp_path / "run", changed=False)])
    root = ET.fromstring(render_html(runs).removeprefix("<!DOCTYPE html>\n"))
    keys = [tr.find("th").text for tr in root.find(".//table[@class='settings']").iter("tr")]
    assert keys[:2] == ["model", "dataset"] and "client.sigma" in keys


def test_plots_only_for_series_of_two_or_more_points_with_legends_in_full(tmp_path):
    long_label_runs = [
        _run(tmp_path / "sweep" / f"s{sigma}-b{b}", batch_size=b, sigma=sigma, batches=2)
        for sigma in (1e-5, 5e-5)
        for b in (1, 4)
    ]
    lone = _run(tmp_path / "sweep" / "lone", batch_size=8, sigma=3e-5, batches=2)
    runs = load_runs([*long_label_runs, lone])
    root = ET.fromstring(render_html(runs).removeprefix("<!DOCTYPE html>\n"))
    svgs = root.findall(f".//{NS}svg")
    assert len(svgs) == 3  # the lone run's single point makes no line
    legends = [t.text for t in svgs[0].iter(f"{NS}text") if t.get("class") == "legend"]
    assert legends == ["client.sigma=1e-05", "client.sigma=5e-05"]
    assert all(int(svg.get("height")) >= 320 + 18 * 2 for svg in svgs)
    single = render_html(load_runs([lone]))
    assert "<svg" not in single and "<h2>Plots</h2>" not in single


def test_causes_are_shown_where_the_reason_was_and_the_reason_otherwise(tmp_path):
    causes = [{"cause": "span_saturated", "message": "Block 1's span is saturated.", "block": 1}]
    records = [
        {
            "batch": 0,
            "reason": "old sentence",
            "causes": causes,
            "pairs": [_pair("a b", False, False)],
            "reconstructions": [
                {
                    "text": "x",
                    "certified": False,
                    "causes": [{"cause": "token_inferred", "message": "Token 3 was inferred."}],
                }
            ],
        },
        {"batch": 1, "reason": "only a reason", "pairs": [], "reconstructions": []},
    ]
    page = render_html(load_runs([_run(tmp_path / "run", records=records)]))
    assert "Block 1&#x27;s span is saturated." in page and "old sentence" not in page
    assert "Token 3 was inferred." in page and "only a reason" in page
