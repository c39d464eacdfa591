"""Dual-scope temporal attention (Video-Infinity, arXiv 2406.16260, section 4.2) and its oracle.

Temporal attention in a UNet3D attends, at every spatial position, over the frame axis. In the
dual-scope approximation a query at global frame ``i`` of an ``F``-frame video sees two key sets,
joined in one softmax:

- the *local scope*: frames ``j`` with ``|i - j| <= radius`` that exist (``0 <= j < F``); keys
  beyond the ends of the video are absent, not zero keys;
- the *global scope*: ``count`` frames spread uniformly over the whole video,
  ``g_m = floor((m + 1/2) * F / count)`` for ``m = 0..count-1`` (all frames when ``count >= F``).
  A global frame that is also local appears twice, once in each scope.

Logits are ``q.k * scale + b``, where ``b`` is ``local_bias`` for local keys and ``global_bias``
for global keys. The biases follow the denoising timestep ``t``: for ``t >= switch_timestep`` the
global scope gets ``+scope_bias`` (layout and identity are set by the whole video), below it the
local scope does (smooth motion and detail). ``e^10`` is about 2.2e4, so with the paper's bias
of 10 and switch at 800 this is close to a hard switch from global to local attention.

This module holds that mathematics (masks, frame choice, schedule), the temporal-attention
plumbing shared with the clip-parallel processors, and a **single-process reference** that applies
the same masks over the full frame sequence of one UNet call. The clip-parallel dual-scope mode
(``parallel.clip``) must reproduce the reference exactly. With ``local_groupnorm_clips`` the
reference also reproduces clip-local GroupNorm statistics (see :func:`apply_dual_scope_reference`).

**Frame positions.** Some temporal attentions (AnimateDiff's motion modules) add a sinusoidal
position ``pe[p]`` to each frame's normalised tokens before the Q/K/V projections, for ``p`` below
the model's limit ``L`` (``motion_max_seq_length``). Dual-scope attention then gives every key a
position within the key set of the query's *position window*:

- the video is cut into the fewest windows ``w_1..w_n`` (contiguous runs of ``F`` frames, the
  first ``F mod n`` one frame longer) such that every window's key set
  ``S_w = {j : w.start - radius <= j < w.stop + radius, 0 <= j < F} | G`` (``G`` the global
  frames) holds at most ``L`` frames (:func:`position_windows`);
- a query at frame ``i`` in window ``w`` and each key ``j`` it sees (local and global scope as
  above) are projected from ``h_j + pe[rank of j in S_w]``, the frames of ``S_w`` numbered in
  video order.

With ``F <= L`` there is one window and every frame keeps its own index, so within the limit this
is plain dual-scope attention with the model's own positions. The windows depend on ``F``,
``radius``, ``count`` and ``L`` alone, not on how frames are split over clip workers, so the clip
workers reproduce the single-process reference on any number of workers. Every window contains
each of its frames' one-frame key sets, so a configuration fits at all exactly when
``{i - radius..i + radius} | G`` fits for every frame ``i`` (always when
``2 * radius + 1 + count <= L``); otherwise it is refused naming the keys to lower.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from diffusers.models.resnet import TemporalConvLayer
from torch import nn

from videogen.errors import ConfigError
from videogen.models.layers import TemporalModules, find_temporal_modules

__all__ = [
    "DualScopeConfig",
    "ReferenceHandle",
    "TimestepRecorder",
    "apply_dual_scope_reference",
    "apply_group_norm",
    "check_positioned_call",
    "check_temporal_call",
    "dual_scope_mask",
    "global_frame_indices",
    "group_norm_with_stats_of",
    "group_stats",
    "key_set",
    "local_key_range",
    "patch_forward",
    "position_table",
    "position_windows",
    "scope_biases",
    "temporal_output",
    "temporal_kv",
    "temporal_q",
    "temporal_qkv",
    "without_positions",
]


@dataclass(frozen=True)
class DualScopeConfig:
    """Knobs of dual-scope attention; the defaults are the paper's and the released code's."""

    local_radius: int = 8
    global_frames: int = 16
    switch_timestep: float = 800.0
    scope_bias: float = 10.0

    def __post_init__(self) -> None:
        if self.local_radius < 1:
            raise ConfigError(f"parallel.dual_scope.local_radius must be at least 1, got {self.local_radius}")
        if self.global_frames < 1:
            raise ConfigError(f"parallel.dual_scope.global_frames must be at least 1, got {self.global_frames}")
        if not math.isfinite(self.scope_bias) or not math.isfinite(self.switch_timestep):
            raise ConfigError("parallel.dual_scope.scope_bias and parallel.dual_scope.switch_timestep must be finite")


def scope_biases(config: DualScopeConfig, timestep: float) -> tuple[float, float]:
    """``(local_bias, global_bias)`` at denoising timestep ``timestep``."""
    if timestep >= config.switch_timestep:
        return 0.0, config.scope_bias
    return config.scope_bias, 0.0


def global_frame_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread uniformly over ``num_frames``: ``floor((m + 1/2) F / count)``."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if count >= num_frames:
        return list(range(num_frames))
    return [((2 * m + 1) * num_frames) // (2 * count) for m in range(count)]


def local_key_range(queries: range, num_frames: int, radius: int) -> range:
    """The frames within ``radius`` of some frame of ``queries`` that exist: the local keys they may see."""
    return range(max(0, queries.start - radius), min(num_frames, queries.stop + radius))


def key_set(window: range, num_frames: int, radius: int, global_frames: Sequence[int]) -> list[int]:
    """``S_w``: the local keys of ``window``'s queries and the global frames, each once, in video order.

    A frame's position inside a window is its index in this list.
    """
    return sorted(set(local_key_range(window, num_frames, radius)) | set(global_frames))


def _even_split(num_frames: int, n: int) -> list[range]:
    shortest, extra = divmod(num_frames, n)
    bounds = [0]
    for i in range(n):
        bounds.append(bounds[-1] + shortest + (1 if i < extra else 0))
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def position_windows(num_frames: int, config: DualScopeConfig, limit: int) -> list[range]:
    """The fewest equal windows whose key sets hold at most ``limit`` frames (see the module docstring).

    Raises :class:`ConfigError` naming ``parallel.dual_scope.local_radius`` and
    ``parallel.dual_scope.global_frames`` when even one-frame windows do not fit.
    """
    glob = global_frame_indices(num_frames, config.global_frames)

    def widest(windows: list[range]) -> int:
        return max(len(key_set(w, num_frames, config.local_radius, glob)) for w in windows)

    worst = widest(_even_split(num_frames, num_frames))
    if worst > limit:
        r, g = config.local_radius, config.global_frames
        raise ConfigError(
            f"parallel.dual_scope: with local_radius {r} and global_frames {g}, one frame's keys (its "
            f"{2 * r + 1}-frame local window and the global frames) span {worst} frames, more than the {limit} "
            "frame positions of this model's temporal attention; lower parallel.dual_scope.local_radius or "
            f"parallel.dual_scope.global_frames (2 * local_radius + 1 + global_frames <= {limit} always fits; "
            "the number of clip workers, parallel.clip, does not change this)"
        )
    for n in range(max(1, -(-num_frames // limit)), num_frames + 1):
        windows = _even_split(num_frames, n)
        if widest(windows) <= limit:
            return windows
    raise AssertionError("one-frame windows fit, so some split does")


def position_table(path: str, module: nn.Module) -> torch.Tensor:
    """``pe`` ``[limit, C]`` of a frame-position embedding that adds ``pe[p]`` to the frame at position ``p``."""
    if not isinstance(module, SinusoidalPositionalEmbedding):
        raise ConfigError(f"{path}: {type(module).__name__} frame positions are not ones clip sharding knows")
    return module.pe[0]


def check_positioned_call(attn: Attention) -> None:
    """Positions are added to the attention's input here, so its output may not add that input back."""
    if attn.residual_connection:
        raise ValueError("positioned temporal attention supports no residual connection inside Attention")


