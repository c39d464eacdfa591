"""VAE decoding in fixed-size chunks of frames.

The VAE decodes each frame on its own (a 2-D KL VAE), so decoding ``chunk`` frames at a time
gives the same pixels as decoding all at once while holding only one chunk of pixels:
``x = D(z / scaling_factor)``, mapped from [-1, 1] to [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from diffusers import AutoencoderKL


@torch.no_grad()
def decode_chunks(vae: AutoencoderKL, latents: torch.Tensor, chunk: int) -> Iterator[torch.Tensor]:
    """Yield float frames ``(n, H, W, 3)`` in [0, 1] (CPU, fp32), ``chunk`` frames at a time.

    ``latents`` is ``(1, C, F, h, w)``; only one chunk is moved to the VAE's device at a time.
    """
    if latents.shape[0] != 1:
        raise ValueError("decode one video at a time")
    num_frames = latents.shape[2]
    for start in range(0, num_frames, chunk):
        z = latents[0, :, start : start + chunk].permute(1, 0, 2, 3)
        z = z.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        image = vae.decode(z).sample.float()
        yield (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[0, 1] floats to uint8 with rounding, as diffusers' ``numpy_to_pil`` does."""
    return (frames.numpy() * 255).round().astype(np.uint8)
