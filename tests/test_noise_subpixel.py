"""Sub-pixel motion in the Go-with-the-Flow warper: slow motion accumulates, noise stays exactly i.i.d."""

from __future__ import annotations

import math

import pytest
import torch

from videogen.noise.flow import camera_flows, drag_flows
from videogen.noise.warp import OFF_FRAME, FlowError, NoiseWarper, torch_threads, warp_frame
from videogen.noise.warp_spec import CameraMoveSpec, CameraSpec, DragSpec, PointSpec, WarpedNoiseSpec, spec_from_yaml
from videogen.noise.warped_latents import iter_warped_noise, warped_latent_noise

FRAMES = 60


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _uniform(dx: float, dy: float, h: int, w: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    forward = torch.tensor([dx, dy], dtype=dtype)[:, None, None].expand(2, h, w).clone()
    return forward, -forward


def _exact_shift(start: torch.Tensor, now: torch.Tensor, near: tuple[float, float], margin: int) -> tuple[int, int]:
    """The integer (dx, dy), searched around ``near``, with ``now[y + dy, x + dx] == start[y, x]`` on the
    part of the frame that only ever held moved noise: ``margin`` pixels in from every edge, and on
    the sides where new noise enters, the shift again (the pixels that bring new noise in are split
    from the old noise at the edge and merge back into it, mixing a band as wide as the travel)."""
    _, h, w = start.shape
    found = []
    for dx in range(math.floor(near[0]) - 2, math.ceil(near[0]) + 3):
        for dy in range(math.floor(near[1]) - 2, math.ceil(near[1]) + 3):
            x0, x1 = max(0, 2 * dx) + margin, w + min(0, 2 * dx) - margin
            y0, y1 = max(0, 2 * dy) + margin, h + min(0, 2 * dy) - margin
            assert x1 - x0 >= 4 and y1 - y0 >= 4, "the frame is too small for this motion"
            if torch.equal(now[:, y0:y1, x0:x1], start[:, y0 - dy : y1 - dy, x0 - dx : x1 - dx]):
                found.append((dx, dy))
    assert len(found) == 1, f"no unique exact shift near {near}: {found}"
    return found[0]


def _x_shift(start: torch.Tensor, now: torch.Tensor, largest: int) -> float:
    """Horizontal shift of ``now`` against ``start`` in pixels: the correlation peak over whole-pixel
    shifts, refined between the two best neighbours (a pooled block shifted by a fraction ``a`` of a
    pixel correlates ``1 - a`` and ``a`` with its two nearest whole-pixel shifts)."""
    _, _, w = start.shape
    corr = []
    for d in range(largest + 2):
        a = now[:, :, largest + 1 :].double().reshape(-1)
        b = start[:, :, largest + 1 - d : w - d].double().reshape(-1)
        corr.append(float(torch.corrcoef(torch.stack([a, b]))[0, 1]))
    best = max(range(len(corr)), key=corr.__getitem__)
    lo = best - 1 if best > 0 and (best + 1 == len(corr) or corr[best - 1] > corr[best + 1]) else best
    lo = min(lo, len(corr) - 2)
    a, b = max(corr[lo], 0.0), max(corr[lo + 1], 0.0)
    return lo + b / (a + b)


# ---------------------------------------------------------------------------------------------- slow drifts


@pytest.mark.parametrize("upsample", [1, 4, 8])
@pytest.mark.parametrize("speed", [0.1, 0.3, 0.5])
def test_slow_drift_moves_the_noise_by_speed_times_frames(speed, upsample):
    """A drift of (v, -v/2) output pixels per frame: after t frames the noise on the warp grid is frame 0
    shifted by whole grid pixels within half a grid pixel of (k v t, -k v t / 2), on both axes."""
    # room for the compared part of the frame (see _exact_shift) at every searched shift
    width, height = math.ceil(2 * speed * FRAMES + 24 / upsample), math.ceil(speed * FRAMES + 24 / upsample)
    warper = NoiseWarper(1, height, width, seed=3, upsample=upsample, degradation=0.0)
    forward, backward = _uniform(speed * upsample, -speed * upsample / 2, *warper.grid_size)
    start = warper.grid_noise.clone()
    for t in range(1, FRAMES + 1):
        warper.step(forward, backward)
        if t % 15 == 0:
            exact = (speed * upsample * t, -speed * upsample * t / 2)
            dx, dy = _exact_shift(start, warper.grid_noise, exact, margin=4)
            assert abs(dx - exact[0]) <= 0.5 + 1e-4 and abs(dy - exact[1]) <= 0.5 + 1e-4, (t, dx, dy, exact)
    # k v t is a whole number of grid pixels at t = 60 (per-step rounding gave t round(k v) instead)
    assert (dx, dy) == (round(speed * upsample * FRAMES), round(-speed * upsample * FRAMES / 2))


def test_integer_flows_keep_a_zero_remainder_and_move_exactly():
    warper = NoiseWarper(3, 24, 24, seed=1, degradation=0.0)
    start = warper.noise().clone()
    for _ in range(4):
        warper.step(*_uniform(2.0, -1.0, 24, 24))
    assert not bool(warper.remainder.any())
    assert _exact_shift(start, warper.noise(), (8.0, -4.0), margin=0) == (8, -4)


def test_remainders_stay_bounded_and_the_state_is_one_frame():
    """Contraction leaves at most half a pixel, a hole at most one pixel; a warper restarted from
    another's state (noise, density, remainder) and frame index continues identically."""
    spec = CameraSpec(moves=[CameraMoveSpec(frames=10, zoom=0.03, pan=0.004), CameraMoveSpec(rotate=2.0)])
    flows = list(camera_flows(spec, (48, 48), 21))
    a = NoiseWarper(2, 48, 48, seed=9, degradation=0.0)
    for forward, backward in flows[:10]:
        a.step(forward, backward)
        assert float(a.remainder.abs().max()) <= 1.0
    b = NoiseWarper(2, 48, 48, seed=9, degradation=0.0)
    b._state, b._density, b._remainder, b.frame = a.grid_noise.clone(), a.density.clone(), a.remainder.clone(), 10
    for forward, backward in flows[10:]:
        assert torch.equal(a.step(forward, backward), b.step(forward, backward))
        assert float(a.remainder.abs().max()) <= 1.0
    assert float(a.remainder.abs().max()) > 0.1


def test_hole_and_fresh_pixel_remainders_follow_the_documented_rule():
    """One row of five pixels; remainders along x (y stays 0).

    Pixel 0 leaves the frame and nothing reaches it (its backward flow leaves too): fresh, remainder 0.
    Pixel 1 stays (f + r = 0.2, keeps 0.2). Pixel 2 moves onto 3 (0.4 + 0.3 = 0.7: one pixel, keeps
    -0.3) and fills the hole it leaves (b = -0.4, source 2: 0.3 + round(b) - b = 0.7). Pixel 3 stays
    (keeps 0); its merge weighs 2's share (weight 1/2, 2 is split in two) against its own (1):
    (-0.3 / 2 + 0) / 1.5 = -0.1. Pixel 4 stays (0.9 - 0.6 = 0.3, keeps 0.3).
    """
    dt = torch.float64
    noise = torch.randn(2, 1, 5, dtype=dt, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros(1, 5, dtype=dt)
    forward = torch.stack([torch.tensor([[OFF_FRAME, 0.0, 0.4, 0.0, -0.6]], dtype=dt), zero])
    backward = torch.stack([torch.tensor([[OFF_FRAME, 0.0, -0.4, 0.0, 0.0]], dtype=dt), zero])
    remainder = torch.stack([torch.tensor([[0.0, 0.2, 0.3, 0.0, 0.9]], dtype=dt), zero])
    draw = lambda kind, count: torch.randn(2, count, dtype=dt)  # noqa: E731
    result = warp_frame(noise, torch.ones(1, 5, dtype=dt), forward, backward, draw, remainder=remainder)
    assert result.fresh.tolist() == [[True, False, False, False, False]]
    expected = torch.tensor([[0.0, 0.2, 0.7, -0.1, 0.3]], dtype=dt)
    assert torch.allclose(result.remainder[0], expected, atol=1e-12)
    assert not bool(result.remainder[1].any())

    # A hole refilled from a piece that already sits 0.9 px away, moved 0.6 px further: clamped to 1.
    forward = torch.stack([torch.tensor([[1.0, 0.0]], dtype=dt), torch.zeros(1, 2, dtype=dt)])
    backward = torch.stack([torch.tensor([[-0.4, -1.0]], dtype=dt), torch.zeros(1, 2, dtype=dt)])
    remainder = torch.stack([torch.tensor([[0.6, 0.0]], dtype=dt), torch.zeros(1, 2, dtype=dt)])
    noise2 = noise[:, :, :2]
    result = warp_frame(noise2, torch.ones(1, 2, dtype=dt), forward, backward, draw, remainder=remainder)
    # pixel 0 moves by floor(1.6 + 0.5) = 2 and leaves; pixel 1 stays (keeps 0); pixel 0 is a hole fed
    # by its own previous noise: 0.6 + 0 + 0.4 = 1.0, at the clamp.
    assert torch.allclose(result.remainder[0], torch.tensor([[1.0, 0.0]], dtype=dt), atol=1e-12)
    remainder[0, 0, 0] = 0.9
    result = warp_frame(noise2, torch.ones(1, 2, dtype=dt), forward, backward, draw, remainder=remainder)
    assert result.remainder[0].tolist() == [[1.0, 0.0]]  # 1.3 clamped


# ---------------------------------------------------------------------------------------------- public path


def _pan_spec(speed: float, width: int, upsample: int, stride: int = 1, degradation: float = 0.0) -> WarpedNoiseSpec:
    """The scene slides right by ``speed`` latent pixels per latent frame (``pan`` is a width fraction
    per motion frame; positive pan slides the scene left)."""
    move = CameraMoveSpec(pan=-speed / width / stride)
    return WarpedNoiseSpec(
        source="camera",
        degradation=degradation,
        upsample=upsample,
        temporal_stride=stride,
        camera=CameraSpec(moves=[move]),
    )


@pytest.mark.parametrize("upsample", [4, 8])
def test_slow_camera_pan_moves_the_latent_noise(upsample):
    """0.1 latent px per frame for 60 frames: 6 latent pixels (it was 0 at upsample 4, 7.5 at 8)."""
    height, width = 16, 32
    frames = [f.noise for f in iter_warped_noise(_pan_spec(0.1, width, upsample), 0, FRAMES + 1, 2, height, width)]
    start, end = frames[0], frames[-1]
    assert torch.equal(end[:, :, 8:], start[:, :, 2:-6])  # exactly 6 whole latent pixels
    assert _x_shift(start, frames[30], 6) == pytest.approx(3.0, abs=0.05)
    assert not any(torch.equal(f, start) for f in frames[10:])


def test_recommended_settings_move_a_half_pixel_per_latent_frame_pan(tmp_path):
    """upsample 4, temporal_stride 4, degradation 0.5, a pan of 0.5 latent px per latent frame, from a
    job file through the sampler's API: 8 latent pixels after 16 latent frames (it was 0)."""
    width = 32
    (tmp_path / "job.yaml").write_text(
        "noise:\n  kind: warped\n  warped:\n    source: camera\n    degradation: 0.5\n    upsample: 4\n"
        f"    temporal_stride: 4\n    camera:\n      moves:\n        - {{pan: {-0.5 / width / 4!r}}}\n"
    )
    spec = spec_from_yaml(tmp_path / "job.yaml")
    noise = warped_latent_noise(spec, 7, 17, 4, 32, width, range(17))[0]
    shifts = [_x_shift(noise[:, 0], noise[:, t], 10) for t in (4, 8, 16)]
    assert shifts == pytest.approx([2.0, 4.0, 8.0], abs=0.15)
    clean = 0.5**2 / (0.5**2 + 0.5**2)  # correlation of two degraded frames along the motion
    a, b = noise[:, 16, :, 8:].reshape(-1), noise[:, 0, :, :-8].reshape(-1)
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) == pytest.approx(clean, abs=0.05)


# ---------------------------------------------------------------------------------------------- covariance


def _states():
    """(name, grid size, flows to warm up with, the flow of the tested step) per kind of motion."""
    size = 12
    slow = _uniform(0.3, -0.2, size, size, torch.float64)
    fast = _uniform(1.7, 0.6, size, size, torch.float64)
    zoom = list(camera_flows(CameraSpec(moves=[CameraMoveSpec(zoom=0.06)]), (size, size), 6))
    rotation = list(camera_flows(CameraSpec(moves=[CameraMoveSpec(rotate=7.0, pan=0.02)]), (size, size), 6))
    box = [PointSpec(0.2, 0.2), PointSpec(0.6, 0.2), PointSpec(0.6, 0.6), PointSpec(0.2, 0.6)]
    drag = DragSpec(polygon=box, path=[PointSpec(0.4, 0.4), PointSpec(0.7, 0.55)], scale=1.5, rotate=30.0)
    dragged = list(drag_flows([drag], (size, size), 6))
    return {
        "slow_drift": (size, [slow] * 4, slow),
        "drift_with_holes": (size, [slow] * 3 + [fast], fast),
        "zoom": (size, zoom[:4], zoom[4]),
        "rotation": (size, rotation[:4], rotation[4]),
        "drag": (size, dragged[:4], dragged[4]),
    }


@pytest.mark.parametrize("kind", sorted(_states()))
def test_one_step_maps_white_noise_to_white_noise_exactly(kind):
    """Push identity bases through one step in float64: the previous grid noise as N identity columns
    and every split or fresh draw as further identity columns. The step is linear in them, so the
    output's covariance is sum_b out_b out_b^T, and it must be exactly the identity."""
    size, warm_up, (forward, backward) = _states()[kind]
    warper = NoiseWarper(1, size, size, seed=5, degradation=0.0)
    for f, b in warm_up:
        warper.step(f, b)
    n = size * size
    basis = 4 * n  # N previous pixels + at most 2N split edges + N fresh pixels
    eye = torch.eye(basis, dtype=torch.float64)
    used = [n]
    kinds = set()

    def draw(what: str, count: int) -> torch.Tensor:
        kinds.add(what)
        block = eye[:, used[0] : used[0] + count]
        used[0] += count
        return block

    previous = eye[:, :n].reshape(basis, size, size)
    result = warp_frame(
        previous,
        warper.density.double(),
        forward.double(),
        backward.double(),
        draw,
        remainder=warper.remainder.double(),
    )
    out = result.noise.reshape(basis, n)
    assert used[0] <= basis
    assert torch.allclose(out.T @ out, torch.eye(n, dtype=torch.float64), rtol=0.0, atol=1e-12)
    assert float(warper.remainder.abs().max()) > 0.05  # the step really started from sub-pixel remainders
    assert bool((result.remainder.abs() > 0.05).any())
    if kind != "slow_drift":
        assert "split" in kinds  # the step really split and merged noise


def test_a_bad_remainder_is_a_flow_error():
    noise, density, still = torch.zeros(1, 4, 4), torch.ones(4, 4), torch.zeros(2, 4, 4)
    draw = lambda kind, count: torch.zeros(1, count)  # noqa: E731
    for remainder in (torch.zeros(2, 4, 5), torch.full((2, 4, 4), float("nan"))):
        with pytest.raises(FlowError, match="remainder must be a finite"):
            warp_frame(noise, density, still, still, draw, remainder=remainder)
