"""Clip and patch parallelism for Stable Video Diffusion's ``UNetSpatioTemporalConditionModel``.

**Clip** (Video-Infinity's frame split, arXiv 2406.16260, in its exact form). Each worker owns a
contiguous clip of frames and calls the UNet on its frames only; whatever mixes frames gets what it
needs from the other clips, so every clip's output equals the same frames of the whole-video call:

``TemporalResnetBlock``: ``norm1 -> SiLU -> conv1 -> + temb -> norm2 -> SiLU -> conv2``, plus the input
    Both convs are Conv3d with a ``(3, 1, 1)`` kernel, so one halo exchange of the block's input brings
    2 frames from each neighbour (one per conv). The block runs on ``[halo | clip | halo]`` with the convs'
    own zero padding: at an end of the video that is the single-device padding; at a halo's outer edge it
    is wrong, and the error moves inwards one frame per conv, so after the two convs it covers the halo
    and never the clip. Both GroupNorms take their statistics over channels, frames and pixels: each clip
    reduces its own frames to ``(count, mean, M2)`` per group, combined over the clips (and first over the
    patch bands when each clip holds a band) with Chan's formula, and the halo is normalised with them
    too. The time embedding is one per video repeated over its frames (checked), so halo frames take
    the clip's edge frames' values.
Temporal self-attention (``attn1`` of every ``TemporalBasicTransformerBlock``)
    The keys and values of all frames are all-gathered (clips of uneven length included), one
    collective per attention; the queries are the clip's own. ``attn2`` reads the image embedding per
    frame and needs nothing.
Frame positions
    ``TransformerSpatioTemporalModel`` adds ``time_pos_embed(time_proj(f))`` to the tokens of frame ``f``
    with ``f = arange(F_local)``; its ``time_proj`` is given ``f + clip start``, so every frame carries
    its global index as on one worker.

The spatial ResNets and transformers, the ``AlphaBlender`` mixes and the per-frame GroupNorms act on
each frame alone. Installed through attention processors and per-instance ``forward`` wrappers, found by
class; the handle's ``remove`` restores the model.

**Patch** (DistriFusion / PCPP, :mod:`parallel.patch`) on the modules
:meth:`~videogen.models.families.svd.SvdFamily.spatial_modules` names: 3x3 convs with halos, spatial
self-attention over every band's keys, GroupNorms (the temporal ResNets' 5-D ones included)
synchronised over the bands. The UNet also gets :data:`~videogen.models.families.svd.LATENT_WINDOW`, the
band it is called on, so the conditioning image latent is cut to the same rows.

Decoding by clips with a frame halo is :mod:`parallel.svd_decode`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import TemporalResnetBlock
from torch import nn

from parallel.clip import ClipParallelConfig
from parallel.comm import AxisComm, combine_stats
from parallel.dual_scope import (
    apply_group_norm,
    check_temporal_call,
    group_stats,
    patch_forward,
    temporal_kv,
    temporal_output,
    temporal_q,
)
from parallel.patch import PatchParallelConfig, PatchParallelHandle, PatchSplit, apply_patch_parallel
from videogen.errors import ConfigError
from videogen.models.families.svd import LATENT_WINDOW
from videogen.models.family import family_named
from videogen.models.layers import SpatialModules, TemporalModules

__all__ = [
    "TEMPORAL_HALO",
    "SvdClipHandle",
    "SvdPatchHandle",
    "apply_svd_clip_parallel",
    "apply_svd_patch_parallel",
    "clip_bytes_per_call",
]

TEMPORAL_HALO = 2
"""Frames a ``TemporalResnetBlock`` needs from each neighbouring clip: one per ``(3, 1, 1)`` conv."""


class _ClipState:
    """This worker's clip, every clip's length and the communicators, shared by all installed pieces."""

    def __init__(self, comm: AxisComm, clips: list[range], band_comm: AxisComm | None):
        self.comm = comm
        self.band_comm = band_comm
        self.clips = clips
        self.frames = clips[comm.rank]
        self.sizes = [len(c) for c in clips]

    def group_norm(self, norm: nn.GroupNorm, x: torch.Tensor, own: slice) -> torch.Tensor:
        """GroupNorm of ``x`` ``[B, C, frames, h, w]`` with the whole video's statistics, from frames ``own``."""
        mean, var, count = group_stats(norm, x, own)
        if self.band_comm is not None:
            mean, var, count = combine_stats(self.band_comm, mean, var, count, "groupnorm_temporal")
        mean, var, _ = combine_stats(self.comm, mean, var, count, "groupnorm")
        return apply_group_norm(norm, x, mean, var)


