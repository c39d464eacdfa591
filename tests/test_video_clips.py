"""A user's videos as training clips: discovery, captions, manifests, clip sampling, errors and flow."""

from __future__ import annotations

import importlib.util
import json
import random
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from videogen.data.video_clips import VideoClipDataset, VideoTooShort, clip_flows, read_manifest, resolve_backend
from videogen.errors import ConfigError, MediaError


def _write(path, images, faststart: bool = False) -> None:
    """Encode uint8 (H, W, 3) images as a (near-lossless) libx264 mp4; ``faststart`` puts the header first."""
    images = list(images)
    height, width = images[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qp": "0"}
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())


def _counting(path, frames: int, height: int = 32, width: int = 48) -> None:
    """Frame ``i`` is a flat grey of level ``8 * i``, so a decoded frame tells its index."""
    _write(path, (np.full((height, width, 3), 8 * i, dtype=np.uint8) for i in range(frames)))


def _indices(clip: np.ndarray) -> list[int]:
    return [round(float(np.median(frame)) / 8) for frame in clip]


@pytest.fixture
def counting(tmp_path):
    path = tmp_path / "count.mp4"
    _counting(path, frames=24)
    return path


# -- discovery and captions -----------------------------------------------------------------------


def test_folder_scan_is_recursive_sorted_with_sidecar_captions(tmp_path):
    for name in ("b.mp4", "a.mov", "sub/c.mkv"):
        _counting(tmp_path / name, frames=3)
    (tmp_path / "notes.md").write_text("not a video")
    (tmp_path / "b.txt").write_text("  a grey ramp\n")
    data = VideoClipDataset(tmp_path, frames=2, backend="pyav")
    assert [e.path.relative_to(tmp_path).as_posix() for e in data.entries] == ["a.mov", "b.mp4", "sub/c.mkv"]
    assert [data.caption(i) for i in range(len(data))] == ["", "a grey ramp", ""]
    assert data.uncaptioned == [tmp_path / "a.mov", tmp_path / "sub/c.mkv"]


def test_a_list_keeps_its_order_and_names_files_directly(tmp_path):
    _counting(tmp_path / "one.mp4", frames=3)
    _counting(tmp_path / "dir/two.mp4", frames=3)
    data = VideoClipDataset([tmp_path / "dir", str(tmp_path / "one.mp4")], frames=2, backend="pyav")
    assert [e.path for e in data.entries] == [tmp_path / "dir/two.mp4", tmp_path / "one.mp4"]


def test_jsonl_and_csv_manifests_resolve_paths_against_their_folder(tmp_path):
    _counting(tmp_path / "videos/x.mp4", frames=3)
    _counting(tmp_path / "elsewhere/y.mp4", frames=3)
    (tmp_path / "videos/x.txt").write_text("sidecar is ignored when a manifest gives the list")
    jsonl = tmp_path / "videos/list.jsonl"
    rows = [{"video": "x.mp4", "caption": "x moves"}, {"video": str(tmp_path / "elsewhere/y.mp4")}]
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    csv_file = tmp_path / "list.csv"
    csv_file.write_text('video,caption\nvideos/x.mp4,"x moves, slowly"\nelsewhere/y.mp4,\n')
    by_json = VideoClipDataset(jsonl, frames=2, backend="pyav")
    assert [(e.path, e.caption) for e in by_json.entries] == [
        (tmp_path / "videos/x.mp4", "x moves"),
        (tmp_path / "elsewhere/y.mp4", ""),
    ]
    assert by_json.uncaptioned == [tmp_path / "elsewhere/y.mp4"]
    by_csv = read_manifest(csv_file)
    assert [(e.path, e.caption) for e in by_csv] == [
        (tmp_path / "videos/x.mp4", "x moves, slowly"),
        (tmp_path / "elsewhere/y.mp4", ""),
    ]
    assert VideoClipDataset(csv_file, frames=2, backend="pyav").clip(1).shape == (2, 256, 256, 3)


# -- clip sampling --------------------------------------------------------------------------------


def test_a_clip_holds_every_stride_th_frame_from_its_start(counting):
    data = VideoClipDataset(counting, frames=4, frame_stride=3, width=48, height=32, backend="pyav")
    assert data.span == 10
    clip = data.clip(0, start=5)
    assert clip.shape == (4, 32, 48, 3) and clip.dtype == np.uint8
    assert _indices(clip) == [5, 8, 11, 14]
    assert _indices(data.clip(0, start=14)) == [14, 17, 20, 23]  # the last possible start


