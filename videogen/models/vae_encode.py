"""VAE encoding in the precision diffusers uses: float32 for a float16 VAE whose config sets ``force_upcast``.

A float16 VAE encoder's activations can overflow (Stable Diffusion's and SVD's VAEs set ``force_upcast``
for that reason), so diffusers encodes images in float32 there: ``StableVideoDiffusionPipeline``
(``vae.dtype == float16 and vae.config.force_upcast``, the rule followed here) and
``StableDiffusionXLImg2ImgPipeline.prepare_latents`` (https://github.com/huggingface/diffusers). Only the
encoding is upcast: bfloat16 and float32 VAEs encode in their own dtype, and decoding is untouched.
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin


def encodes_upcast(vae: ModelMixin) -> bool:
    """Whether ``vae`` encodes in float32: its weights are float16 and its config sets ``force_upcast``."""
    return vae.dtype == torch.float16 and bool(vae.config.get("force_upcast", False))


def encode_posterior(vae: ModelMixin, x: torch.Tensor) -> DiagonalGaussianDistribution:
    """``vae.encode(x).latent_dist`` for images ``x`` ``(B, 3, H, W)``, moved to the VAE's device.

    ``x`` is encoded in the VAE's dtype, or in float32 where :func:`encodes_upcast` says so: the parts the
    encoding uses (``encoder`` and ``quant_conv``) are cast to float32 for it and back to float16 after it,
    even when it raises (exact both ways, every float16 value being a float32 one). The posterior is then
    float32; the decoder never leaves float16.
    """
    if not encodes_upcast(vae):
        return vae.encode(x.to(device=vae.device, dtype=vae.dtype)).latent_dist
    parts = [part for part in (vae.encoder, vae.quant_conv) if part is not None]
    for part in parts:
        part.float()
    try:
        return vae.encode(x.to(device=vae.device, dtype=torch.float32)).latent_dist
    finally:
        for part in parts:
            part.half()
