"""Warped initial latent noise for the sampler, per global latent frame.

Resolution choice: the warp runs on a grid of ``(upsample * height, upsample * width)`` pixels, where
(height, width) is the *latent* size. Flow sources are asked for flows directly on that grid, in
grid pixels: camera and drag motion is defined in frame fractions, so it is exact at any size; a
driving video's optical flow and a flow file's flows (given at the video's pixel resolution) are
resized to the grid with their (dx, dy) rescaled by the size ratio. The noise is read out at the
latent size by pooling ``upsample x upsample`` blocks (``sum / upsample``).

The sequence is always computed from frame 0 in one stream (only the current frame is held), and
all randomness of frame ``t`` is drawn from ``frame_noise(seed, t, ..., stream="warp")``, so any
contiguous slice of frames equals the same slice of the whole video, however the frames are split
across workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from videogen.errors import MediaError
from videogen.noise.flow import flows_from_spec
from videogen.noise.warp import OFF_FRAME, NoiseWarper, torch_threads
from videogen.noise.warp_spec import WarpedNoiseSpec, validate


@dataclass(frozen=True)
class WarpedFrame:
    """One output frame: its global index, noise (C, H, W) and the motion that led to it.

    ``flow`` (2, H, W) is the forward flow since the previous output frame, in output pixels (the
    sum of the ``temporal_stride`` per-step flows, pooled to the output size, no-match pixels as
    zero motion); zero for frame 0.
    """

    index: int
    noise: torch.Tensor
    flow: torch.Tensor


def motion_frames(spec: WarpedNoiseSpec, num_frames: int) -> int:
    """How many motion frames (warp steps + 1) ``num_frames`` output frames need."""
    return (num_frames - 1) * spec.temporal_stride + 1


def _pool_flow(flow: torch.Tensor, factor: int) -> torch.Tensor:
    """Average a grid flow over ``factor x factor`` blocks in output pixels; no-match pixels count as 0."""
    flow = torch.where(flow.abs() >= OFF_FRAME / 2, torch.zeros_like(flow), flow)
    if factor == 1:
        return flow
    return F.avg_pool2d(flow[None], factor)[0] / factor


def iter_warped_noise(
    spec: WarpedNoiseSpec,
    seed: int,
    num_frames: int,
    channels: int,
    height: int,
    width: int,
    *,
    stop: int | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[WarpedFrame]:
    """Yield output frames ``0 .. stop-1`` (default: all ``num_frames``) of the warped noise video."""
    validate(spec)
    stop = num_frames if stop is None else min(stop, num_frames)
    k, stride = spec.upsample, spec.temporal_stride
    warper = NoiseWarper(channels, height, width, seed=seed, upsample=k, degradation=spec.degradation, device=device)
    total = motion_frames(spec, num_frames)
    flows = flows_from_spec(spec, warper.grid_size, total)
    motion = torch.zeros(2, height, width)
    if stop > 0:
        yield WarpedFrame(0, warper.noise(), motion)
    for step in range(1, motion_frames(spec, stop)):
        pair = next(flows, None)
        if pair is None:
            raise MediaError(
                f"noise.warped.{spec.source}: the motion source ends after {step} frames; "
                f"{num_frames} latent frames x temporal_stride {stride} need {total}"
            )
        forward, backward = pair
        noise = warper.step(forward, backward)
        motion = motion + _pool_flow(forward, k)
        if step % stride == 0:
            yield WarpedFrame(step // stride, noise, motion)
            motion = torch.zeros(2, height, width)


def warped_latent_noise(
    spec: WarpedNoiseSpec,
    seed: int,
    num_frames: int,
    channels: int,
    height: int,
    width: int,
    frames: range,
    *,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Warped noise for the global frames ``frames``, shaped (1, channels, len(frames), height, width).

    ``frames`` is a contiguous sub-range of ``range(num_frames)``; the result equals that slice of
    the full video's noise. Frames before ``frames.start`` are computed and dropped, never stored.
    Computing on the CPU (the default, one thread) is bit-reproducible; CUDA scatter-adds are not
    ordered, so CUDA results agree only to rounding.
    """
    if frames.step != 1 or frames.start < 0 or frames.stop > num_frames or frames.start > frames.stop:
        raise ValueError(f"frames must be a contiguous range within 0..{num_frames}, got {frames}")
    out = torch.empty(1, channels, len(frames), height, width)
    stream = iter_warped_noise(spec, seed, num_frames, channels, height, width, stop=frames.stop, device=device)
    with torch_threads(1):
        for frame in stream:
            if frame.index >= frames.start:
                out[0, :, frame.index - frames.start] = frame.noise.cpu()
    return out
