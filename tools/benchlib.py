"""Shared by the benchmarks: targets, the printed table and the JSON file.

Every ``tools/bench_*.py`` prints a table and writes JSON whose top-level ``targets`` maps a
figure's name to ``{"value": v, "target": "<= 1.05", "met": bool}``, computed from what it
measured.
"""

from __future__ import annotations

import json
import math
import operator
import os
import platform
import threading
import time
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


def sequential_worker(rank: int, world_size: int, job) -> dict:
    """An independent plain render of ``job`` in this worker (the sequential baseline, or one half
    of a probe when several run at once), timed around :func:`videogen.pipeline.denoise` only."""
    from videogen.pipeline import WorkerSlot, denoise, prepare_bundle

    bundle = prepare_bundle(job)
    started, cpu_started = time.perf_counter(), time.process_time()
    latents, evaluations, _ = denoise(job, bundle, job.noise.seed, WorkerSlot(), progress=False)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"latents": latents, "seconds": seconds, "cpu_seconds": cpu_seconds, "evaluations": evaluations}


def heap_follows_live_memory() -> bool:
    """Make glibc return every freed block of 64 KiB or more to the system at once.

    By default glibc keeps freed heap blocks resident, so the RSS peak of a run depends on the
    heap's history as much as on the tensors alive at once (the same render measured 200-255 MiB
    over 16 runs). With ``M_MMAP_THRESHOLD`` at 64 KiB every tensor of that size gets its own
    mapping, unmapped on free, and RSS follows live memory, the CPU analogue of
    ``torch.cuda.max_memory_allocated``. It slows allocation, so use it only for memory rows.
    Returns False where there is no glibc (nothing changed).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or not name:
        return False
    libc = ctypes.CDLL(name)
    m_mmap_threshold, m_trim_threshold = -3, -1
    return bool(libc.mallopt(m_mmap_threshold, 64 * 1024)) and bool(libc.mallopt(m_trim_threshold, 0))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's RSS every millisecond; ``peak - start`` is the extra memory used."""

    def __enter__(self):
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two frame tensors in [0, 1] (infinite when they are equal)."""
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def decode_frames(vae, latents: torch.Tensor) -> torch.Tensor:
    """All frames of ``latents`` decoded by ``vae``, 8 latent frames at a time."""
    from videogen.decode import decode_chunks

    return torch.cat(list(decode_chunks(vae, latents, 8)))


def decoded(model_dir: str, latents: torch.Tensor) -> torch.Tensor:
    """``latents`` decoded by the VAE of the model folder ``model_dir``."""
    from videogen.config import ModelConfig
    from videogen.models.loader import load_bundle

    return decode_frames(load_bundle(ModelConfig(path=model_dir)).vae, latents)
