"""Attention backends: torch SDPA (default, everywhere) or xformers (CUDA only).

xformers imports on a CPU machine and ``is_xformers_available()`` says True there, yet its
kernels refuse CPU tensors; so the choice is made by device plus a trial call, never by
availability alone.
"""

from __future__ import annotations

import torch
from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from videogen.errors import ConfigError


def _xformers_trial(device: torch.device, dtype: torch.dtype) -> None:
    if device.type != "cuda":
        raise ConfigError(
            f"model.attention: xformers runs on CUDA only and this render runs on {device.type}; use sdpa"
        )
    try:
        import xformers.ops
    except ImportError:
        raise ConfigError("model.attention: xformers is not installed (pip install 'videogen[xformers]')") from None
    probe = torch.zeros(1, 8, 1, 64, device=device, dtype=dtype)
    try:
        xformers.ops.memory_efficient_attention(probe, probe, probe)
    except (NotImplementedError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"model.attention: xformers cannot run here: {first}") from None


def check_backend(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """Fail before any weights load if ``backend`` cannot run on ``device``."""
    if backend == "xformers":
        _xformers_trial(device, dtype)
    elif backend != "sdpa":
        raise ConfigError(f"model.attention: unknown backend {backend!r} (sdpa or xformers)")


def set_attention_backend(unet: UNet3DConditionModel, backend: str) -> None:
    """Install ``backend`` ("sdpa" or "xformers") on every attention module of ``unet``."""
    if backend == "sdpa":
        unet.set_attn_processor(AttnProcessor2_0())
    elif backend == "xformers":
        _xformers_trial(unet.device, unet.dtype)
        unet.enable_xformers_memory_efficient_attention()
    else:
        raise ConfigError(f"model.attention: unknown backend {backend!r} (sdpa or xformers)")
