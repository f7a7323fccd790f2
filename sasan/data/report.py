"""Self-contained HTML rendering of a validation report (no scripts, no external files)."""

from __future__ import annotations

import html
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
.pass{color:#1a7f37}.error{color:#c62828;font-weight:bold}.warning{color:#b26a00}
.banner{padding:.6em 1em;border-radius:4px;display:inline-block;font-size:18px}
.ok{background:#e6f4ea}.bad{background:#fdecea}
"""

_TABLE_COLUMNS = ("case_id", "domain", "split", "image", "label", "shape", "spacing", "orientation", "dtype",
                  "finite", "p01", "p50", "p99", "label_values", "shape_match", "affine_match", "sha256_ok",
                  "error")


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML page: verdict, counts, every check, failures, volume table."""
    ok = report["success"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Data validation</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Data validation: {_e(report['raw_dir'])}</h1>",
        f"<p class='banner {'ok' if ok else 'bad'}'>{'PASSED' if ok else 'FAILED'}: "
        f"{report['n_cases']} case(s), {report['n_errors']} failed error check(s), "
        f"{report['n_warnings']} failed warning check(s)</p>",
        "<h2>Cases per domain and split</h2>", _counts_table(report["counts"], report.get("labelled_counts")),
        "<h2>Checks</h2>", _checks_table(report["checks"]),
        "<h2>Failures</h2>", _failures_table(report["checks"]),
        "<h2>Volumes</h2>", _volume_table(report["table"]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def _row(cells: list[Any], header: bool = False, cls: str = "") -> str:
    tag = "th" if header else "td"
    attr = f" class='{cls}'" if cls else ""
    return f"<tr{attr}>" + "".join(f"<{tag}>{_e(c)}</{tag}>" for c in cells) + "</tr>"


def _counts_table(counts: dict[str, dict[str, int]], labelled: dict[str, dict[str, int]] | None = None) -> str:
    if labelled is None:
        rows = [_row(["domain", "train", "test"], header=True)]
        rows += [_row([d, c.get("train", 0), c.get("test", 0)]) for d, c in counts.items()]
        return "<table>" + "".join(rows) + "</table>"
    rows = [_row(["domain", "train", "labelled", "test", "labelled"], header=True)]
    rows += [_row([d, c.get("train", 0), labelled.get(d, {}).get("train", 0), c.get("test", 0),
                   labelled.get(d, {}).get("test", 0)]) for d, c in counts.items()]
    return "<table>" + "".join(rows) + "</table>"


def _checks_table(checks: list[dict[str, Any]]) -> str:
    rows = [_row(["result", "severity", "check", "source", "expectation", "column(s)", "failures"], header=True)]
    for c in checks:
        status = "pass" if c["success"] else c["severity"]
        rows.append(_row(["pass" if c["success"] else "FAIL", c["severity"], c["check"], c["source"],
                          c["expectation"] or "", ", ".join(c["column"] or []), len(c["failures"])], cls=status))
    return "<table>" + "".join(rows) + "</table>"


def _failures_table(checks: list[dict[str, Any]]) -> str:
    rows = [_row(["severity", "check", "file", "case", "reason"], header=True)]
    for c in checks:
        for f in c["failures"]:
            rows.append(_row([c["severity"], c["check"], f["file"], f["case_id"], f["reason"]], cls=c["severity"]))
    if len(rows) == 1:
        return "<p class='pass'>none</p>"
    return "<table>" + "".join(rows) + "</table>"


def _volume_table(records: list[dict[str, Any]]) -> str:
    rows = [_row(list(_TABLE_COLUMNS), header=True)]
    rows += [_row([r.get(k) for k in _TABLE_COLUMNS], cls="error" if r.get("error") else "") for r in records]
    return "<table>" + "".join(rows) + "</table>"
