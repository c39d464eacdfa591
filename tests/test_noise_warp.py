"""Go-with-the-Flow warping: exactness, Gaussianity, temporal correlation, errors, frame ranges."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from videogen.errors import VideogenError
from videogen.noise.gaussian import frame_noise
from videogen.noise.warp import (
    FlowError,
    NoiseWarper,
    degrade,
    flow_correlation,
    gaussianity,
    ks_normal,
    torch_threads,
    warp_frame,
)
from videogen.noise.warp_spec import CameraMoveSpec, CameraSpec, WarpedNoiseSpec
from videogen.noise.warped_latents import warped_latent_noise

SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _constant(dx: float, dy: float, h: int = SIZE, w: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    forward = torch.stack([torch.full((h, w), float(dx)), torch.full((h, w), float(dy))])
    return forward, -forward


def _affine(scale: float, degrees: float, h: int = SIZE, w: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom/rotation about the centre; backward flow from the exact inverse map."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))

    def move(k, cos, sin):
        x, y = xs - cx, ys - cy
        return torch.stack([k * (cos * x + sin * y) - x, k * (-sin * x + cos * y) - y]).float()

    return move(scale, c, s), move(1 / scale, c, -s)


def _smooth_random(seed: int, amplitude: float, h: int = SIZE, w: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random flow and its backward flow by fixed-point inversion."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 2, 5, 5, generator=g) * amplitude
    forward = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]
    from videogen.noise.flow import invert_flow

    return forward, invert_flow(forward)


def _shifted_equal(prev: torch.Tensor, nxt: torch.Tensor, dx: int, dy: int) -> bool:
    """``nxt[y + dy, x + dx] == prev[y, x]`` wherever both are inside."""
    h, w = prev.shape[-2:]
    src = prev[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    dst = nxt[..., max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
    return torch.equal(src, dst)


# ---------------------------------------------------------------------------------------------- exactness


def test_split_then_merge_returns_the_original_noise_exactly():
    """The paper's supplement example: pixel 1 expands into pixels 1 and 2, then they contract back."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    ones = torch.ones(1, 4, dtype=torch.float64)
    draw = lambda kind, count: torch.randn(3, count, generator=g, dtype=torch.float64)  # noqa: E731
    zero = torch.zeros(1, 4, dtype=torch.float64)

    # Step 1: pixel 2 moves onto pixel 3 (contraction); pixel 2 is a hole filled from pixel 1 (expansion).
    fwd1 = torch.stack([torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=torch.float64), zero])
    bwd1 = torch.stack([torch.tensor([[0.0, 0.0, -1.0, 0.0]], dtype=torch.float64), zero])
    step1 = warp_frame(q, ones, fwd1, bwd1, draw)
    assert torch.allclose((step1.noise[:, 0, 1] + step1.noise[:, 0, 2]) / math.sqrt(2), q[:, 0, 1], atol=1e-12)
    assert torch.allclose(step1.noise[:, 0, 3], (q[:, 0, 2] + q[:, 0, 3]) / math.sqrt(2), atol=1e-12)
    assert not torch.allclose(step1.noise[:, 0, 1], q[:, 0, 1])  # really split, with fresh noise
    assert step1.density[0, 1] == step1.density[0, 2] == 0.5 * step1.density[0, 0]

    # Step 2: pixel 2 moves back onto pixel 1; the vacated pixel 2 looks out of the frame (fresh noise).
    fwd2 = torch.stack([torch.tensor([[0.0, 0.0, -1.0, 0.0]], dtype=torch.float64), zero])
    bwd2 = torch.stack([torch.tensor([[0.0, 0.0, 50.0, 0.0]], dtype=torch.float64), zero])
    step2 = warp_frame(step1.noise, step1.density, fwd2, bwd2, draw)
    assert torch.allclose(step2.noise[:, 0, 1], q[:, 0, 1], rtol=0, atol=1e-12)
    assert torch.equal(step2.noise[:, 0, 0], q[:, 0, 0])
    assert step2.density[0, 1] == step2.density[0, 0]
    assert step2.fresh.tolist() == [[False, False, True, False]]


