"""An evaluation's report: the terminal table, and the files under ``out``.

Files (each written under a temporary name and renamed when complete, :mod:`videogen.io.atomic`):

* ``videos.csv``: one row per video, the columns of :class:`~videogen.eval.scoring.VideoRow`;
  flags are 1/0 (a column's mean is its rate), an undefined figure (NaN) is an empty cell;
* ``report.json``: ``{"job", "seconds", "suites", "overall", "rows"}``, summaries as in
  :class:`~videogen.eval.scoring.SuiteSummary`, undefined figures as ``null``;
* ``eval.yaml``: the resolved evaluation, which ``videogen eval`` runs again as it is;
* ``sheets/<suite>.png``: one row per video of the suite, in the CSV's order, every
  ``sheet.every``-th frame (:func:`videogen.io.contact_sheet.contact_sheet`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from videogen.eval.scoring import SuiteSummary, VideoRow
from videogen.io.atomic import write_text_atomic
from videogen.io.contact_sheet import contact_sheet, write_png

if TYPE_CHECKING:
    from videogen.eval.runner import EvalReport

TABLE = (
    ("suite", "suite", "s"),
    ("videos", "videos", "d"),
    ("ok%", "ok", ".0f"),
    ("colour%", "colour", ".0f"),
    ("shape%", "shape", ".0f"),
    ("count%", "count", ".0f"),
    ("dir%", "direction", ".0f"),
    ("near%", "direction_near", ".0f"),
    ("speed%", "speed", ".0f"),
    ("pan%", "pan", ".0f"),
    ("jump", "jump_ratio", ".2f"),
    ("area_cv", "area_cv", ".3f"),
    ("flicker", "background_flicker", ".2f"),
    ("s/video", "seconds", ".2f"),
)
"""The terminal table's columns: (header, SuiteSummary field, format)."""


def _cell(value: Any, spec: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return format(value, spec)


def format_table(summaries: list[SuiteSummary]) -> str:
    """The summaries as an aligned text table, one line per suite (headers in docs/quality.md)."""
    cells = [[header for header, _, _ in TABLE]]
    cells += [[_cell(getattr(s, name), spec) for _, name, spec in TABLE] for s in summaries]
    widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report_table(report: EvalReport) -> str:
    """Every suite's summary, and the overall one when there is more than one suite."""
    return format_table(report.suites + ([report.overall] if len(report.suites) > 1 else []))


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value


def rows_csv(rows: list[VideoRow]) -> str:
    """The rows as CSV text: a header of :class:`VideoRow`'s fields, then one line per video."""
    names = [f.name for f in fields(VideoRow)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_csv_value(getattr(row, name)) for name in names])
    return buffer.getvalue()


def report_json(report: EvalReport) -> str:
    """The report as JSON text (NaN written as null)."""
    payload = {
        "job": asdict(report.job),
        "seconds": report.seconds,
        "suites": [asdict(s) for s in report.suites],
        "overall": asdict(report.overall),
        "rows": [asdict(r) for r in report.rows],
    }
    return json.dumps(_json_value(payload), indent=2, allow_nan=False) + "\n"


def write_report(report: EvalReport, out: str | Path) -> list[Path]:
    """Write ``videos.csv``, ``report.json``, ``eval.yaml`` and ``sheets/<suite>.png`` under ``out``."""
    out = Path(out)
    written = []
    for name, text in (
        ("videos.csv", rows_csv(report.rows)),
        ("report.json", report_json(report)),
        ("eval.yaml", yaml.safe_dump(asdict(report.job), sort_keys=False)),
    ):
        write_text_atomic(out / name, text)
        written.append(out / name)
    sheet = report.job.sheet
    for suite, videos in report.sheets.items():
        image = contact_sheet(videos, every=1, scale=sheet.scale)
        written.append(write_png(out / "sheets" / f"{suite}.png", image))
    return written