def test_frames_are_scaled_to_cover_then_centre_cropped(tmp_path):
    """A 64x48 video with red bands on top and bottom: a 48x24 clip keeps the green middle only."""
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[:, :, 1] = 200
    image[:8] = image[-8:] = (255, 0, 0)
    _write(tmp_path / "bands.mp4", [image] * 3)
    clip = VideoClipDataset(tmp_path / "bands.mp4", frames=2, width=48, height=24, backend="pyav").clip(0)
    assert clip.shape == (2, 24, 48, 3)
    # scale 0.75 covers 48 wide, leaving 36 rows: the centre 24 are source rows 8..39, all green
    inner = clip[:, 2:-2].astype(int)
    assert inner[..., 0].max() < 40 and inner[..., 1].min() > 160


def test_random_clips_are_deterministic_for_a_seed_and_stay_inside_the_video(counting):
    data = VideoClipDataset(counting, frames=4, frame_stride=2, width=16, height=16, backend="pyav")
    starts = set()
    for seed in range(12):
        clip = data.random_clip(0, seed)
        np.testing.assert_array_equal(clip, data.random_clip(0, random.Random(seed)))
        first = _indices(clip)[0]
        assert _indices(clip) == [first, first + 2, first + 4, first + 6] and 0 <= first <= 24 - 7
        starts.add(first)
    assert len(starts) > 3
    generator = np.random.default_rng(5)
    assert data.random_clip(0, generator).shape == (4, 16, 16, 3)


def test_a_container_count_that_promises_too_much_does_not_change_the_random_clip(tmp_path):
    """A truncated file whose header (written first) still promises all 24 frames; 13 decode."""
    rng = np.random.default_rng(0)
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    # noisy frames (mean level 8 * i), so the frame data, not the header, fills most of the file
    levels = (8 * i + rng.integers(-3, 4, (32, 48, 1)) for i in range(24))
    _write(whole, (np.repeat(level.clip(0, 255).astype(np.uint8), 3, axis=2) for level in levels), faststart=True)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    trusting = VideoClipDataset(cut, frames=4, width=16, height=16, backend="pyav")
    counted = VideoClipDataset(cut, frames=4, width=16, height=16, backend="pyav")
    assert counted.frame_count(0) == 13
    seed = 5
    assert random.Random(seed).random() * 21 >= 10  # a start past the real end, had the header been trusted
    clip = trusting.random_clip(0, seed)
    np.testing.assert_array_equal(clip, counted.random_clip(0, seed))
    first = _indices(clip)[0]
    assert _indices(clip) == [first, first + 1, first + 2, first + 3] and first <= 9
    assert trusting.frame_count(0) == 13


def test_sequential_clips_cover_the_video_without_overlap(counting):
    data = VideoClipDataset(counting, frames=4, width=16, height=16, backend="pyav")
    assert [_indices(clip) for clip in data.clips(0)] == [list(range(s, s + 4)) for s in range(0, 24, 4)]
    strided = VideoClipDataset(counting, frames=3, frame_stride=2, width=16, height=16, backend="pyav")
    assert [_indices(clip) for clip in strided.clips(0)] == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18, 20, 22]]


def test_streams_shuffle_every_pass_skip_short_videos_and_repeat_for_a_seed(tmp_path):
    for name, frames in (("a.mp4", 8), ("b.mp4", 12), ("short.mp4", 3)):
        _counting(tmp_path / name, frames)
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text(name)
    data = VideoClipDataset(tmp_path, frames=4, width=16, height=16, backend="pyav")
    stream = data.stream(seed=7, mode="sequential")
    items = [next(stream) for _ in range(10)]  # two passes of 2 + 3 clips
    firsts = [(caption, _indices(clip)[0]) for clip, caption in items]
    assert sorted(firsts[:5]) == [("a", 0), ("a", 4), ("b", 0), ("b", 4), ("b", 8)] == sorted(firsts[5:])
    assert data.too_short == {tmp_path / "short.mp4": 3}
    again = VideoClipDataset(tmp_path, frames=4, width=16, height=16, backend="pyav").stream(seed=7, mode="random")
    first = [next(again) for _ in range(6)]
    second = data.stream(seed=7, mode="random")
    for (clip, caption), (other, other_caption) in zip(first, (next(second) for _ in range(6)), strict=True):
        np.testing.assert_array_equal(clip, other)
        assert caption == other_caption
    assert sorted(caption for _, caption in first[:2]) == ["a", "b"]


