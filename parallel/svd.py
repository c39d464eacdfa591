"""Clip and patch parallelism for Stable Video Diffusion's ``UNetSpatioTemporalConditionModel``.

**Clip** (Video-Infinity's frame split, arXiv 2406.16260, section 4). Each worker owns a contiguous clip
of frames and calls the UNet on its frames only; whatever mixes frames gets what it needs from the
other clips. In exact mode (``parallel.clip_mode: exact``) every clip's output equals the same frames
of the whole-video call:

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

**Dual-scope** (``parallel.clip_mode: dual_scope``, the paper's section 4.2; the mathematics is
:mod:`parallel.dual_scope`). The temporal self-attention of a query at global frame ``i`` sees, in one
softmax, the frames within ``local_radius`` of ``i`` and the global frames spread over the video, with
the timestep's scope biases; :class:`parallel.clip.ClipAttnProcessor` does it on a clip with one
exchange per attention of the ``local_radius`` edge frames' and the owned global frames' keys and values
(``attn_scope`` traffic). Everything else is as in exact mode. The frame positions are added to the
hidden states *before* the temporal block, so the exchanged keys and values already carry each frame's
global index, and the positions need no windows (sinusoidal, no length limit). ``parallel.groupnorm:
local`` gives the temporal ResNets' GroupNorms each clip's own statistics (its ``[halo | clip | halo]``
normalised with them), sending nothing; ``exact`` combines them as above. The clips equal
:func:`apply_svd_dual_scope_reference`, the same attention over the whole video in one process.

The schedule compares ``switch_timestep`` with the timestep the UNet is called with; SVD's Euler
sampler calls it with ``c_noise = ln(sigma) / 4`` (1.64 at ``sigma = 700`` down to -1.55 at 0.002), not
with DDPM's 0..1000.

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
from dataclasses import dataclass, replace

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import TemporalResnetBlock
from torch import nn

from parallel.clip import ClipAttnProcessor, ClipParallelConfig, _ClipState, min_clip_frames
from parallel.comm import AxisComm
from parallel.dual_scope import (
    DualScopeConfig,
    ReferenceHandle,
    TimestepRecorder,
    _ReferenceProcessor,
    _ReferenceState,
    global_frame_indices,
    group_norm_with_stats_of,
    patch_forward,
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
    "apply_svd_dual_scope_reference",
    "apply_svd_patch_parallel",
    "clip_bytes_per_call",
    "scope_bytes_per_call",
]

TEMPORAL_HALO = 2
"""Frames a ``TemporalResnetBlock`` needs from each neighbouring clip: one per ``(3, 1, 1)`` conv."""


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


_GroupNormWith = Callable[[nn.GroupNorm, torch.Tensor, slice], torch.Tensor]
"""``(norm, x, own) ->`` GroupNorm of ``x`` ``[B, C, frames, h, w]`` with the statistics it takes for frames ``own``."""


def _window_resnet(
    block: TemporalResnetBlock, x: torch.Tensor, own: slice, temb: torch.Tensor | None, group_norm: _GroupNormWith
) -> torch.Tensor:
    """``TemporalResnetBlock.forward`` on frames ``own`` of ``x`` ``[B, C, frames, h, w]``, which holds up to
    :data:`TEMPORAL_HALO` frames each side of them; ``temb`` ``[B, len(own), D]`` is those frames' time embedding."""
    h = group_norm(block.norm1, x, own)
    h = block.conv1(block.nonlinearity(h))
    if block.time_emb_proj is not None:
        if not torch.equal(temb, temb[:, :1].expand_as(temb)):
            raise ValueError("clip-sharded temporal ResNets need one time embedding for all frames of a video")
        t = block.time_emb_proj(block.nonlinearity(temb))
        h = h + _edge_padded(t, own.start, x.shape[2] - own.stop)[:, :, :, None, None].permute(0, 2, 1, 3, 4)
    h = group_norm(block.norm2, h, own)
    h = block.conv2(block.dropout(block.nonlinearity(h)))
    input_tensor = x[:, :, own]
    shortcut = input_tensor if block.conv_shortcut is None else block.conv_shortcut(input_tensor)
    return shortcut + h[:, :, own]


