"""One self-contained HTML file: the summary table, plots, and every batch's texts side by side.

The page has no scripts, fonts or images to fetch: styles are inline and plots are inline SVG.
It is also well-formed XML, so tests (and other tools) can parse it.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from gradleak.report.headline import headline
from gradleak.report.load import RunResult
from gradleak.report.plots import Point, line_plot
from gradleak.report.settings import flat_config, settings_rows
from gradleak.report.tables import table_rows

__all__ = ["render_html", "series_label", "word_diff", "write_html"]

#: Config keys that never name a series: the x axis, and run sizes.
_NOT_SERIES = {"batch_size", "batches"}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta{color:#666}
table{border-collapse:collapse;margin:.6em 0} th,td{border:1px solid #ccc;padding:.25em .5em;
vertical-align:top} th{background:#f3f3f3;text-align:left}
td.num{text-align:right;white-space:nowrap}
table.batch td.text{max-width:34em;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
.miss{background:#fdd;text-decoration:underline wavy #c00} .extra{background:#ffe8b0}
.yes{color:#176b1b;font-weight:600} .no{color:#a00} .guess{color:#a66000}
details{margin:.4em 0 1em} summary{cursor:pointer;font-weight:600}
svg.plot{border:1px solid #ddd;margin:.3em .6em .3em 0;background:#fff;font-size:11px}
svg .frame{fill:none;stroke:#999} svg .grid{stroke:#eee} svg .tick{stroke:#999}
svg .title{font-size:13px;font-weight:600} .plots{display:flex;flex-wrap:wrap}
code{background:#f5f5f5;padding:0 .2em} p.headline{font-size:1.15em;font-weight:600}
table.settings td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
.causes{display:block;font-size:.85em;color:#a66000;font-weight:normal}
"""


def write_html(
    runs: Sequence[RunResult], path: str | Path, *, title: str = "gradleak report"
) -> Path:
    """Writes the report of ``runs`` to ``path`` and returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(runs, title=title), encoding="utf-8")
    return path


def render_html(runs: Sequence[RunResult], *, title: str = "gradleak report") -> str:
    """Returns the report of ``runs`` as one self-contained HTML page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/>',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="headline">{escape(headline(runs))}</p>',
        f'<p class="meta">{len(runs)} run(s), generated {escape(time.strftime("%Y-%m-%d %H:%M"))}. '
        "ROUGE F-measures in percent, mean ± 2 standard errors over batches; exact and certified "
        "rates are the share of references recovered exactly and matched to a certified "
        'reconstruction. Highlighted words: <span class="miss">missed</span> in a reference, '
        '<span class="extra">wrong</span> in a reconstruction.</p>',
        "<h2>Summary</h2>",
        _summary_table(runs),
        _plots(runs),
        "<h2>Runs</h2>",
        *(_run_section(i, run) for i, run in enumerate(runs)),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary_table(runs: Sequence[RunResult]) -> str:
    headers, rows = table_rows(runs)
    out = [
        '<table class="summary"><thead><tr>',
        *(f"<th>{escape(h)}</th>" for h in headers),
        "</tr></thead><tbody>",
    ]
    for i, row in enumerate(rows):
        cells = [f'<td><a href="#run-{i}">{escape(row[0])}</a></td>']
        cells += [f"<td>{escape(c)}</td>" for c in row[1:3]]
        cells += [f'<td class="num">{escape(c)}</td>' for c in row[3:]]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def series_label(config: Mapping[str, Any], varying: Sequence[str]) -> str:
    """Returns the label of the series a run belongs to: its values of the varying config keys."""
    keys = [k for k in varying if k not in _NOT_SERIES] or ["model", "dataset"]
    return " · ".join(
        f"{config.get(k)}" if k in ("model", "dataset") else f"{k}={config.get(k)}" for k in keys
    )


def _plots(runs: Sequence[RunResult]) -> str:
    """Returns the plots section: only series with two or more points make a line worth drawing."""
    done = [r for r in runs if r.summary.get("batches")]
    if not done:
        return ""
    configs = [flat_config(r.config) for r in done]
    keys = dict.fromkeys(k for c in configs for k in c)
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    rouge1: dict[str, list[Point]] = {}
    rouge2: dict[str, list[Point]] = {}
    seconds: dict[str, list[Point]] = {}
    for run, config in zip(done, configs, strict=True):
        label, s, b = series_label(config, varying), run.summary, config.get("batch_size")
        rouge1.setdefault(label, []).append((b, s.get("rouge1"), 2 * (s.get("rouge1_stderr") or 0)))
        rouge2.setdefault(label, []).append((b, s.get("rouge2"), 2 * (s.get("rouge2_stderr") or 0)))
        seconds.setdefault(label, []).append((b, s.get("seconds_per_batch"), None))
    specs = (
        (rouge1, "ROUGE-1 against batch size", "ROUGE-1 F (%)", {"y_range": (0, 100)}),
        (rouge2, "ROUGE-2 against batch size", "ROUGE-2 F (%)", {"y_range": (0, 100)}),
        (seconds, "Time per batch", "seconds per batch (median)", {"log_y": True}),
    )
    plots = [
        line_plot(_lines(series), title=title, x_label="batch size B", y_label=y, **options)
        for series, title, y, options in specs
        if _lines(series)
    ]
    return "".join(['<h2>Plots</h2><div class="plots">', *plots, "</div>"]) if plots else ""


def _lines(series: Mapping[str, list[Point]]) -> dict[str, list[Point]]:
    """Returns the series with at least two distinct x values that have a y value."""
    return {
        label: points
        for label, points in series.items()
        if len({x for x, y, _ in points if x is not None and y is not None}) >= 2
    }