def test_samples_by_index_do_not_depend_on_what_was_read_before(tmp_path):
    for name, frames in (("a.mp4", 8), ("b.mp4", 12), ("short.mp4", 3)):
        _counting(tmp_path / name, frames)
        (tmp_path / name).with_suffix(".txt").write_text(name[0])
    forward = VideoClipDataset(tmp_path, frames=4, frame_stride=2, width=16, height=16, backend="pyav")
    backward = VideoClipDataset(tmp_path, frames=4, frame_stride=2, width=16, height=16, backend="pyav")
    items = [forward.sample(index, seed=3) for index in range(9)]
    for index in reversed(range(9)):
        clip, caption = backward.sample(index, seed=3)
        np.testing.assert_array_equal(clip, items[index][0])
        assert caption == items[index][1]
    for start in range(0, 9, 3):  # one pass: the short video's place goes to another one
        assert {caption for _, caption in items[start : start + 3]} == {"a", "b"}
    for clip, caption in items:
        first = _indices(clip)[0]
        assert _indices(clip) == [first, first + 2, first + 4, first + 6]
        assert first + 7 <= {"a": 8, "b": 12}[caption]
    assert forward.too_short == {tmp_path / "short.mp4": 3}
    assert any(not np.array_equal(items[0][0], forward.sample(0, seed=s)[0]) for s in range(1, 5))


# -- errors ---------------------------------------------------------------------------------------


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_a_corrupt_video_names_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    data = VideoClipDataset(bad, frames=2, backend="pyav")
    with pytest.raises(MediaError) as error:
        data.clip(0)
    _one_line(error, str(bad))
    with pytest.raises(MediaError) as error:
        data.random_clip(0, 0)
    _one_line(error, str(bad))


def test_a_video_too_short_for_one_clip_names_the_file_and_both_counts(tmp_path):
    short = tmp_path / "short.mp4"
    _counting(short, frames=5)
    data = VideoClipDataset(short, frames=4, frame_stride=2, width=16, height=16, backend="pyav")
    for read in (lambda: data.clip(0), lambda: data.random_clip(0, 1), lambda: list(data.clips(0))):
        with pytest.raises(VideoTooShort) as error:
            read()
        _one_line(error, str(short), "has 5 frames", "needs 7")
    with pytest.raises(MediaError) as error:
        data.clip(0, start=3)  # 5 frames, starting at 3 the clip would need frames up to 9
    _one_line(error, "has 5 frames", "from frame 3 needs 10")
    with pytest.raises(MediaError) as error:
        next(data.stream(0, mode="random"))
    _one_line(error, "no video has the 7 frames", str(short))
    with pytest.raises(MediaError) as error:
        data.sample(4, seed=1)
    _one_line(error, "no video has the 7 frames", str(short))


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("m.jsonl", '{"video": "v.mp4"}\n{"video": "v.mp4", oops}\n', "m.jsonl:2: not valid JSON"),
        ("m.jsonl", '\n["v.mp4", "caption"]\n', "m.jsonl:2: expected an object"),
        ("m.jsonl", '{"caption": "no video"}\n', 'm.jsonl:1: "video" must be'),
        ("m.jsonl", '{"video": "v.mp4", "caption": 3}\n', 'm.jsonl:1: "caption" must be a string'),
        ("m.jsonl", '{"video": "gone.mp4"}\n', "m.jsonl:1: video"),
        ("m.csv", "path,text\nv.mp4,a\n", "m.csv:1: a CSV manifest starts with the header video,caption"),
        ("m.csv", "video,caption\nv.mp4,a\nv.mp4,b,c\n", "m.csv:3: expected 2 fields"),
        ("m.csv", "video,caption\n,a caption\n", "m.csv:2: the video column is empty"),
        ("m.csv", "video,caption\nv.mp4,a\n\nmissing/gone.mp4,b\n", "m.csv:4: video"),
        ("m.csv", "video,caption\n", "m.csv: the manifest lists no videos"),
    ],
)
def test_a_bad_manifest_line_is_named_by_file_and_line(tmp_path, name, text, where):
    _counting(tmp_path / "v.mp4", frames=2)
    (tmp_path / name).write_text(text)
    with pytest.raises(MediaError) as error:
        VideoClipDataset(tmp_path / name, frames=2, backend="pyav")
    _one_line(error, str(tmp_path / where))
    if "gone" in text:
        assert "gone.mp4 does not exist" in str(error.value)


