"""Flow sources: camera presets, drags, driving videos (real mp4 + OpenCV), flow files."""

from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

from videogen.errors import MediaError
from videogen.noise.flow import (
    camera_flows,
    cover_resize,
    drag_flows,
    file_flows,
    flow_to_rgb,
    invert_flow,
    resize_flow,
    video_flows,
)
from videogen.noise.warp import OFF_FRAME, FlowError, NoiseWarper, torch_threads
from videogen.noise.warp_spec import (
    CameraMoveSpec,
    CameraSpec,
    DragSpec,
    PointSpec,
    VideoFlowSpec,
    WarpedNoiseSpec,
)
from videogen.noise.warped_latents import iter_warped_noise


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _sample(flow: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of a (2, H, W) flow at (N, 2) pixel positions."""
    _, h, w = flow.shape
    norm = points / torch.tensor([w - 1, h - 1]) * 2 - 1
    return F.grid_sample(flow[None], norm[None, None].float(), align_corners=True)[0, :, 0].T


def _round_trip_error(forward: torch.Tensor, backward: torch.Tensor, margin: int) -> float:
    """max |p + f(p) + b(p + f(p)) - p| over pixels whose target stays ``margin`` inside the frame."""
    _, h, w = forward.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    p = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float()
    q = p + forward.reshape(2, -1).T
    keep = (q[:, 0] >= margin) & (q[:, 0] <= w - 1 - margin) & (q[:, 1] >= margin) & (q[:, 1] <= h - 1 - margin)
    back = q[keep] + _sample(backward, q[keep])
    return float((back - p[keep]).abs().max())


# ---------------------------------------------------------------------------------------------- camera


def test_pan_and_tilt_are_constant_flows_in_frame_fractions():
    size = (40, 80)
    spec = CameraSpec(moves=[CameraMoveSpec(pan=0.05, tilt=0.1)])
    forward, backward = next(camera_flows(spec, size, 2))
    # pan right: the scene slides left by 5 % of the width; tilt up: it slides down by 10 % of the height
    assert torch.allclose(forward[0], torch.full(size, -4.0)) and torch.allclose(forward[1], torch.full(size, 4.0))
    assert torch.allclose(backward, -forward)


def test_zoom_rotate_pan_backward_flow_inverts_the_forward_flow():
    spec = CameraSpec(moves=[CameraMoveSpec(pan=0.02, zoom=0.05, rotate=7.0)])
    forward, backward = next(camera_flows(spec, (48, 64), 2))
    assert _round_trip_error(forward, backward, margin=1) < 1e-3
    assert not torch.allclose(backward, -forward, atol=1e-2)  # computed, not negated


def test_zoom_in_pushes_pixels_away_from_the_centre_and_rotation_turns_counter_clockwise():
    size = (33, 33)  # centre at pixel (16, 16)
    zoom = next(camera_flows(CameraSpec(moves=[CameraMoveSpec(zoom=0.1)]), size, 2))[0]
    assert zoom[0, 16, 26] == pytest.approx(1.0, abs=1e-5) and zoom[0, 16, 6] == pytest.approx(-1.0, abs=1e-5)
    assert torch.allclose(zoom[:, 16, 16], torch.zeros(2), atol=1e-6)
    turn = next(camera_flows(CameraSpec(moves=[CameraMoveSpec(rotate=90.0)]), size, 2))[0]
    # a point right of the centre goes to the top: counter-clockwise as seen on screen (y points down)
    assert turn[:, 16, 26].tolist() == pytest.approx([-10.0, -10.0], abs=1e-4)


def test_camera_moves_play_in_order_and_the_camera_stops_after_the_last():
    spec = CameraSpec(moves=[CameraMoveSpec(frames=2, pan=0.1), CameraMoveSpec(frames=3, tilt=0.1)])
    flows = [f for f, _ in camera_flows(spec, (10, 10), 8)]
    assert len(flows) == 7
    assert [round(float(f[0].mean()), 4) for f in flows] == [-1.0, -1.0, 0, 0, 0, 0, 0]
    assert [round(float(f[1].mean()), 4) for f in flows] == [0, 0, 1.0, 1.0, 1.0, 0, 0]


# ---------------------------------------------------------------------------------------------- drags


def _box(x0, y0, x1, y1):
    return [PointSpec(x0, y0), PointSpec(x1, y0), PointSpec(x1, y1), PointSpec(x0, y1)]


def test_dragged_box_moves_at_constant_speed_over_a_still_background():
    drag = DragSpec(polygon=_box(0.25, 0.25, 0.5, 0.5), path=[PointSpec(0.375, 0.375), PointSpec(0.625, 0.375)])
    pairs = list(drag_flows([drag], (64, 64), 9))  # 16 pixels over 8 transitions
    assert len(pairs) == 8
    forward, backward = pairs[3]
    # frame 3: the box covers x 22..37, y 16..31 and moves 2 pixels right
    assert torch.allclose(forward[:, 16:32, 22:38], torch.tensor([2.0, 0.0])[:, None, None])
    assert torch.allclose(backward[:, 16:32, 24:40], torch.tensor([-2.0, 0.0])[:, None, None])
    # the background it is about to cover is occluded; the strip it leaves is revealed
    assert bool((forward[:, 16:32, 38:40] == OFF_FRAME).all())
    assert bool((backward[:, 16:32, 22:24] == OFF_FRAME).all())
    untouched = torch.ones(64, 64, dtype=torch.bool)
    untouched[16:32, 22:40] = False
    assert not forward[:, untouched].any() and not backward[:, untouched].any()


def test_noise_inside_a_dragged_region_travels_with_it_and_revealed_background_is_fresh():
    drag = DragSpec(polygon=_box(0.25, 0.25, 0.5, 0.5), path=[PointSpec(0.375, 0.375), PointSpec(0.625, 0.5)])
    warper = NoiseWarper(3, 64, 64, seed=0, degradation=0.0)
    start = warper.noise().clone()
    for forward, backward in drag_flows([drag], (64, 64), 9):
        end = warper.step(forward, backward)
    # 16 pixels right and 8 down in total: the box [16, 32) x [16, 32) lands on [32, 48) x [24, 40)
    assert torch.equal(end[:, 24:40, 32:48], start[:, 16:32, 16:32])
    assert torch.equal(end[:, 50:, :10], start[:, 50:, :10])  # background untouched
    assert bool(warper.fresh_mask[23:24, 30:46].all())  # the strip the box just left
    assert not torch.isin(end[:, 16:24, 16:30], start).any()  # where the box was: new noise


def test_drag_with_scale_and_rotation_has_consistent_forward_and_backward_flows():
    drag = DragSpec(
        polygon=_box(0.3, 0.3, 0.6, 0.6), path=[PointSpec(0.45, 0.45), PointSpec(0.6, 0.5)], scale=1.6, rotate=40.0
    )
    forward, backward = list(drag_flows([drag], (64, 64), 6))[2]
    moving = (forward.abs().sum(0) > 0) & (forward.abs() < OFF_FRAME).all(0)
    ys, xs = moving.nonzero().T
    target = torch.stack([xs + forward[0, ys, xs], ys + forward[1, ys, xs]], dim=1)
    inner = F.max_pool2d((backward.abs().sum(0) == 0).float()[None, None], 5, 1, 2)[0, 0] == 0
    keep = inner[target[:, 1].round().long().clamp(0, 63), target[:, 0].round().long().clamp(0, 63)]
    back = target[keep] + _sample(backward, target[keep])
    assert keep.sum() > 100
    assert float((back - torch.stack([xs, ys], dim=1)[keep]).abs().max()) < 1e-3


def test_later_drags_cover_earlier_ones_and_wait_still_until_their_start_frame():
    first = DragSpec(polygon=_box(0.0, 0.0, 1.0, 1.0), path=[PointSpec(0.5, 0.5), PointSpec(0.5, 0.9)])
    second = DragSpec(
        polygon=_box(0.4, 0.4, 0.6, 0.6), path=[PointSpec(0.5, 0.5), PointSpec(0.9, 0.5)], start_frame=2, end_frame=4
    )
    pairs = list(drag_flows([first, second], (40, 40), 6))
    down = torch.tensor([0.0, 16 / 5])  # the first drag: 16 pixels down over all 5 transitions
    assert torch.allclose(pairs[0][0][:, 2, 2], down, atol=1e-4)
    assert torch.allclose(pairs[0][0][:, 20, 20], torch.zeros(2))  # the second lies on top, still
    assert torch.allclose(pairs[2][0][:, 20, 20], torch.tensor([8.0, 0.0]), atol=1e-4)  # now it moves
    assert torch.allclose(pairs[2][0][:, 30, 2], down, atol=1e-4)
    assert torch.allclose(pairs[2][0][:, 2, 2], torch.zeros(2))  # background the first drag uncovered
    assert torch.allclose(pairs[4][0][:, 20, 36], torch.zeros(2))  # finished: the second stays


# ---------------------------------------------------------------------------------------------- videos


def _texture(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grey = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 2.5)
    grey = (grey - grey.min()) / (grey.max() - grey.min()) * 255
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def _write_translating_video(path, frames: int, dx: int, dy: int, size: int = 128) -> None:
    """A texture whose content moves (dx, dy) pixels per frame, losslessly encoded with libx264."""
    canvas = _texture(size + 64, seed=3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(8))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": "0"}
        for i in range(frames):
            x0, y0 = 32 - i * dx, 32 - i * dy
            image = np.ascontiguousarray(canvas[y0 : y0 + size, x0 : x0 + size])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_video_optical_flow_finds_the_translation_both_ways(tmp_path, method):
    path = tmp_path / "move.mp4"
    _write_translating_video(path, frames=5, dx=2, dy=1)
    pairs = list(video_flows(VideoFlowSpec(path=str(path), method=method), (64, 64), 5))
    assert len(pairs) == 4
    for forward, backward in pairs:
        # the video is 128 px, the grid 64 px: 2 px and 1 px per frame become 1 and 0.5 grid pixels
        core_f, core_b = forward[:, 16:48, 16:48], backward[:, 16:48, 16:48]
        assert core_f[0].median() == pytest.approx(1.0, abs=0.15)
        assert core_f[1].median() == pytest.approx(0.5, abs=0.15)
        assert core_b[0].median() == pytest.approx(-1.0, abs=0.15)
        assert core_b[1].median() == pytest.approx(-0.5, abs=0.15)
        assert not torch.equal(backward, -forward)


def test_a_video_shorter_than_the_job_is_a_clear_error(tmp_path):
    path = tmp_path / "short.mp4"
    _write_translating_video(path, frames=3, dx=1, dy=0)
    spec = WarpedNoiseSpec(source="video", video=VideoFlowSpec(path=str(path)), upsample=1)
    with pytest.raises(MediaError, match="ends after 3 frames.*need 6"):
        list(iter_warped_noise(spec, 0, 6, 4, 16, 16))


def test_cover_resize_keeps_the_aspect_by_cropping_the_centre():
    frame = np.zeros((100, 200, 3), dtype=np.uint8)
    frame[:, 50:150] = 255  # the centre square is white
    out = cover_resize(frame, (32, 32))
    assert out.shape == (32, 32, 3) and out.min() == 255


# ---------------------------------------------------------------------------------------------- flow files


def _translation_file_flows(n: int, h: int, w: int, dx: float, dy: float) -> np.ndarray:
    flow = np.zeros((n, 2, h, w), dtype=np.float32)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def test_npy_flows_at_video_resolution_are_resized_and_rescaled_to_the_grid(tmp_path):
    path = tmp_path / "flows.npy"
    np.save(path, _translation_file_flows(4, 128, 96, 8.0, -4.0))
    pairs = list(file_flows(path, (32, 24), 5))
    assert len(pairs) == 4
    forward, backward = pairs[0]
    assert forward.shape == (2, 32, 24)
    assert torch.allclose(forward[0], torch.full((32, 24), 2.0)) and torch.allclose(
        forward[1], torch.full((32, 24), -1.0)
    )
    assert torch.allclose(backward, -forward, atol=1e-5)  # the inversion of a translation is exact


def test_npy_and_safetensors_files_with_backward_flows_are_read_as_given(tmp_path):
    forward = _translation_file_flows(3, 16, 16, 1.0, 0.0)
    backward = _translation_file_flows(3, 16, 16, -0.5, 0.25)
    np.save(tmp_path / "both.npy", np.stack([forward, backward], axis=1))
    save_file({"forward": forward, "backward": backward}, str(tmp_path / "both.safetensors"))
    for name in ("both.npy", "both.safetensors"):
        pairs = list(file_flows(tmp_path / name, (16, 16), 4))
        assert len(pairs) == 3
        assert torch.equal(pairs[1][0], torch.from_numpy(forward[1]))
        assert torch.equal(pairs[1][1], torch.from_numpy(backward[1]))


def test_invert_flow_matches_the_exact_inverse_of_a_zoom_and_rotation():
    spec = CameraSpec(moves=[CameraMoveSpec(zoom=0.1, rotate=10.0, pan=0.03)])
    forward, backward = next(camera_flows(spec, (48, 48), 2))
    inverted = invert_flow(forward)
    interior = (slice(None), slice(8, 40), slice(8, 40))
    assert torch.allclose(inverted[interior], backward[interior], atol=1e-3)


@pytest.mark.parametrize(
    ("name", "writer", "error", "message"),
    [
        ("bad.npy", lambda p: np.save(p, np.zeros((3, 3, 8, 8), np.float32)), FlowError, r"\(N, 2, H, W\)"),
        ("nan.npy", lambda p: np.save(p, np.full((2, 2, 8, 8), np.nan, np.float32)), FlowError, "transition 0"),
        ("obj.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), MediaError, "not a readable .npy"),
        ("junk.safetensors", lambda p: p.write_bytes(b"not safetensors"), MediaError, "not a readable safetensors"),
        (
            "nofwd.safetensors",
            lambda p: save_file({"flow": np.zeros((1, 2, 4, 4), np.float32)}, str(p)),
            FlowError,
            "forward",
        ),
        ("flows.txt", lambda p: p.write_text("1 2 3"), MediaError, ".npy or .safetensors"),
    ],
)
def test_bad_flow_files_raise_clear_errors(tmp_path, name, writer, error, message):
    path = tmp_path / name
    writer(path)
    with pytest.raises(error, match=message):
        list(file_flows(path, (8, 8), 3))


def test_a_flow_file_shorter_than_the_job_is_a_clear_error(tmp_path):
    np.save(tmp_path / "short.npy", _translation_file_flows(2, 8, 8, 1.0, 0.0))
    with pytest.raises(MediaError, match="holds 2 flow transitions; 5 frames need 4"):
        next(file_flows(tmp_path / "short.npy", (8, 8), 5))


def test_a_missing_flow_file_is_a_media_error(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        list(file_flows(tmp_path / "nope.npy", (8, 8), 3))


def test_resize_flow_scales_each_axis_by_its_own_ratio():
    flow = torch.stack([torch.full((10, 20), 4.0), torch.full((10, 20), 3.0)])
    out = resize_flow(flow, (30, 10))
    assert out.shape == (2, 30, 10)
    assert torch.allclose(out[0], torch.full((30, 10), 2.0)) and torch.allclose(out[1], torch.full((30, 10), 9.0))


def test_flow_colours_encode_direction_as_hue_and_speed_as_brightness():
    flow = torch.zeros(2, 4, 8)
    flow[0, :, 4:] = 3.0  # right half moves right, fast
    rgb = flow_to_rgb(flow)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 8, 3)
    assert rgb[:, :4].max() == 0  # still = black
    red, green, blue = (int(c) for c in rgb[0, 6])
    assert red > 240 and green < 10 and blue < 10  # direction 0 (right) = red
