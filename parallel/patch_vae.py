"""VAE decoding shared by the patch workers of one clip: by frames, or by rows of every frame.

The patch workers of a clip all hold the clip's whole latents after sampling
(:class:`parallel.patch.PatchDenoiser` gathers every step's output), so decoding can be split
two ways:

*frames* (no communication)
    Worker ``r`` decodes the ``r``-th contiguous share of the clip's frames
    (:func:`frame_share`) into its own segment. With ``patch`` the innermost mesh axis, rank
    order is frame order, so the segments join in rank order. This is the cheaper way whenever a
    clip has at least as many frames as patch workers.

*patch* (large frames that one worker cannot decode)
    The decoder's ``conv_in`` and mid block (which holds a whole-frame self-attention) run on
    the full latent, replicated, as DistVAE does; the mid block's output is cut into equal bands
    along H or W; the up blocks, ``conv_norm_out`` and ``conv_out`` run on the band with the
    synchronous halo convolutions and all-reduced GroupNorm statistics of :mod:`parallel.patch`,
    so every band equals the same rows of the single-device decode. Peak activation memory of
    the full-resolution layers drops to ``1/N``. The bands of each chunk of frames are gathered
    on patch rank 0, which writes them (``kind="decode"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from diffusers import AutoencoderKL
from torch import nn

from parallel.clip import split_frames
from parallel.comm import AxisComm
from parallel.dual_scope import patch_forward
from parallel.patch import (
    PatchParallelConfig,
    PatchSplit,
    PatchState,
    agree_on_split,
    install_spatial,
    split_rows,
)
from videogen.errors import ConfigError
from videogen.models.layers import find_spatial_modules

__all__ = ["decode_method", "decode_patch_chunks", "frame_share", "apply_patch_parallel_vae"]

_DECODER_BANDED = ("decoder.up_blocks", "decoder.conv_norm_out", "decoder.conv_out")
_SYNC = PatchParallelConfig(mode="sync", groupnorm="exact")


def decode_method(config: PatchParallelConfig, num_frames: int, parts: int) -> str:
    """``"frames"`` or ``"patch"``: ``config.decode``, with ``"auto"`` meaning frames when ``num_frames >= parts``."""
    if config.decode != "auto":
        return config.decode
    return "frames" if num_frames >= parts else "patch"


def frame_share(frames: range, parts: int, index: int) -> range:
    """The contiguous global frames of ``frames`` that patch worker ``index`` of ``parts`` decodes by frames."""
    if len(frames) < parts:
        raise ConfigError(
            f"decoding by frames needs at least one frame per patch worker: {len(frames)} frames, "
            f"{parts} workers; use patch.decode: patch"
        )
    share = split_frames(len(frames), parts)[index]
    return range(frames.start + share.start, frames.start + share.stop)


def _cut_after(module: nn.Module, split: PatchSplit, rank: int) -> Callable[[], None]:
    forward = module.forward

    def banded(*args, **kwargs):
        return split.take(forward(*args, **kwargs), rank)

    return patch_forward(module, banded)


def apply_patch_parallel_vae(vae: AutoencoderKL, comm: AxisComm, split: PatchSplit) -> Callable[[], None]:
    """Make ``vae.decode`` return this worker's band of pixel rows; returns the function that undoes it.

    ``split`` cuts the latent (one resolution level: the decoder only upsamples after it). Every
    rank of ``comm`` must call this and then decode the same latents.
    """
    if split.levels != 1:
        raise ConfigError("a VAE split has one resolution level, the latent's")
    agree_on_split(comm, split, _SYNC)
    state = PatchState(comm, split, _SYNC)
    undo = install_spatial(find_spatial_modules(vae, within=_DECODER_BANDED), state)
    undo.append(_cut_after(vae.decoder.mid_block, split, comm.rank))

    def remove() -> None:
        while undo:
            undo.pop()()

    return remove


@torch.no_grad()
def decode_patch_chunks(
    vae: AutoencoderKL, latents: torch.Tensor, comm: AxisComm, chunk: int, split: str = "auto"
) -> Iterator[torch.Tensor | None]:
    """Patch-parallel :func:`videogen.decode.decode_chunks`: frames ``(n, H, W, 3)`` in [0, 1] on rank 0.

    Yields one item per chunk of ``chunk`` frames on every rank, the frames on rank 0 and
    ``None`` elsewhere; every rank must exhaust the iterator (each chunk is a collective).
    """
    if latents.shape[0] != 1:
        raise ValueError("decode one video at a time")
    bands = split_rows(tuple(latents.shape[-2:]), comm.size, 1, split)
    remove = apply_patch_parallel_vae(vae, comm, bands)
    try:
        for start in range(0, latents.shape[2], chunk):
            z = latents[0, :, start : start + chunk].permute(1, 0, 2, 3)
            z = z.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
            image = (vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)
            parts = comm.gather(image, "decode")
            yield None if parts is None else torch.cat(parts, dim=bands.axis).permute(0, 2, 3, 1).cpu()
    finally:
        remove()