def test_missing_paths_and_empty_folders_are_named(tmp_path):
    _counting(tmp_path / "ok/v.mp4", frames=2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("no videos here")
    with pytest.raises(MediaError) as error:
        VideoClipDataset([tmp_path / "ok", tmp_path / "empty"], frames=2, backend="pyav")
    _one_line(error, "no video files (.mp4, .mov", f"in {tmp_path / 'empty'}")
    with pytest.raises(MediaError) as error:
        VideoClipDataset([tmp_path / "ok", tmp_path / "nope.mp4"], frames=2, backend="pyav")
    _one_line(error, f"{tmp_path / 'nope.mp4'} does not exist")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"frames": 0}, "frames: must be an integer >= 1"),
        ({"frame_stride": 0}, "frame_stride: must be an integer >= 1"),
        ({"width": -2}, "width: must be an integer >= 1"),
        ({"backend": "opencv"}, "unknown video backend 'opencv'"),
    ],
)
def test_bad_settings_are_config_errors(counting, settings, message):
    with pytest.raises(ConfigError, match=message):
        VideoClipDataset(counting, **{"frames": 2, **settings})


def test_bad_start_and_mode_are_config_errors(counting):
    data = VideoClipDataset(counting, frames=2, backend="pyav")
    with pytest.raises(ConfigError, match="clip start must be >= 0"):
        data.clip(0, -1)
    with pytest.raises(ConfigError, match="unknown clip mode 'loop'"):
        next(data.stream(0, mode="loop"))


@pytest.mark.skipif(importlib.util.find_spec("decord") is not None, reason="decord is installed here")
def test_decord_asked_for_but_missing_is_a_media_error(counting):
    with pytest.raises(MediaError, match="video backend 'decord' is not installed"):
        VideoClipDataset(counting, frames=2, backend="decord")
    assert resolve_backend("auto") == "pyav"


# -- optical flow ---------------------------------------------------------------------------------


def _moving_square(path, frames: int, size: int = 96, side: int = 32, speed: int = 2) -> None:
    """A textured square moving ``speed`` px/frame to the right over a flat grey background."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (side, side)).astype(np.float32), (0, 0), 1.5)
    texture = ((texture - texture.min()) / (texture.max() - texture.min()) * 255).astype(np.uint8)
    images = []
    for i in range(frames):
        image = np.full((size, size, 3), 110, dtype=np.uint8)
        x0, y0 = 16 + speed * i, (size - side) // 2
        image[y0 : y0 + side, x0 : x0 + side] = texture[..., None]
        images.append(image)
    _write(path, images)


def test_flow_of_a_square_moving_right_at_clip_and_half_size(tmp_path):
    _moving_square(tmp_path / "square.mp4", frames=5)
    clip = VideoClipDataset(tmp_path / "square.mp4", frames=4, width=96, height=96, backend="pyav").clip(0)
    for size, scale in (((96, 96), 1.0), ((48, 48), 0.5)):
        pairs = clip_flows(clip, size)
        assert len(pairs) == 3
        for t, (forward, backward) in enumerate(pairs):
            assert forward.shape == backward.shape == (2, *size)
            # the square's core on frame t (forward) and on frame t + 1 (backward), in grid pixels
            y = slice(round(40 * scale), round(56 * scale))
            x_now = slice(round((24 + 2 * t) * scale), round((40 + 2 * t) * scale))
            x_next = slice(round((26 + 2 * t) * scale), round((42 + 2 * t) * scale))
            assert forward[0][y, x_now].median() == pytest.approx(2.0 * scale, abs=0.25 * scale)
            assert forward[1][y, x_now].median() == pytest.approx(0.0, abs=0.25 * scale)
            assert backward[0][y, x_next].median() == pytest.approx(-2.0 * scale, abs=0.25 * scale)