@pytest.mark.parametrize(("dx", "dy"), [(3, -2), (-5, 0), (0, 7)])
def test_integer_translation_without_degradation_moves_the_noise_exactly(dx, dy):
    warper = NoiseWarper(4, SIZE, SIZE, seed=11, degradation=0.0)
    forward, backward = _constant(dx, dy)
    previous = warper.noise()
    for _ in range(3):
        current = warper.step(forward, backward)
        assert _shifted_equal(previous, current, dx, dy)
        previous = current


def test_zero_flow_keeps_the_noise_unchanged():
    warper = NoiseWarper(4, SIZE, SIZE, seed=2, upsample=2, degradation=0.0)
    first = warper.noise().clone()
    still = torch.zeros(2, *warper.grid_size)
    for _ in range(3):
        assert torch.equal(warper.step(still, still), first)
    assert not bool(warper.fresh_mask.any())


def test_subpixel_motion_accumulates_with_or_without_upsampling():
    """0.25 output pixels per frame: exactly 2 pixels after 8 frames at upsample 1 (the remainder
    carries it) as at upsample 4 (whole grid pixels)."""
    coarse = NoiseWarper(2, 32, 32, seed=5, upsample=1, degradation=0.0)
    fine = NoiseWarper(2, 32, 32, seed=5, upsample=4, degradation=0.0)
    start_coarse, start_fine = coarse.noise().clone(), fine.noise().clone()
    for _ in range(8):
        coarse.step(*_constant(0.25, 0.0, 32, 32))
        fine.step(*_constant(1.0, 0.0, 128, 128))  # the same motion in grid pixels
    # at upsample 1 the 2 columns next to the entering edge mix with the noise entering there
    assert _shifted_equal(start_coarse[..., 2:], coarse.noise()[..., 2:], 2, 0)
    assert _shifted_equal(start_fine, fine.noise(), 2, 0)


def test_first_frame_is_the_seeded_warp_stream_noise():
    warper = NoiseWarper(3, 16, 24, seed=9, degradation=0.0)
    assert torch.equal(warper.noise(), frame_noise(9, 0, (3, 16, 24), stream="warp"))
    pooled = NoiseWarper(3, 16, 24, seed=9, upsample=2, degradation=0.0).noise()
    grid = frame_noise(9, 0, (3, 32, 48), stream="warp")
    assert torch.allclose(pooled, grid.reshape(3, 16, 2, 24, 2).sum(dim=(2, 4)) / 2)


def test_degradation_blend_matches_the_paper_formula():
    g = torch.Generator().manual_seed(1)
    q, z = torch.randn(2, 4, 200_000, generator=g)
    assert torch.equal(degrade(q, z, 0.0), q)
    assert torch.allclose(degrade(q, z, 1.0), z)
    blended = degrade(q, z, 0.3)
    assert torch.allclose(blended, (0.7 * q + 0.3 * z) / math.sqrt(0.7**2 + 0.3**2))
    assert abs(float(blended.var()) - 1.0) < 0.01


# ---------------------------------------------------------------------------------------------- Gaussianity

FLOWS = {
    "translation": lambda: _constant(3.3, -1.7),
    "zoom_in": lambda: _affine(1.04, 0.0),
    "zoom_out": lambda: _affine(0.96, 0.0),
    "rotation": lambda: _affine(1.0, 3.0),
    "random_smooth": lambda: _smooth_random(3, 4.0),
}


def _assert_standard_normal(frame: torch.Tensor, where: str) -> None:
    stats = gaussianity(frame)
    assert abs(stats.mean) < 0.04, f"{where}: mean {stats.mean}"
    assert abs(stats.var - 1.0) < 0.05, f"{where}: variance {stats.var}"
    assert stats.ks_p > 1e-3, f"{where}: K-S {stats.ks} (p {stats.ks_p})"
    assert abs(stats.moran_i) < 0.03, f"{where}: Moran's I {stats.moran_i}"


