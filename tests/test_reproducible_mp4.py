"""Same frames and same settings give the same mp4 bytes: on any CPU count, joined or not, rendered twice."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from videogen.config import load_job
from videogen.io.concat import concat_segments
from videogen.io.writer import open_sink
from videogen.pipeline import render


def _frames(count: int = 12, size: int = 64) -> np.ndarray:
    """Moving stripes under noise: content libx264 has to make real decisions about."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    grey = [np.sin((xx + 3 * t) / 5.0) * 60 + np.cos((yy - 2 * t) / 4.0) * 50 + 128 for t in range(count)]
    frames = np.stack(grey)[..., None] + rng.normal(0, 14, (count, size, size, 3))
    return frames.clip(0, 255).astype(np.uint8)


def _encode(path: Path, frames: np.ndarray, chunk: int = 5) -> str:
    with open_sink(path, fps=8, crf=18) as sink:
        for start in range(0, len(frames), chunk):
            sink.write(frames[start : start + chunk])
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_cpu():
    """Context: this process may run on one CPU only (libx264 counts the CPUs it may use)."""

    class _Pinned:
        def __enter__(self):
            self.saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {min(self.saved)})

        def __exit__(self, *exc):
            os.sched_setaffinity(0, self.saved)

    return _Pinned()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_the_same_frames_encode_to_the_same_bytes_on_any_cpu_count(tmp_path):
    frames = _frames()
    hashes = {_encode(tmp_path / f"run{i}.mp4", frames) for i in range(3)}
    with _one_cpu():
        hashes.add(_encode(tmp_path / "one_cpu.mp4", frames))
    assert len(hashes) == 1, "three encodes and a one-CPU encode of the same frames differ"


def test_joining_segments_is_bit_exact_and_repeatable(tmp_path):
    frames = _frames(count=10)
    first = _encode(tmp_path / "a.mp4", frames[:6])
    second = _encode(tmp_path / "b.mp4", frames[6:])
    assert first != second
    joined = set()
    for i in range(2):
        assert concat_segments([tmp_path / "a.mp4", tmp_path / "b.mp4"], tmp_path / f"joined{i}.mp4") == 10
        joined.add(hashlib.sha256((tmp_path / f"joined{i}.mp4").read_bytes()).hexdigest())
    assert len(joined) == 1


def test_rendering_a_job_twice_writes_the_same_mp4_bytes(make_job, tmp_path):
    outputs = []
    for name in ("first", "second"):
        job = load_job(make_job(), [f"output.path={tmp_path / name}.mp4", "sampler.steps=2"]).config
        render(job, progress=False)
        outputs.append((tmp_path / f"{name}.mp4").read_bytes())
    assert outputs[0] == outputs[1]
