"""Gaussian noise drawn per *global* frame index.

The noise of frame ``i`` comes from a CPU generator seeded with ``frame_seed(seed, i, stream)``,
so it never depends on how many frames are rendered, how they are split across workers or on
which device the render runs (docs/architecture.md, principle 2). ``stream`` separates independent
uses of the same seed (initial latents, per-step sampler noise, fresh noise in warping).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_MASK64 = (1 << 64) - 1
_STREAMS = {"init": 0, "step": 1, "warp": 2, "image": 3, "layout": 4}


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def frame_seed(seed: int, frame: int, stream: str = "init", step: int = 0) -> int:
    """A 63-bit generator seed that mixes (job seed, stream, step, global frame index)."""
    if stream not in _STREAMS:
        raise ValueError(f"unknown noise stream {stream!r}; known: {sorted(_STREAMS)}")
    x = _splitmix64(seed & _MASK64)
    for part in (_STREAMS[stream], step, frame):
        x = _splitmix64(x ^ (part & _MASK64))
    return x & ((1 << 63) - 1)


def frame_noise(
    seed: int,
    frame: int,
    shape: tuple[int, ...],
    stream: str = "init",
    step: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` for one global frame (always drawn on the CPU)."""
    generator = torch.Generator(device="cpu").manual_seed(frame_seed(seed, frame, stream, step))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)


def video_noise(
    seed: int,
    frames: Iterable[int],
    channels: int,
    height: int,
    width: int,
    stream: str = "init",
    step: int = 0,
) -> torch.Tensor:
    """Noise for the listed global frames, shaped ``(1, channels, len(frames), height, width)``."""
    per_frame = [frame_noise(seed, f, (channels, height, width), stream, step) for f in frames]
    if not per_frame:
        return torch.zeros(1, channels, 0, height, width)
    return torch.stack(per_frame, dim=1).unsqueeze(0)