def _check_resnet(path: str, block: TemporalResnetBlock) -> None:
    for conv in (block.conv1, block.conv2):
        ok = (
            isinstance(conv, nn.Conv3d)
            and tuple(conv.kernel_size) == (3, 1, 1)
            and tuple(conv.padding) == (1, 0, 0)
            and tuple(conv.stride) == (1, 1, 1)
            and tuple(conv.dilation) == (1, 1, 1)
            and conv.padding_mode == "zeros"
        )
        if not ok:
            raise ConfigError(f"{path}: a temporal conv clip sharding does not know: {conv}")
    if not isinstance(block.norm1, nn.GroupNorm) or not isinstance(block.norm2, nn.GroupNorm):
        raise ConfigError(f"{path}: temporal ResNet norms are not GroupNorms")


def _edge_padded(t: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """``t`` ``[B, F, C]`` with its first frame repeated ``left`` times before and its last ``right`` after."""
    return torch.cat([t[:, :1].expand(-1, left, -1), t, t[:, -1:].expand(-1, right, -1)], dim=1)


def _clip_resnet(
    block: TemporalResnetBlock, state: _ClipState, input_tensor: torch.Tensor, temb: torch.Tensor | None
) -> torch.Tensor:
    """``TemporalResnetBlock.forward`` on this clip's frames ``[B, C, F_local, h, w]`` (module docstring)."""
    frames = input_tensor.shape[2]
    left, right = state.comm.halo_exchange(input_tensor, 2, TEMPORAL_HALO, "conv_halo")
    lo = 0 if left is None else TEMPORAL_HALO
    hi = 0 if right is None else TEMPORAL_HALO
    own = slice(lo, lo + frames)
    h = torch.cat([p for p in (left, input_tensor, right) if p is not None], dim=2)
    h = state.group_norm(block.norm1, h, own)
    h = block.conv1(block.nonlinearity(h))
    if block.time_emb_proj is not None:
        if not torch.equal(temb, temb[:, :1].expand_as(temb)):
            raise ValueError("clip-sharded temporal ResNets need one time embedding for all frames of a video")
        t = block.time_emb_proj(block.nonlinearity(temb))
        h = h + _edge_padded(t, lo, hi)[:, :, :, None, None].permute(0, 2, 1, 3, 4)
    h = state.group_norm(block.norm2, h, own)
    h = block.conv2(block.dropout(block.nonlinearity(h)))
    shortcut = input_tensor if block.conv_shortcut is None else block.conv_shortcut(input_tensor)
    return shortcut + h[:, :, own]


class SvdClipAttnProcessor:
    """Temporal self-attention over every clip's frames: all keys and values gathered, own queries."""

    def __init__(self, state: _ClipState):
        self.state = state

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_temporal_call(attn, encoder_hidden_states, attention_mask)
        kv = torch.stack(temporal_kv(attn, hidden_states))  # [2, N, heads, frames, d]: K and V travel together
        flight = self.state.comm.start_all_gather_uneven(kv, 3, self.state.sizes, "attn_kv")
        del kv
        q = temporal_q(attn, hidden_states)  # computed while the gather is in flight
        kv = flight.wait()
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=attn.scale)
        return temporal_output(attn, out, hidden_states)


def _global_positions(forward: Callable[[torch.Tensor], torch.Tensor], offset: int, frames: torch.Tensor):
    return forward(frames + offset)


@dataclass
class SvdClipHandle:
    """A clip-parallel installation on one worker's UNet; :meth:`remove` restores the model."""

    frames: range
    clips: list[range]
    comm: AxisComm
    _undo: list[Callable[[], None]]

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


def _agree_on_clips(comm: AxisComm, frames: range, num_frames: int) -> list[range]:
    """Every rank's clip, checked on every rank alike to tile the video in rank order."""
    mine = torch.tensor([frames.start, frames.stop, num_frames], device=comm.device)
    rows = [r.tolist() for r in comm.all_gather(mine, "setup")]
    clips = [range(row[0], row[1]) for row in rows]
    bounds = [0] + [b for c in clips for b in (c.start, c.stop)] + [num_frames]
    tiled = all(a == b for a, b in zip(bounds[0::2], bounds[1::2], strict=True))
    if any(row[2] != num_frames for row in rows) or not tiled:
        raise ConfigError(f"the clips {clips} do not tile the {num_frames} frames in rank order")
    if len(clips) > 1 and min(len(c) for c in clips) < TEMPORAL_HALO:
        raise ConfigError(
            f"a clip of {min(len(c) for c in clips)} frames is shorter than the {TEMPORAL_HALO}-frame temporal halo; "
            "use fewer clip workers or more frames"
        )
    return clips


