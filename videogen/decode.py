"""VAE decoding in fixed-size chunks of frames.

A 2-D KL VAE decodes each frame on its own, so decoding ``chunk`` frames at a time gives the same
pixels as decoding all at once while holding only one chunk of pixels: ``x = D(z / scaling_factor)``,
mapped from [-1, 1] to [0, 1]. A temporal decoder (Stable Video Diffusion's) mixes the frames it
decodes together; each chunk is then decoded with up to ``halo`` latent frames of context on each
side, taken from the neighbouring chunks or from context frames beside the ones to decode, and only
the chunk's own frames are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from diffusers import AutoencoderKL


@torch.no_grad()
def decode_chunks(
    vae: AutoencoderKL,
    latents: torch.Tensor,
    chunk: int,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    halo: int = 0,
    context: tuple[int, int] = (0, 0),
) -> Iterator[torch.Tensor]:
    """Yield float frames ``(n, H, W, 3)`` in [0, 1] (CPU, fp32), ``chunk`` frames at a time.

    ``latents`` is ``(1, C, F, h, w)``; only one chunk (with its halo) is moved to the VAE's device at a
    time. ``decode(z)`` maps ``(n, C, h, w)`` latents over the scaling factor to pixels ``(n, 3, H, W)``
    (default ``vae.decode(z).sample``). ``context = (left, right)``: that many first and last frames of
    ``latents`` are context only, never yielded; a chunk is decoded with up to ``halo`` frames beside it.
    """
    if latents.shape[0] != 1:
        raise ValueError("decode one video at a time")
    left, right = context
    num_frames = latents.shape[2] - left - right
    decode = decode or (lambda z: vae.decode(z).sample)
    for start in range(0, num_frames, chunk):
        stop = min(start + chunk, num_frames)
        lo, hi = max(-left, start - halo), min(num_frames + right, stop + halo)
        z = latents[0, :, left + lo : left + hi].permute(1, 0, 2, 3)
        z = z.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        image = decode(z)[start - lo : stop - lo].float()
        yield (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[0, 1] floats to uint8 with rounding, as diffusers' ``numpy_to_pil`` does."""
    return (frames.numpy() * 255).round().astype(np.uint8)