def _run_section(index: int, run: RunResult) -> str:
    s = run.summary
    versions = ", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items() if v)
    hardware = s.get("hardware", {})
    machine = ", ".join(str(hardware[k]) for k in ("gpu", "cpu", "device") if hardware.get(k))
    status = (
        "complete"
        if s.get("complete")
        else f"incomplete: {s.get('batches')} of {s.get('batches_planned')}"
    )
    parts = [
        f'<section id="run-{index}"><h3>{escape(run.name)}</h3>',
        f'<p class="meta">{escape(str(run.path))} ({escape(status)})<br/>'
        f"versions: {escape(versions)}<br/>hardware: {escape(machine)}</p>",
        _settings_table(run),
        f"<details><summary>{len(run.records)} batch(es): "
        "references beside reconstructions</summary>",
        *(_batch_table(record) for record in run.records),
        "</details></section>",
    ]
    return "\n".join(parts)


def _settings_table(run: RunResult) -> str:
    rows = "".join(
        f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>"
        for key, value in settings_rows(run)
    )
    return (
        '<table class="settings"><caption>settings (those not listed are the defaults)</caption>'
        f"<tbody>{rows}</tbody></table>"
    )


def cause_messages(item: Mapping[str, Any]) -> list[str]:
    """Returns the messages of a record's (or reconstruction's) causes, else its ``reason``."""
    causes = item.get("causes") or []
    messages = [str(c["message"]) for c in causes if isinstance(c, Mapping) and c.get("message")]
    if messages:
        return messages
    return [str(item["reason"])] if item.get("reason") else []


def _batch_table(record: Mapping[str, Any]) -> str:
    metrics = record.get("metrics", {})
    seconds = record.get("seconds", {}).get("total")
    head = (
        f"<p>batch {record.get('batch')}: ROUGE-1 {metrics.get('rouge1', 0):.1f}, "
        f"ROUGE-2 {metrics.get('rouge2', 0):.1f}, exact {100 * metrics.get('exact_rate', 0):.0f} %"
        + (f", {seconds:.2f} s" if isinstance(seconds, (int, float)) else "")
        + "</p>"
    )
    batch_causes = cause_messages(record)
    head += "".join(f'<p class="guess">{escape(message)}</p>' for message in batch_causes)
    reconstructions = record.get("reconstructions", [])
    rows = [
        '<table class="batch"><thead><tr><th>#</th><th>reference</th><th>reconstruction</th>'
        "<th>ROUGE-1</th><th>exact</th><th>certified</th></tr></thead><tbody>"
    ]
    for i, pair in enumerate(record.get("pairs", [])):
        matched = pair.get("reconstruction_index") is not None
        ref_html, rec_html = word_diff(pair.get("reference", ""), pair.get("reconstruction", ""))
        if not matched:
            rec_html = '<span class="no">(nothing recovered)</span>'
        exact = (
            '<span class="yes">yes</span>' if pair.get("exact") else '<span class="no">no</span>'
        )
        certified = (
            '<span class="yes">certified</span>'
            if pair.get("certified")
            else '<span class="guess">best-effort</span>'
            if matched
            else "-"
        )
        if matched and not pair.get("certified"):
            index = pair["reconstruction_index"]
            own = reconstructions[index] if index < len(reconstructions) else {}
            certified += _own_causes(own, batch_causes)
        rows.append(
            f'<tr><td class="num">{i}</td><td class="text">{ref_html}</td>'
            f'<td class="text">{rec_html}</td><td class="num">{pair.get("rouge1", 0):.1f}</td>'
            f"<td>{exact}</td><td>{certified}</td></tr>"
        )
    used = {p.get("reconstruction_index") for p in record.get("pairs", [])}
    extra = [r for j, r in enumerate(reconstructions) if j not in used]
    for rec in extra:
        verdict = "certified" if rec.get("certified") else "best-effort"
        if not rec.get("certified"):
            verdict += _own_causes(rec, batch_causes)
        rows.append(
            f'<tr><td class="num">+</td><td class="text">(no reference)</td>'
            f'<td class="text"><span class="extra">{escape(rec.get("text", ""))}</span></td>'
            f'<td class="num">-</td><td>-</td><td>{verdict}</td></tr>'
        )
    rows.append("</tbody></table>")
    return head + "".join(rows)


def _own_causes(reconstruction: Mapping[str, Any], shown: Sequence[str]) -> str:
    """Returns a reconstruction's cause messages as HTML, unless the batch's already say them."""
    own = [m for m in cause_messages(reconstruction) if m not in shown]
    return "".join(f'<span class="causes">{escape(message)}</span>' for message in own)


def word_diff(reference: str, reconstruction: str) -> tuple[str, str]:
    """Returns both texts as escaped HTML with the words that differ wrapped in highlight spans.

    Words of the reference missing from the reconstruction get ``class="miss"``; words of the
    reconstruction that are not in the reference get ``class="extra"`` (difflib alignment).
    """
    ref, rec = reference.split(), reconstruction.split()
    ref_out, rec_out = [], []
    matcher = difflib.SequenceMatcher(a=ref, b=rec, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        ref_words, rec_words = " ".join(ref[i1:i2]), " ".join(rec[j1:j2])
        if op == "equal":
            ref_out.append(escape(ref_words))
            rec_out.append(escape(rec_words))
            continue
        if ref_words:
            ref_out.append(f'<span class="miss">{escape(ref_words)}</span>')
        if rec_words:
            rec_out.append(f'<span class="extra">{escape(rec_words)}</span>')
    return " ".join(ref_out), " ".join(rec_out)