def clip_bytes_per_call(
    resnets: list[tuple[int, int, list[int]]],
    attentions: list[tuple[int, int]],
    clips: list[range],
    rank: int,
    batch: int,
    element_size: int,
) -> dict[str, float]:
    """Bytes clip worker ``rank`` receives in one UNet call of batch ``batch`` under :func:`apply_svd_clip_parallel`,
    by kind, as its collectives count them. ``resnets``: per temporal ResNet its input's channels ``C``, pixels
    ``h w`` (this worker's band) and the groups of its two GroupNorms; ``attentions``: per temporal
    self-attention its tokens per frame ``h w`` and inner width; activations of ``element_size`` bytes.

    ``conv_halo``: :data:`TEMPORAL_HALO` frames of ``B x C x h w`` from each neighbour per ResNet;
    ``groupnorm``: ``(n-1) x 3 x B x groups`` float64 per GroupNorm (``(count, mean, M2)``);
    ``attn_kv``: the other ``n-1`` clips, padded to the longest, of K and V, ``2 x B h w x inner`` per frame.
    """
    n = len(clips)
    neighbours = sum(1 for peer in (rank - 1, rank + 1) if 0 <= peer < n)
    longest = max(len(c) for c in clips)
    out = {"conv_halo": 0.0, "groupnorm": 0.0, "attn_kv": 0.0}
    for channels, pixels, groups in resnets:
        out["conv_halo"] += neighbours * TEMPORAL_HALO * batch * channels * pixels * element_size
        out["groupnorm"] += sum((n - 1) * 3 * batch * g * 8 for g in groups)
    for pixels, inner in attentions:
        out["attn_kv"] += (n - 1) * 2 * batch * pixels * inner * longest * element_size
    return out


def apply_svd_clip_parallel(
    unet: nn.Module,
    comm: AxisComm,
    frames: range,
    num_frames: int,
    config: ClipParallelConfig,
    band_comm: AxisComm | None = None,
    modules: TemporalModules | None = None,
) -> SvdClipHandle:
    """Install exact clip parallelism on an SVD ``unet``: this worker owns frames ``frames`` of ``num_frames``.

    The signature of :func:`parallel.clip.apply_clip_parallel`; only ``config.mode == "exact"``. Every rank
    of ``comm`` must call it (one small collective checks that the clips tile the video).
    """
    if config.mode != "exact":
        raise ConfigError(f"parallel.clip_mode: Stable Video Diffusion runs exact clips only, not {config.mode}")
    modules = modules if modules is not None else family_named("svd").temporal_modules(unet)
    attentions = [attn for _, attn in modules.attentions() if not attn.is_cross_attention]
    if any(isinstance(attn.processor, SvdClipAttnProcessor) for attn in attentions):
        raise RuntimeError("clip parallelism is already installed on this UNet; remove it first")
    for path, block in modules.convs:
        _check_resnet(path, block)
    clips = _agree_on_clips(comm, frames, num_frames)
    state = _ClipState(comm, clips, band_comm)
    undo: list[Callable[[], None]] = []
    processor = SvdClipAttnProcessor(state)
    for attn in attentions:
        previous = attn.processor
        attn.set_processor(processor)
        undo.append(functools.partial(attn.set_processor, previous))
    for _, block in modules.convs:
        undo.append(patch_forward(block, functools.partial(_clip_resnet, block, state)))
    for _, proj in modules.positions:
        undo.append(patch_forward(proj, functools.partial(_global_positions, proj.forward, state.frames.start)))
    return SvdClipHandle(state.frames, clips, comm, undo)


@dataclass
class SvdPatchHandle:
    """Patch parallelism on an SVD UNet: ``patch`` is :mod:`parallel.patch`'s handle; :meth:`remove`
    restores the model and its latent window."""

    patch: PatchParallelHandle
    unet: nn.Module

    def remove(self) -> None:
        if hasattr(self.unet, LATENT_WINDOW):
            delattr(self.unet, LATENT_WINDOW)
        self.patch.remove()


def apply_svd_patch_parallel(
    unet: nn.Module,
    comm: AxisComm,
    split: PatchSplit,
    config: PatchParallelConfig,
    modules: SpatialModules | None = None,
) -> SvdPatchHandle:
    """:func:`parallel.patch.apply_patch_parallel` on an SVD ``unet``, which is then called on band
    ``split.band(comm.rank)`` of the noisy latents and of the image latent alike."""
    modules = modules if modules is not None else family_named("svd").spatial_modules(unet)
    handle = apply_patch_parallel(unet, comm, split, config, modules=modules)
    band = split.band(comm.rank)
    setattr(unet, LATENT_WINDOW, (split.axis, band.start, len(band)))
    return SvdPatchHandle(handle, unet)