@pytest.mark.parametrize("upsample", [1, 2])
@pytest.mark.parametrize("kind", sorted(FLOWS))
def test_every_frame_is_standard_normal_without_spatial_correlation(kind, upsample):
    warper = NoiseWarper(4, SIZE, SIZE, seed=17, upsample=upsample, degradation=0.0)
    forward, backward = FLOWS[kind]()
    if upsample > 1:
        from videogen.noise.flow import resize_flow

        forward, backward = resize_flow(forward, warper.grid_size), resize_flow(backward, warper.grid_size)
    _assert_standard_normal(warper.noise(), f"{kind} frame 0")
    for t in range(1, 13):
        _assert_standard_normal(warper.step(forward, backward), f"{kind} frame {t}")


def test_long_zoom_in_stays_standard_normal():
    """Densities of pixels split every frame shrink geometrically; the merge must stay exact."""
    warper = NoiseWarper(4, SIZE, SIZE, seed=4, degradation=0.0)
    forward, backward = _affine(1.05, 0.0)
    for _ in range(80):
        frame = warper.step(forward, backward)
    _assert_standard_normal(frame, "zoom-in frame 80")
    assert float(warper.density.min()) > 0.0


def test_gaussianity_checks_reject_bilinear_warping():
    """The statistics used above do flag a plainly interpolated (non-Gaussian-preserving) warp."""
    noise = frame_noise(0, 0, (4, SIZE, SIZE))
    theta = torch.tensor([[[0.93, 0.0, 0.0], [0.0, 0.93, 0.0]]])
    grid = F.affine_grid(theta, (1, 4, SIZE, SIZE), align_corners=False)
    warped = F.grid_sample(noise[None], grid, mode="bilinear", align_corners=False)[0]
    stats = gaussianity(warped)
    assert stats.moran_i > 0.1 and stats.var < 0.9


def test_ks_statistic_matches_scipy():
    values = frame_noise(1, 0, (2, 40, 40)) * 1.03
    d, p = ks_normal(values)
    ref = scipy.stats.kstest(values.reshape(-1).numpy().astype(np.float64), "norm")
    assert d == pytest.approx(ref.statistic, abs=1e-9)
    assert p == pytest.approx(ref.pvalue, abs=0.02)


# ---------------------------------------------------------------------------------------------- time


def _mean_flow_correlation(degradation: float, flows, frames: int = 8) -> float:
    warper = NoiseWarper(4, SIZE, SIZE, seed=21, degradation=degradation)
    forward, backward = flows
    values, previous = [], warper.noise()
    for _ in range(frames):
        current = warper.step(forward, backward)
        values.append(flow_correlation(previous, current, backward))
        previous = current
    return sum(values) / len(values)


def test_temporal_correlation_along_the_flow_is_high_and_falls_with_degradation():
    gammas = [0.0, 0.25, 0.5, 0.75, 1.0]
    smooth = [_mean_flow_correlation(g, _smooth_random(8, 3.0)) for g in gammas]
    # along the flow rounded frame by frame; with sub-pixel remainders neighbours cross pixel
    # boundaries on different frames, so this non-rigid flow splits and merges more (0.80 -> 0.65)
    assert smooth[0] > 0.6
    assert all(a > b for a, b in zip(smooth, smooth[1:], strict=False))
    assert abs(smooth[-1]) < 0.03
    translation = _constant(2, 1)
    for g in gammas:
        expected = (1 - g) ** 2 / ((1 - g) ** 2 + g**2)
        assert _mean_flow_correlation(g, translation) == pytest.approx(expected, abs=0.03)


def test_pixels_whose_flows_leave_the_frame_get_fresh_noise():
    warper = NoiseWarper(4, SIZE, SIZE, seed=6, degradation=0.0)
    previous = warper.noise().clone()
    current = warper.step(*_constant(5, 0))
    expected = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    expected[:, :5] = True
    assert torch.equal(warper.fresh_mask, expected)
    assert torch.equal(warper.density, torch.ones(SIZE, SIZE))  # fresh pixels weigh like moved ones
    assert not torch.isin(current[:, :, :5], previous).any()
    _assert_standard_normal(current, "after a partial exit")

    gone = warper.step(*_constant(SIZE, 0))
    assert bool(warper.fresh_mask.all())
    assert abs(float(torch.corrcoef(torch.stack([gone.reshape(-1), current.reshape(-1)]))[0, 1])) < 0.03
    _assert_standard_normal(gone, "after a full exit")


