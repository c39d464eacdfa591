"""Segments written by separate workers join into one video without re-encoding."""

from __future__ import annotations

import av
import numpy as np
import pytest

from videogen.errors import MediaError
from videogen.io.concat import concat_segments
from videogen.io.writer import open_sink


def _segment(path, start, count, size=(48, 64), fps=8):
    frames = np.stack([np.full((*size, 3), (start + i) * 10 % 255, dtype=np.uint8) for i in range(count)])
    with open_sink(path, fps) as sink:
        sink.write(frames)
    return path


def _decode(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)], c.streams.video[0].average_rate


def test_joined_video_has_every_frame_in_order_and_the_same_packets(tmp_path):
    parts = [_segment(tmp_path / f"seg_{i}.mp4", start, n) for i, (start, n) in enumerate([(0, 5), (5, 7), (12, 4)])]
    assert concat_segments(parts, tmp_path / "joined.mp4") == 16
    frames, rate = _decode(tmp_path / "joined.mp4")
    expected = [f for p in parts for f in _decode(p)[0]]
    assert len(frames) == 16 and rate == 8
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True))  # no re-encode: bit-identical
    with av.open(str(tmp_path / "joined.mp4")) as c:
        assert float(c.duration / av.time_base) == pytest.approx(2.0, abs=0.01)


def test_mismatched_segments_are_refused_and_nothing_is_left(tmp_path):
    a = _segment(tmp_path / "a.mp4", 0, 3)
    b = _segment(tmp_path / "b.mp4", 0, 3, size=(32, 32))
    with pytest.raises(MediaError, match="differ from the first segment"):
        concat_segments([a, b], tmp_path / "joined.mp4")
    assert not (tmp_path / "joined.mp4").exists() and not list(tmp_path.glob(".joined*"))


def test_corrupt_segment_is_named(tmp_path):
    a = _segment(tmp_path / "a.mp4", 0, 3)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(MediaError, match="bad.mp4: unreadable segment"):
        concat_segments([a, bad], tmp_path / "joined.mp4")
