"""Shared by the benchmarks: targets, the printed table and the JSON file.

Every ``tools/bench_*.py`` prints a table and writes JSON whose top-level ``targets`` maps a
figure's name to ``{"value": v, "target": "<= 1.05", "met": bool}``, computed from what it
measured.
"""

from __future__ import annotations

import json
import operator
import platform
from pathlib import Path
from typing import Any

import torch

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def target(value: float, spec: str) -> dict[str, Any]:
    """``target(0.98, "<= 1.05")`` -> ``{"value": 0.98, "target": "<= 1.05", "met": True}``."""
    op, bound = spec.split()
    return {"value": float(f"{float(value):.6g}"), "target": spec, "met": bool(_OPS[op](value, float(bound)))}


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(path: str | None, results: dict[str, Any], targets: dict[str, dict[str, Any]]) -> None:
    print("\ntargets")
    for name, t in targets.items():
        print(f"  {name}: {t['value']} (target {t['target']}) {'met' if t['met'] else 'NOT met'}")
    if path:
        payload = {"machine": machine(), "targets": targets, **results}
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {path}")
