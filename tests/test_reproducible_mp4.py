"""Same frames and settings give the same mp4 bytes: in any process, on any CPU count, joined or not, rendered twice."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from videogen.io.concat import concat_segments
from videogen.io.writer import open_sink


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


ENCODE_IN_A_FRESH_PROCESS = """
import hashlib, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_reproducible_mp4 import _encode, _frames
frames, other = _frames(), _frames(count=20, size=96)[::-1].copy()
folder = Path(tempfile.mkdtemp(dir="."))  # inside the test's tmp_path, the working directory
for i in range(4):
    print(_encode(folder / f"run{i}.mp4", frames))
    _encode(folder / f"other{i}.mp4", other)
"""


def _hashes_from_a_fresh_process(tmp_path: Path, one_cpu: bool) -> list[str]:
    """Four encodes of the same frames in a new interpreter, each followed by an encode of other frames."""
    pin = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if one_cpu else None
    done = subprocess.run(
        [sys.executable, "-c", ENCODE_IN_A_FRESH_PROCESS, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        preexec_fn=pin,
        check=True,
        cwd=tmp_path,
    )
    return done.stdout.split()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_the_same_frames_encode_to_the_same_bytes_in_any_process_on_any_cpu_count(tmp_path):
    """libx264 left to itself varies with the CPU count (slices) and with leftover memory (mbtree)."""
    hashes = [h for run in range(4) for h in _hashes_from_a_fresh_process(tmp_path, one_cpu=run == 0)]
    assert len(hashes) == 16
    assert len(set(hashes)) == 1, f"16 encodes of the same frames in 4 processes gave {len(set(hashes))} files"


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
    from videogen.config import load_job  # imported here: the fresh processes above need only the writer
    from videogen.pipeline import render

    outputs = []
    for name in ("first", "second"):
        job = load_job(make_job(), [f"output.path={tmp_path / name}.mp4", "sampler.steps=2"]).config
        render(job, progress=False)
        outputs.append((tmp_path / f"{name}.mp4").read_bytes())
    assert outputs[0] == outputs[1]
