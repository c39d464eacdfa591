"""Streaming video reader on real mp4 files written with PyAV."""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import av
import numpy as np
import pytest

from videogen.errors import MediaError
from videogen.io.video_reader import count_frames, iter_frames, probe


def _write(path, frames: int, height: int = 48, width: int = 64, fps: int = 12, options=None) -> None:
    """Frame ``i`` is a flat grey of level ``20 * i`` (easy to recognise after lossy coding)."""
    with av.open(str(path), "w", format="mp4", options=options or {}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), 20 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "grey.mp4"
    _write(path, frames=10)
    return path


def test_frames_stream_in_order_as_rgb_uint8(video):
    frames = list(iter_frames(video))
    assert len(frames) == 10
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    levels = [int(np.median(f)) for f in frames]
    assert levels == pytest.approx([20 * i for i in range(10)], abs=3)


def test_size_start_and_max_frames_select_and_resize(video):
    frames = list(iter_frames(video, size=(24, 40), max_frames=3, start=4))
    assert [f.shape for f in frames] == [(24, 40, 3)] * 3
    assert [int(np.median(f)) for f in frames] == pytest.approx([80, 100, 120], abs=3)


def test_probe_reports_size_rate_and_codec(video):
    info = probe(video)
    assert (info.width, info.height, info.codec) == (64, 48, "h264")
    assert info.fps == pytest.approx(12.0)
    assert info.frame_count == 10
    assert count_frames(video) == 10


def test_the_decoded_frame_count_wins_over_metadata(tmp_path):
    """A truncated file whose header (written first) still promises all frames."""
    whole = tmp_path / "whole.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(whole), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(10):
            noise = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")))
        container.mux(stream.encode())
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    assert probe(cut).frame_count == 10
    decoded = count_frames(cut)
    assert 0 < decoded < 10
    assert len(list(iter_frames(cut))) == decoded


def test_a_missing_file_is_a_one_line_media_error(tmp_path):
    with pytest.raises(MediaError, match="video not found") as info:
        iter_frames(tmp_path / "nope.mp4")
    assert "\n" not in str(info.value)
    with pytest.raises(MediaError, match="video not found"):
        probe(tmp_path / "nope.mp4")


def test_a_corrupt_file_is_a_media_error(tmp_path, video):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video at all" * 100)
    with pytest.raises(MediaError, match="cannot open video") as info:
        iter_frames(junk)
    assert "\n" not in str(info.value)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(video.read_bytes()[:900])  # the index (at the end) is gone
    with pytest.raises(MediaError):
        list(iter_frames(broken))


def test_a_file_without_video_is_a_media_error(tmp_path):
    sound = tmp_path / "tone.wav"
    with av.open(str(sound), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(MediaError, match="no video stream"):
        iter_frames(sound)


@pytest.mark.skipif(importlib.util.find_spec("decord") is not None, reason="decord is installed here")
def test_asking_for_decord_without_it_is_a_clear_error(video):
    with pytest.raises(MediaError, match="decord.*not installed"):
        iter_frames(video, backend="decord")


@pytest.mark.skipif(importlib.util.find_spec("decord") is None, reason="decord is not installed")
def test_decord_backend_decodes_the_same_frames(video):
    ours = list(iter_frames(video, size=(24, 32)))
    theirs = list(iter_frames(video, size=(24, 32), backend="decord"))
    assert len(theirs) == len(ours)
    assert [int(np.median(f)) for f in theirs] == pytest.approx([int(np.median(f)) for f in ours], abs=3)