def _clip_resnet(
    block: TemporalResnetBlock, state: _ClipState, input_tensor: torch.Tensor, temb: torch.Tensor | None
) -> torch.Tensor:
    """``TemporalResnetBlock.forward`` on this clip's frames ``[B, C, F_local, h, w]`` (module docstring)."""
    frames = input_tensor.shape[2]
    left, right = state.comm.halo_exchange(input_tensor, 2, TEMPORAL_HALO, "conv_halo")
    lo = 0 if left is None else TEMPORAL_HALO
    x = torch.cat([p for p in (left, input_tensor, right) if p is not None], dim=2)
    return _window_resnet(block, x, slice(lo, lo + frames), temb, state.group_norm)


def _self_attentions(modules: TemporalModules) -> list[Attention]:
    """The temporal self-attentions (``attn1``); the cross-attentions to the image embedding act per frame."""
    return [attn for _, attn in modules.attentions() if not attn.is_cross_attention]


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


def _agree_on_clips(comm: AxisComm, frames: range, num_frames: int, config: ClipParallelConfig) -> list[range]:
    """Every rank's clip, checked on every rank alike to tile the video in rank order and to hold the
    frames its neighbours take from it."""
    mine = torch.tensor([frames.start, frames.stop, num_frames], device=comm.device)
    rows = [r.tolist() for r in comm.all_gather(mine, "setup")]
    clips = [range(row[0], row[1]) for row in rows]
    bounds = [0] + [b for c in clips for b in (c.start, c.stop)] + [num_frames]
    tiled = all(a == b for a, b in zip(bounds[0::2], bounds[1::2], strict=True))
    if any(row[2] != num_frames for row in rows) or not tiled:
        raise ConfigError(f"the clips {clips} do not tile the {num_frames} frames in rank order")
    halo = min_clip_frames(replace(config, conv_halo=TEMPORAL_HALO))
    if len(clips) > 1 and min(len(c) for c in clips) < halo:
        raise ConfigError(
            f"a clip of {min(len(c) for c in clips)} frames is shorter than the {halo}-frame temporal halo; "
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


def scope_bytes_per_call(
    attentions: list[tuple[int, int]],
    clips: list[range],
    rank: int,
    batch: int,
    element_size: int,
    config: DualScopeConfig,
) -> float:
    """Bytes clip worker ``rank`` receives in one UNet call of batch ``batch`` in the ``attn_scope``
    exchanges of dual-scope mode, which take the place of exact mode's ``attn_kv``
    (:func:`clip_bytes_per_call` gives the other kinds; ``groupnorm`` only with exact statistics).
    ``attentions`` as there: per temporal self-attention its tokens per frame ``h w`` and inner width.

    Per attention, K and V (``2 x B h w x inner`` per frame) of the ``local_radius`` edge frames of each
    neighbouring clip and of the global frames each other clip owns.
    """
    glob = global_frame_indices(clips[-1].stop, config.global_frames)
    frames_in = sum(
        (config.local_radius if abs(peer - rank) == 1 else 0) + sum(1 for g in glob if g in clip)
        for peer, clip in enumerate(clips)
        if peer != rank
    )
    return float(sum(2 * batch * pixels * inner * frames_in * element_size for pixels, inner in attentions))


def apply_svd_clip_parallel(
    unet: nn.Module,
    comm: AxisComm,
    frames: range,
    num_frames: int,
    config: ClipParallelConfig,
    band_comm: AxisComm | None = None,
    modules: TemporalModules | None = None,
) -> SvdClipHandle:
    """Install clip parallelism on an SVD ``unet``: this worker owns frames ``frames`` of ``num_frames``.

    The signature of :func:`parallel.clip.apply_clip_parallel`, exact or dual-scope (module docstring).
    Every rank of ``comm`` must call it (one small collective checks that the clips tile the video).
    """
    modules = modules if modules is not None else family_named("svd").temporal_modules(unet)
    attentions = _self_attentions(modules)
    if any(isinstance(attn.processor, ClipAttnProcessor) for attn in attentions):
        raise RuntimeError("clip parallelism is already installed on this UNet; remove it first")
    for path, block in modules.convs:
        _check_resnet(path, block)
    clips = _agree_on_clips(comm, frames, num_frames, config)
    recorder = TimestepRecorder()
    state = _ClipState(comm, clips, num_frames, config, recorder, band_comm)
    undo: list[Callable[[], None]] = []
    processor = ClipAttnProcessor(state)
    for attn in attentions:
        previous = attn.processor
        attn.set_processor(processor)
        undo.append(functools.partial(attn.set_processor, previous))
    for _, block in modules.convs:
        undo.append(patch_forward(block, functools.partial(_clip_resnet, block, state)))
    for _, proj in modules.positions:
        undo.append(patch_forward(proj, functools.partial(_global_positions, proj.forward, state.frames.start)))
    if config.mode == "dual_scope":
        undo.append(recorder.attach(unet).remove)
    return SvdClipHandle(state.frames, clips, comm, undo)


def _reference_resnet(
    block: TemporalResnetBlock, clips: list[range], input_tensor: torch.Tensor, temb: torch.Tensor | None
) -> torch.Tensor:
    """``TemporalResnetBlock.forward`` on the whole video with each clip's own GroupNorm statistics: each
    clip's frames computed on a window of up to :data:`TEMPORAL_HALO` frames each side, as its worker does."""
    num_frames = input_tensor.shape[2]
    bounds = [0] + [b for c in clips for b in (c.start, c.stop)] + [num_frames]
    if any(a != b for a, b in zip(bounds[0::2], bounds[1::2], strict=True)):
        raise ValueError(f"clips {clips} do not tile the {num_frames} frames of this call")
    outs = []
    for clip in clips:
        lo, hi = max(0, clip.start - TEMPORAL_HALO), min(num_frames, clip.stop + TEMPORAL_HALO)
        own = slice(clip.start - lo, clip.stop - lo)
        part = None if temb is None else temb[:, clip.start : clip.stop]
        outs.append(_window_resnet(block, input_tensor[:, :, lo:hi], own, part, group_norm_with_stats_of))
    return torch.cat(outs, dim=2)


def apply_svd_dual_scope_reference(
    unet: nn.Module,
    config: DualScopeConfig,
    local_groupnorm_clips: list[range] | None = None,
    modules: TemporalModules | None = None,
) -> ReferenceHandle:
    """Single-process dual-scope attention on an SVD ``unet``, then called on the whole video: the oracle of
    :func:`apply_svd_clip_parallel` in dual-scope mode.

    Every temporal self-attention gets :mod:`parallel.dual_scope`'s reference processor (each frame's
    keys masked to its local band, then the global frames' keys, with the scope biases of the UNet call's
    timestep); the frame positions stay the model's own, whose ``arange(F)`` are the global indices. With
    ``local_groupnorm_clips`` (the clips of a ``parallel.groupnorm: local`` run) the temporal ResNets take
    each clip's own GroupNorm statistics on a window of the clip and its halo, the formulation the clip
    workers use; without, the model's whole-video GroupNorms.
    """
    modules = modules if modules is not None else family_named("svd").temporal_modules(unet)
    recorder = TimestepRecorder()
    processor = _ReferenceProcessor(_ReferenceState(config, recorder))
    undo: list[Callable[[], None]] = []
    for attn in _self_attentions(modules):
        undo.append(functools.partial(attn.set_processor, attn.processor))
        attn.set_processor(processor)
    if local_groupnorm_clips is not None:
        clips = list(local_groupnorm_clips)
        for path, block in modules.convs:
            _check_resnet(path, block)
            undo.append(patch_forward(block, functools.partial(_reference_resnet, block, clips)))
    undo.append(recorder.attach(unet).remove)
    return ReferenceHandle(undo, recorder)


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