@pytest.mark.parametrize(
    ("forward", "backward", "message"),
    [
        (torch.zeros(3, 8, 8), torch.zeros(2, 8, 8), "shaped (2, H, W)"),
        (torch.zeros(2, 8), torch.zeros(2, 8, 8), "shaped (2, H, W)"),
        (torch.zeros(2, 9, 8), torch.zeros(2, 9, 8), "warp grid is (8, 8)"),
        (torch.zeros(2, 8, 8), torch.zeros(2, 8, 9), "warp grid is (8, 8)"),
        (torch.full((2, 8, 8), float("nan")), torch.zeros(2, 8, 8), "NaN"),
        (torch.zeros(2, 8, 8), torch.full((2, 8, 8), float("inf")), "NaN or infinite"),
        (torch.zeros(2, 8, 8, dtype=torch.int64), torch.zeros(2, 8, 8), "floating point"),
    ],
)
def test_bad_flows_raise_clear_errors(forward, backward, message):
    warper = NoiseWarper(1, 8, 8, seed=0)
    with pytest.raises(FlowError, match=re.escape(message)) as info:
        warp_frame(warper.noise(), warper.density, forward, backward, lambda kind, n: torch.randn(1, n))
    assert isinstance(info.value, VideogenError)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- sampler API


def _camera_spec(**overrides) -> WarpedNoiseSpec:
    moves = [CameraMoveSpec(frames=4, pan=0.03, zoom=0.02), CameraMoveSpec(rotate=4.0, tilt=-0.02)]
    return WarpedNoiseSpec(source="camera", camera=CameraSpec(moves=moves), **overrides)


@pytest.mark.parametrize("stride", [1, 2])
def test_any_frame_range_equals_the_slice_of_the_whole_video(stride):
    spec = _camera_spec(temporal_stride=stride, upsample=2)
    whole = warped_latent_noise(spec, 3, 10, 4, 16, 24, range(10))
    assert whole.shape == (1, 4, 10, 16, 24)
    for frames in (range(0, 3), range(3, 7), range(7, 10), range(5, 5), range(9, 10)):
        part = warped_latent_noise(spec, 3, 10, 4, 16, 24, frames)
        assert torch.equal(part, whole[:, :, frames.start : frames.stop])


def test_temporal_stride_keeps_every_stride_th_warped_frame():
    every = warped_latent_noise(_camera_spec(temporal_stride=1), 4, 9, 4, 16, 16, range(9))
    strided = warped_latent_noise(_camera_spec(temporal_stride=2), 4, 5, 4, 16, 16, range(5))
    assert torch.equal(strided, every[:, :, ::2])


def test_warped_latents_depend_on_the_seed_and_move_with_the_camera():
    spec = _camera_spec(degradation=0.0)
    a = warped_latent_noise(spec, 1, 6, 4, 32, 32, range(6))
    assert torch.equal(a, warped_latent_noise(spec, 1, 6, 4, 32, 32, range(6)))
    assert not torch.equal(a, warped_latent_noise(spec, 2, 6, 4, 32, 32, range(6)))
    consecutive = torch.corrcoef(torch.stack([a[0, :, 1].reshape(-1), a[0, :, 0].reshape(-1)]))[0, 1]
    assert float(consecutive) < 0.9  # the camera moved the noise, it is not frozen


def test_frames_must_be_a_contiguous_range_inside_the_video():
    spec = _camera_spec()
    for frames in (range(0, 6, 2), range(4, 12), range(-1, 2)):
        with pytest.raises(ValueError, match="contiguous range"):
            warped_latent_noise(spec, 0, 10, 4, 8, 8, frames)