def dual_scope_mask(
    queries: range,
    local_keys: range,
    global_keys: Sequence[int],
    radius: int,
    local_bias: float,
    global_bias: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The additive logit mask ``[len(queries), len(local_keys) + len(global_keys)]``.

    Rows are queries and columns keys, both named by global frame index: first the local keys
    (a contiguous run of frames), then the global ones. A local key ``j`` is visible to query
    ``i`` with bias ``local_bias`` when ``|i - j| <= radius``, else ``-inf``; every global key is
    visible with ``global_bias``.
    """
    q = torch.arange(queries.start, queries.stop)[:, None]
    k = torch.arange(local_keys.start, local_keys.stop)[None, :]
    local = torch.full((len(queries), len(local_keys)), -math.inf)
    local.masked_fill_((q - k).abs() <= radius, local_bias)
    glob = torch.full((len(queries), len(global_keys)), global_bias)
    return torch.cat([local, glob], dim=1).to(dtype=dtype, device=device)


class TimestepRecorder:
    """Remembers the timestep of the latest UNet call (a forward pre-hook on the UNet).

    The dual-scope schedule needs ``t`` inside every temporal attention; reading it from the
    UNet's own argument means the sampler never has to pass it separately. All batch entries must
    share one timestep, as they do in a sampling step.
    """

    def __init__(self) -> None:
        self.timestep: float | None = None

    def attach(self, unet: nn.Module) -> torch.utils.hooks.RemovableHandle:
        return unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if "timestep" in kwargs:
            t = kwargs["timestep"]
        elif len(args) > 1:
            t = args[1]
        else:
            raise TypeError("the UNet was called without a timestep")
        values = torch.as_tensor(t).reshape(-1)
        if values.numel() > 1 and not bool((values == values[0]).all()):
            raise ValueError("dual-scope attention needs one timestep for the whole batch")
        self.timestep = float(values[0])

    def current(self) -> float:
        if self.timestep is None:
            raise RuntimeError("no timestep seen yet: dual-scope attention runs inside a UNet call")
        return self.timestep


def patch_forward(module: nn.Module, forward: Callable[..., Any]) -> Callable[[], None]:
    """Replace ``module.forward`` on this instance; returns the function that undoes it."""
    previous = module.__dict__.get("forward")
    module.forward = forward

    def restore() -> None:
        if previous is None:
            del module.forward
        else:
            module.forward = previous

    return restore


def check_temporal_call(attn: Attention, encoder_hidden_states: Any, attention_mask: Any) -> None:
    """Temporal self-attention only: no context, no mask, no norms that mix frames."""
    if encoder_hidden_states is not None or attention_mask is not None:
        raise ValueError("clip-sharded temporal attention supports self-attention without a mask only")
    if attn.group_norm is not None or attn.spatial_norm is not None:
        raise ValueError("clip-sharded temporal attention supports no group or spatial norm in Attention")


def temporal_qkv(attn: Attention, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project ``[N, frames, C]`` tokens to ``q, k, v`` of shape ``[N, heads, frames, head_dim]``."""
    return (temporal_q(attn, hidden_states), *temporal_kv(attn, hidden_states))


def temporal_q(attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
    """The queries of :func:`temporal_qkv`."""
    q = _heads(attn, attn.to_q(hidden_states))
    return q if attn.norm_q is None else attn.norm_q(q)


def temporal_kv(attn: Attention, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values of :func:`temporal_qkv`."""
    k = _heads(attn, attn.to_k(hidden_states))
    v = _heads(attn, attn.to_v(hidden_states))
    return (k if attn.norm_k is None else attn.norm_k(k)), v


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """``[N, frames, heads * d]`` -> ``[N, heads, frames, d]``."""
    return x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


def temporal_output(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Merge heads of ``[N, heads, frames, d]`` and apply the output projection, as diffusers does."""
    n, heads, frames, d = out.shape
    out = out.transpose(1, 2).reshape(n, frames, heads * d).to(residual.dtype)
    out = attn.to_out[0](out)
    out = attn.to_out[1](out)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def group_stats(norm: nn.GroupNorm, x: torch.Tensor, own: slice) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(mean, var, count)`` per batch entry and group of ``x`` ``[B, C, frames, ...]`` over frames ``own``.

    Computed in float32; ``var`` is the biased variance, as GroupNorm uses. The statistics come
    from ATen's fused GroupNorm kernel (``mean`` and ``rstd = var^-1/2`` with ``eps = 0``), about
    eight times faster on CPU than ``torch.var_mean`` over the same elements.
    """
    part = x[:, :, own].to(torch.float32).contiguous()
    b, c = part.shape[:2]
    groups = norm.num_groups
    _, mean, rstd = torch.ops.aten.native_group_norm(part, None, None, b, c, part[0, 0].numel(), groups, 0.0)
    return mean.view(b, groups), rstd.view(b, groups).pow(-2), part[0, 0].numel() * (c // groups)


def apply_group_norm(norm: nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with per-(batch, group) ``mean`` and ``var``.

    Folded into one pass over ``x``: ``x * a + s`` with per-(batch, channel)
    ``a = weight / sqrt(var + eps)`` and ``s = bias - mean * a``.
    """
    b, c = x.shape[:2]
    per_group = c // norm.num_groups
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1)
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if norm.affine:
        weight = norm.weight.float()
        scale, shift = scale * weight, shift * weight + norm.bias.float()
    shape = (b, c) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.view(shape), x.float(), scale.view(shape)).to(x.dtype)


def group_norm_with_stats_of(norm: nn.GroupNorm, x: torch.Tensor, own: slice) -> torch.Tensor:
    """GroupNorm of ``x`` ``[B, C, frames, ...]`` with statistics taken from frames ``own`` only."""
    mean, var, _ = group_stats(norm, x, own)
    return apply_group_norm(norm, x, mean, var)


# ----------------------------------------------------------------------------------------------
# The single-process reference
# ----------------------------------------------------------------------------------------------


class _ReferenceState:
    def __init__(self, config: DualScopeConfig, recorder: TimestepRecorder, limit: int | None = None):
        self.config = config
        self.recorder = recorder
        self.limit = limit
        self._windows: dict[int, list[range]] = {}

    def windows(self, num_frames: int) -> list[range]:
        if num_frames not in self._windows:
            self._windows[num_frames] = position_windows(num_frames, self.config, self.limit)
        return self._windows[num_frames]

    def mask(self, num_frames: int, dtype: torch.dtype, device: torch.device) -> tuple[list[int], torch.Tensor]:
        cfg = self.config
        glob = global_frame_indices(num_frames, cfg.global_frames)
        local_bias, global_bias = scope_biases(cfg, self.recorder.current())
        frames = range(num_frames)
        mask = dual_scope_mask(
            frames, frames, glob, cfg.local_radius, local_bias, global_bias, dtype=dtype, device=device
        )
        return glob, mask


class _ReferenceProcessor:
    """Dual-scope attention over the full frame sequence: keys are all frames, then the global ones."""

    def __init__(self, state: _ReferenceState):
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
        q, k, v = temporal_qkv(attn, hidden_states)
        glob, mask = self.state.mask(q.shape[2], q.dtype, q.device)
        index = torch.tensor(glob, device=k.device)
        k = torch.cat([k, k.index_select(2, index)], dim=2)
        v = torch.cat([v, v.index_select(2, index)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
        return temporal_output(attn, out, hidden_states)


class _PositionedReferenceProcessor:
    """Dual-scope attention with frame positions over the whole video, one position window at a time.

    For window ``w``: the tokens of ``S_w`` plus ``pe[0..|S_w|)``; queries are ``w``'s frames, keys
    the local keys of ``w`` then the global frames, masked as :func:`dual_scope_mask` says.
    """

    def __init__(self, state: _ReferenceState, positions: torch.Tensor):
        self.state = state
        self.positions = positions

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_temporal_call(attn, encoder_hidden_states, attention_mask)
        check_positioned_call(attn)
        cfg, num_frames = self.state.config, hidden_states.shape[1]
        glob = global_frame_indices(num_frames, cfg.global_frames)
        biases = scope_biases(cfg, self.state.recorder.current())
        pe = self.positions.to(hidden_states.dtype)
        outs = []
        for window in self.state.windows(num_frames):
            keys = key_set(window, num_frames, cfg.local_radius, glob)
            slot = {frame: p for p, frame in enumerate(keys)}
            x = hidden_states[:, keys] + pe[: len(keys)]
            local = local_key_range(window, num_frames, cfg.local_radius)
            q = temporal_q(attn, x[:, [slot[i] for i in window]])
            k, v = temporal_kv(attn, x[:, [slot[j] for j in (*local, *glob)]])
            mask = dual_scope_mask(window, local, glob, cfg.local_radius, *biases, dtype=q.dtype, device=q.device)
            outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale))
        return temporal_output(attn, torch.cat(outs, dim=2), hidden_states)


def without_positions(module: nn.Module) -> Callable[[], None]:
    """Make a frame-position embedding the identity (the attention adds positions itself); returns the undo."""
    return patch_forward(module, lambda x: x)


def _check_tiling(clips: Sequence[range], num_frames: int) -> None:
    bounds = [0] + [b for c in clips for b in (c.start, c.stop)] + [num_frames]
    if (
        not clips
        or any(a != b for a, b in zip(bounds[0::2], bounds[1::2], strict=True))
        or any(len(c) == 0 for c in clips)
    ):
        raise ValueError(f"clips {list(clips)} do not tile the {num_frames} frames of this call")


def _segment_group_norm(norm: nn.GroupNorm, clips: Sequence[range], x: torch.Tensor) -> torch.Tensor:
    _check_tiling(clips, x.shape[2])
    parts = [group_norm_with_stats_of(norm, x[:, :, c.start : c.stop], slice(None)) for c in clips]
    return torch.cat(parts, dim=2)


def _reference_temporal_conv(
    layer: TemporalConvLayer, clips: Sequence[range], hidden_states: torch.Tensor, num_frames: int = 1
) -> torch.Tensor:
    """TemporalConvLayer where each clip normalises with statistics of its own frames.

    Each clip runs the layer's own four stages on a window of its frames plus ``halo`` frames of
    input on each side (fewer at the video ends, where the stages' zero padding is the true one).
    Wrong padding at an interior window edge reaches one frame further per stage, so after the
    ``halo`` (= number of stages) stages the clip's own frames are exact.
    """
    x = hidden_states.reshape(-1, num_frames, *hidden_states.shape[1:]).permute(0, 2, 1, 3, 4)
    _check_tiling(clips, num_frames)
    stages = [layer.conv1, layer.conv2, layer.conv3, layer.conv4]
    halo = sum(stage[-1].padding[0] for stage in stages)
    outs = []
    for clip in clips:
        lo, hi = max(0, clip.start - halo), min(num_frames, clip.stop + halo)
        own = slice(clip.start - lo, clip.stop - lo)
        h = x[:, :, lo:hi]
        for stage in stages:
            h = group_norm_with_stats_of(stage[0], h, own)
            for module in stage[1:]:
                h = module(h)
        outs.append(h[:, :, own])
    y = x + torch.cat(outs, dim=2)
    return y.permute(0, 2, 1, 3, 4).reshape((-1,) + y.shape[1:2] + y.shape[3:])


class ReferenceHandle:
    """What :func:`apply_dual_scope_reference` installed; :meth:`remove` restores the model."""

    def __init__(self, undo: list[Callable[[], None]], recorder: TimestepRecorder):
        self._undo = undo
        self.recorder = recorder

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


def apply_dual_scope_reference(
    unet: nn.Module,
    config: DualScopeConfig,
    local_groupnorm_clips: Sequence[range] | None = None,
    modules: TemporalModules | None = None,
) -> ReferenceHandle:
    """Install single-process dual-scope attention on every temporal attention of ``unet``.

    The UNet is then called on the whole video. With ``local_groupnorm_clips`` (the clips of a
    clip-parallel run), the temporal GroupNorms use each clip's own statistics, as the clip-local
    GroupNorm variant does: ``TransformerTemporalModel.norm`` per clip, and the GroupNorms in
    ``TemporalConvLayer`` per clip on a window of the clip plus the conv halo. Without it they
    are the model's own, whole-video GroupNorms. ``modules``: the temporal modules as the model's family
    finds them (default: UNet3D's). Attentions with frame positions get them per position window
    (module docstring), so a video longer than the model's limit runs on one process as well.
    """
    modules = modules if modules is not None else find_temporal_modules(unet)
    recorder = TimestepRecorder()
    state = _ReferenceState(config, recorder, modules.frame_limit)
    undo: list[Callable[[], None]] = []
    for path, attn in modules.attentions():
        previous = attn.processor
        positions = modules.position_of(path)
        if positions is None:
            attn.set_processor(_ReferenceProcessor(state))
        else:
            attn.set_processor(_PositionedReferenceProcessor(state, position_table(path, positions)))
        undo.append(functools.partial(attn.set_processor, previous))
    for _, positions in modules.positions:
        undo.append(without_positions(positions))
    if local_groupnorm_clips is not None:
        clips = list(local_groupnorm_clips)
        for _, transformer in modules.transformers:
            norm = transformer.norm
            undo.append(patch_forward(norm, functools.partial(_segment_group_norm, norm, clips)))
        for _, layer in modules.convs:
            undo.append(patch_forward(layer, functools.partial(_reference_temporal_conv, layer, clips)))
    undo.append(recorder.attach(unet).remove)
    return ReferenceHandle(undo, recorder)
