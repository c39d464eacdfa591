"""Clip parallelism for UNet3D video models (Video-Infinity, arXiv 2406.16260, section 4).

Each worker of the ``clip`` axis owns a contiguous clip of frames and calls the UNet on its own
frames only, ``(B, C, F_local, H, W)``. Spatial layers work frame by frame and need nothing; the
layers that mix frames get what they need from the other clips:

``TemporalConvLayer`` (four stages GroupNorm -> SiLU -> Conv3d with a ``(3, 1, 1)`` kernel)
    One halo exchange of the layer's input: ``sum of temporal paddings`` (4, the config's
    ``conv_halo``, the model family's ``temporal_halo``) frames from each neighbour. The stages
    then run on ``[halo | clip | halo]`` with the convs' own zero padding: at an end of the video
    that is exactly the single-device padding; at a halo's outer edge it is wrong, and the wrong
    frames creep inwards one frame per stage, so after the four stages they cover the halo and
    never the clip, whose output equals the whole-video layer's (no trimming or re-padding copies
    between stages). GroupNorm statistics are taken over the clip's own frames (the halo is
    normalised with them too).

Temporal attention (``attn1`` and ``attn2`` of every ``TransformerTemporalModel``)
    *exact*: the keys and values of all frames are all-gathered (one collective per attention).
    *dual_scope*: one point-to-point exchange per attention sends each neighbour the keys and
    values of this clip's ``local_radius`` edge frames together with those of the global frames
    it owns, and every other rank the global frames alone; the query then sees the masked local
    window and the global frames as defined in :mod:`parallel.dual_scope` (one collective).

Frame positions (AnimateDiff's motion modules add ``pe[p]`` to each frame's normalised tokens
before ``attn1`` and ``attn2``, for ``p`` below the model's limit)
    *exact*: each clip adds the positions of its frames' *global* indices (a clip of frames 8..15
    adds ``pe[8..15]``), so the gathered keys are the whole video's; a video longer than the limit is
    refused. *dual_scope*: the embedding is made the identity and the attention adds positions
    itself, by position window (:mod:`parallel.dual_scope`): one exchange per attention sends the
    *normalised hidden states* (not keys and values, which depend on the window's positions) of
    the same frames as above; the worker adds each window's positions, projects and attends with
    the window's mask. The result equals the single-process reference on any number of workers.

Temporal GroupNorm statistics (``TransformerTemporalModel.norm`` and the four norms of each
``TemporalConvLayer``)
    *exact*: every clip's ``(count, mean, M2)`` per group is all-gathered and combined with Chan's
    parallel formula, so the statistics are those of the whole video (one small collective per
    norm). *local*: each clip uses its own statistics and nothing is sent. Exact mode always uses
    exact statistics; dual-scope mode takes either.

In exact mode the clip outputs equal the single-device UNet output on the whole video. In
dual-scope mode they equal :func:`parallel.dual_scope.apply_dual_scope_reference`.

Everything is installed through diffusers attention processors and per-instance ``forward``
wrappers on the modules the model's family names (:class:`~videogen.models.layers.TemporalModules`);
the model's code is not edited, and :meth:`ClipParallelHandle.remove` restores it exactly.
Every rank makes the same collectives in the same order: the layer order of the UNet.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import TemporalConvLayer
from torch import nn

from parallel.comm import AxisComm, combine_stats, halo_slice
from parallel.dual_scope import (
    DualScopeConfig,
    TimestepRecorder,
    apply_group_norm,
    check_positioned_call,
    check_temporal_call,
    dual_scope_mask,
    global_frame_indices,
    group_stats,
    key_set,
    local_key_range,
    patch_forward,
    position_table,
    position_windows,
    scope_biases,
    temporal_kv,
    temporal_output,
    temporal_q,
    without_positions,
)
from videogen.errors import ConfigError
from videogen.models.layers import TemporalModules, find_temporal_modules

__all__ = [
    "MODES",
    "GROUPNORMS",
    "ClipParallelConfig",
    "ClipParallelHandle",
    "apply_clip_parallel",
    "collectives_per_forward",
    "min_clip_frames",
    "split_frames",
]

MODES = ("exact", "dual_scope")
GROUPNORMS = ("exact", "local")
CONV_HALO = 4  # TemporalConvLayer: four stacked convs with temporal kernel 3


@dataclass(frozen=True)
class ClipParallelConfig:
    """How the ``clip`` axis couples its clips.

    ``mode``: ``"exact"`` (all frames' keys and values) or ``"dual_scope"`` (local window plus
    global frames, configured by ``dual_scope``). ``groupnorm``: ``"exact"`` (whole-video
    statistics) or ``"local"`` (per-clip statistics, dual-scope mode only). ``conv_halo``: frames
    each temporal convolution module takes from each neighbouring clip, the model family's
    :attr:`~videogen.models.family.ModelFamily.temporal_halo` (:func:`parallel.job_plan.clip_config`
    fills it in; 0 for a model without temporal convolutions).
    """

    mode: str = "exact"
    groupnorm: str = "exact"
    dual_scope: DualScopeConfig = field(default_factory=DualScopeConfig)
    conv_halo: int = CONV_HALO

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"parallel.clip_mode must be one of {MODES}, got {self.mode!r}")
        if self.groupnorm not in GROUPNORMS:
            raise ConfigError(f"parallel.groupnorm must be one of {GROUPNORMS}, got {self.groupnorm!r}")
        if self.mode == "exact" and self.groupnorm != "exact":
            raise ConfigError("parallel.clip_mode 'exact' needs parallel.groupnorm 'exact'")
        if self.conv_halo < 0:
            raise ConfigError(f"the temporal convolution halo cannot be negative, got {self.conv_halo}")

    @property
    def exact_groupnorm(self) -> bool:
        return self.groupnorm == "exact"


def min_clip_frames(config: ClipParallelConfig) -> int:
    """The fewest frames a clip may have when there is more than one: the widest halo it serves (the
    temporal convolutions' ``conv_halo``; in dual-scope mode also the ``local_radius`` edge frames each
    neighbour attends to), and at least one."""
    if config.mode == "dual_scope":
        return max(1, config.conv_halo, config.dual_scope.local_radius)
    return max(1, config.conv_halo)


def split_frames(num_frames: int, n: int, min_frames: int = 1) -> list[range]:
    """Split ``num_frames`` into ``n`` contiguous clips, the first ``num_frames % n`` one frame longer.

    Raises :class:`ConfigError` when a clip would have fewer than ``min_frames`` frames (pass
    :func:`min_clip_frames` for clip parallelism; it applies only when ``n > 1``).
    """
    if n < 1:
        raise ConfigError(f"the clip axis needs at least one worker, got {n}")
    if num_frames < 1:
        raise ConfigError(f"a video needs at least one frame, got {num_frames}")
    shortest = num_frames // n
    if shortest < 1:
        raise ConfigError(f"cannot split {num_frames} frames over {n} workers: fewer frames than workers")
    if n > 1 and shortest < min_frames:
        raise ConfigError(
            f"splitting {num_frames} frames over {n} clip workers gives clips of {shortest} frames, "
            f"but each clip needs at least {min_frames} (the temporal halo); use fewer workers or more frames"
        )
    extra = num_frames % n
    bounds = [0]
    for i in range(n):
        bounds.append(bounds[-1] + shortest + (1 if i < extra else 0))
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def collectives_per_forward(
    unet: nn.Module, config: ClipParallelConfig, modules: TemporalModules | None = None
) -> dict[str, int]:
    """Collective calls per rank in one UNet forward with more than one clip, by kind.

    Counted from the module structure: one ``conv_halo`` per TemporalConvLayer, one ``groupnorm``
    per temporal GroupNorm when statistics are exact (4 per TemporalConvLayer plus one per
    TransformerTemporalModel), and per temporal attention one ``attn_kv`` (exact) or one
    ``attn_scope`` (dual-scope).
    """
    modules = modules if modules is not None else find_temporal_modules(unet)
    n_conv, n_attn = len(modules.convs), len(modules.attentions())
    counts = {"conv_halo": n_conv}
    if config.exact_groupnorm:
        conv_norms = sum(len(_conv_stages(layer)) for _, layer in modules.convs)
        counts["groupnorm"] = conv_norms + len(modules.transformers)
    if config.mode == "exact":
        counts["attn_kv"] = n_attn
    else:
        counts["attn_scope"] = n_attn
    return {kind: n for kind, n in counts.items() if n}


def _conv_stages(layer: TemporalConvLayer) -> list[nn.Sequential]:
    return [layer.conv1, layer.conv2, layer.conv3, layer.conv4]


def _check_conv_layer(path: str, layer: TemporalConvLayer, halo: int) -> None:
    for stage in _conv_stages(layer):
        norm, middle, conv = stage[0], list(stage[1:-1]), stage[-1]
        kernel = conv.kernel_size if isinstance(conv, nn.Conv3d) else None
        ok = (
            isinstance(norm, nn.GroupNorm)
            and all(isinstance(m, (nn.SiLU, nn.Dropout)) for m in middle)
            and kernel is not None
            and kernel[0] % 2 == 1
            and tuple(conv.padding) == (kernel[0] // 2, 0, 0)
            and tuple(conv.stride) == (1, 1, 1)
            and tuple(conv.dilation) == (1, 1, 1)
            and conv.padding_mode == "zeros"
        )
        if not ok:
            raise ConfigError(f"{path}: a TemporalConvLayer stage clip sharding does not know: {stage}")
    reach = sum(stage[-1].padding[0] for stage in _conv_stages(layer))
    if reach != halo:
        raise ConfigError(
            f"{path}: its temporal convs reach {reach} frames per side, but the clip config's conv_halo is "
            f"{halo} (the model family's temporal_halo); the family must declare temporal_halo = {reach}"
        )


class _ClipState:
    """What every installed piece of one worker shares: its clip, the comm, the schedule."""

    def __init__(
        self,
        comm: AxisComm,
        clips: list[range],
        num_frames: int,
        config: ClipParallelConfig,
        recorder: TimestepRecorder,
        band_comm: AxisComm | None = None,
        limit: int | None = None,
    ):
        self.comm = comm
        self.band_comm = band_comm
        self.clips = clips
        self.frames = clips[comm.rank]
        self.num_frames = num_frames
        self.config = config
        self.recorder = recorder
        self.clip_sizes = [len(c) for c in clips]
        ds = config.dual_scope
        glob = global_frame_indices(num_frames, ds.global_frames)
        self.global_frames = glob
        self.global_counts = [sum(1 for g in glob if g in c) for c in clips]
        self.own_global = [g - self.frames.start for g in glob if g in self.frames]
        self.local_keys = local_key_range(self.frames, num_frames, ds.local_radius)
        positioned = limit is not None and config.mode == "dual_scope"
        self.windows = position_windows(num_frames, ds, limit) if positioned else []
        self._masks: dict[tuple, torch.Tensor] = {}
        self._own_global_index: dict[torch.device, torch.Tensor] = {}
        self._window_plans: dict[tuple, list[_WindowPlan]] = {}

    def window_plans(self, dtype: torch.dtype, device: torch.device) -> list[_WindowPlan]:
        """What this clip computes for each position window it has queries in, at the current timestep.

        Indices point into the ``[left halo | own | right halo | global frames]`` buffer of
        :class:`_ScopeExchange`, whose first part is exactly the frames of ``local_keys``.
        """
        ds = self.config.dual_scope
        biases = scope_biases(ds, self.recorder.current())
        cache = (biases, dtype, device)
        if cache not in self._window_plans:
            base, at = self.local_keys.start, len(self.local_keys)

            def index(values: list[int]) -> torch.Tensor:
                return torch.tensor(values, dtype=torch.long, device=device)

            plans = []
            for window in self.windows:
                queries = range(max(window.start, self.frames.start), min(window.stop, self.frames.stop))
                if not queries:
                    continue
                keys = key_set(window, self.num_frames, ds.local_radius, self.global_frames)
                slot = {frame: p for p, frame in enumerate(keys)}
                local = local_key_range(queries, self.num_frames, ds.local_radius)
                mask = dual_scope_mask(
                    queries, local, self.global_frames, ds.local_radius, *biases, dtype=dtype, device=device
                )
                plans.append(
                    _WindowPlan(
                        queries=slice(queries.start - base, queries.stop - base),
                        query_positions=slice(slot[queries.start], slot[queries.start] + len(queries)),
                        local=slice(local.start - base, local.stop - base),
                        local_positions=slice(slot[local.start], slot[local.start] + len(local)),
                        global_index=index(list(range(at, at + len(self.global_frames)))),
                        global_positions=index([slot[g] for g in self.global_frames]),
                        mask=mask,
                    )
                )
            self._window_plans[cache] = plans
        return self._window_plans[cache]

    def own_global_index(self, device: torch.device) -> torch.Tensor:
        """Positions, within this clip, of the global frames it owns."""
        if device not in self._own_global_index:
            self._own_global_index[device] = torch.tensor(self.own_global, dtype=torch.long, device=device)
        return self._own_global_index[device]

    def mask(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        ds = self.config.dual_scope
        biases = scope_biases(ds, self.recorder.current())
        key = (biases, dtype, device)
        if key not in self._masks:
            self._masks[key] = dual_scope_mask(
                self.frames,
                self.local_keys,
                self.global_frames,
                ds.local_radius,
                *biases,
                dtype=dtype,
                device=device,
            )
        return self._masks[key]

    def group_norm(self, norm: nn.GroupNorm, x: torch.Tensor, own: slice) -> torch.Tensor:
        """GroupNorm of ``x`` ``[B, C, frames, ...]``, statistics over this clip's frames ``own``.

        With exact statistics the clips' ``(count, mean, M2)`` are combined with
        :func:`parallel.comm.combine_stats`. When this clip holds only a band of every frame's rows
        (patch parallelism), the bands' statistics are combined over ``band_comm`` first.
        """
        mean, var, count = group_stats(norm, x, own)
        if self.band_comm is not None:
            mean, var, count = combine_stats(self.band_comm, mean, var, count, "groupnorm_temporal")
        if self.config.exact_groupnorm and self.comm.size > 1:
            mean, var, count = combine_stats(self.comm, mean, var, count, "groupnorm")
        return apply_group_norm(norm, x, mean, var)


@dataclass(frozen=True)
class _WindowPlan:
    """One position window's share of a clip: buffer slices and positions of its queries, of their
    local keys and of the global frames, and its mask."""

    queries: slice
    query_positions: slice
    local: slice
    local_positions: slice
    global_index: torch.Tensor
    global_positions: torch.Tensor
    mask: torch.Tensor


class ClipAttnProcessor:
    """Temporal self-attention over a clip-sharded frame axis (exact or dual-scope)."""

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
        state, comm = self.state, self.state.comm
        if state.config.mode == "exact":
            kv = torch.stack(temporal_kv(attn, hidden_states))  # [2, N, heads, frames, d]: K and V travel together
            keys = comm.start_all_gather_uneven(kv, 3, state.clip_sizes, "attn_kv")
            del kv
            q = temporal_q(attn, hidden_states)  # computed while the gather is in flight
            mask = None
        else:
            keys = _ScopeExchange(state, temporal_kv(attn, hidden_states), 2)
            q = temporal_q(attn, hidden_states)  # computed while the exchange is in flight
            mask = state.mask(q.dtype, q.device)
        kv = keys.wait()
        del keys
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask, scale=attn.scale)
        del q, kv
        return temporal_output(attn, out, hidden_states)


class PositionedScopeProcessor:
    """Dual-scope temporal attention with frame positions over a clip-sharded frame axis.

    Receives the normalised tokens ``[N, frames, C]`` of this clip without positions, exchanges
    those of the local and global frames (one exchange), then per position window adds the
    window's positions to its queries and keys, projects and attends (:mod:`parallel.dual_scope`).
    """

    def __init__(self, state: _ClipState, positions: torch.Tensor):
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
        tokens = _ScopeExchange(self.state, (hidden_states,), 1).wait()[0]
        pe = self.positions.to(tokens.dtype)
        outs = []
        for plan in self.state.window_plans(tokens.dtype, tokens.device):
            q = temporal_q(attn, tokens[:, plan.queries] + pe[plan.query_positions])
            local = tokens[:, plan.local] + pe[plan.local_positions]
            glob = tokens.index_select(1, plan.global_index) + pe.index_select(0, plan.global_positions)
            k, v = temporal_kv(attn, torch.cat([local, glob], dim=1))
            outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=plan.mask, scale=attn.scale))
        return temporal_output(attn, torch.cat(outs, dim=2), hidden_states)


class _ScopeExchange:
    """``[left halo | own | right halo | global frames]`` of ``tensors`` along frame axis ``dim``, stacked:
    ``[len(tensors), ...]`` (keys and values, or the normalised tokens when positions are added later).

    One exchange: each neighbour gets this clip's ``local_radius`` edge frames followed by the
    global frames it owns; every other rank gets just the global frames (nothing when it owns
    none). The global frames are put in video order, this clip's own included. The exchange is
    posted on construction, as soon as the tensors exist, and this clip's own part is copied into
    the one preallocated buffer at once; :meth:`wait` completes the buffer with what arrived. The
    caller may compute in between, so a neighbour arriving late costs less idle time.
    """

    def __init__(self, state: _ClipState, tensors: tuple[torch.Tensor, ...], dim: int):
        comm, radius = state.comm, state.config.dual_scope.local_radius
        first = tensors[0]
        frames = first.shape[dim]
        self._state, self._dim = state, dim + 1  # the frame axis once stacked

        def each(fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            return torch.stack([fn(x) for x in tensors])

        index = state.own_global_index(first.device)
        own_global = each(lambda x: x.index_select(dim, index))
        outgoing, incoming = {}, {}
        for peer in range(comm.size):
            if peer == comm.rank:
                continue
            neighbour = abs(peer - comm.rank) == 1
            right = peer > comm.rank
            parts = [each(lambda x, right=right: halo_slice(x, dim, radius, right))] if neighbour else []
            if own_global.shape[self._dim]:
                parts.append(own_global)
            if parts:
                outgoing[peer] = torch.cat(parts, dim=self._dim) if len(parts) > 1 else parts[0]
            count = (radius if neighbour else 0) + state.global_counts[peer]
            if count:
                shape = list(own_global.shape)
                shape[self._dim] = count
                incoming[peer] = tuple(shape)
        self._flight = comm.start_exchange(outgoing, incoming, first, "attn_scope")
        self._left = radius if comm.rank > 0 else 0
        self._right = radius if comm.rank < comm.size - 1 else 0
        self._frames = frames
        shape = list(own_global.shape)
        shape[self._dim] = self._left + frames + self._right + len(state.global_frames)
        buffer = first.new_empty(shape)
        for i, x in enumerate(tensors):
            buffer[i].narrow(dim, self._left, frames).copy_(x)
        at = self._left + frames + self._right
        for peer, count in enumerate(state.global_counts):
            if peer == comm.rank and count:
                buffer.narrow(self._dim, at, count).copy_(own_global)
            at += count
        self._buffer = buffer

    def wait(self) -> torch.Tensor:
        comm, radius = self._state.comm, self._state.config.dual_scope.local_radius
        buffer, dim = self._buffer, self._dim
        received = self._flight.wait()
        left, frames, right = self._left, self._frames, self._right
        if left:
            buffer.narrow(dim, 0, left).copy_(received[comm.rank - 1].narrow(dim, 0, radius))
        if right:
            buffer.narrow(dim, left + frames, right).copy_(received[comm.rank + 1].narrow(dim, 0, radius))
        at = left + frames + right
        for peer, count in enumerate(self._state.global_counts):
            if count and peer != comm.rank:
                part = received[peer].narrow(dim, radius if abs(peer - comm.rank) == 1 else 0, count)
                buffer.narrow(dim, at, count).copy_(part)
            at += count
        return buffer


def _clip_temporal_conv(
    layer: TemporalConvLayer, state: _ClipState, hidden_states: torch.Tensor, num_frames: int = 1
) -> torch.Tensor:
    x = hidden_states.reshape(-1, num_frames, *hidden_states.shape[1:]).permute(0, 2, 1, 3, 4)
    halo = state.config.conv_halo
    left, right = state.comm.halo_exchange(x, 2, halo, "conv_halo")
    h = torch.cat([p for p in (left, x, right) if p is not None], dim=2)
    lo = 0 if left is None else halo
    own = slice(lo, lo + num_frames)
    for stage in _conv_stages(layer):
        h = state.group_norm(stage[0], h, own)
        for module in stage[1:]:
            h = module(h)
    y = x + h[:, :, own]
    return y.permute(0, 2, 1, 3, 4).reshape((-1,) + y.shape[1:2] + y.shape[3:])


def _exact_group_norm(norm: nn.GroupNorm, state: _ClipState, x: torch.Tensor) -> torch.Tensor:
    return state.group_norm(norm, x, slice(None))


class ClipParallelHandle:
    """A clip-parallel installation on one worker's UNet.

    ``frames`` is this worker's clip, ``clips`` every worker's, ``comm.stats`` the accounting.
    The dual-scope schedule reads the timestep of each UNet call itself (``timestep`` is the last
    one seen). :meth:`remove` restores the model exactly.
    """

    def __init__(self, state: _ClipState, undo: list[Callable[[], None]]):
        self._state = state
        self._undo = undo

    @property
    def frames(self) -> range:
        return self._state.frames

    @property
    def clips(self) -> list[range]:
        return list(self._state.clips)

    @property
    def num_frames(self) -> int:
        return self._state.num_frames

    @property
    def config(self) -> ClipParallelConfig:
        return self._state.config

    @property
    def comm(self) -> AxisComm:
        return self._state.comm

    @property
    def timestep(self) -> float | None:
        return self._state.recorder.timestep

    def remove(self) -> None:
        """Put back the original processors and forwards (idempotent)."""
        while self._undo:
            self._undo.pop()()


def _fingerprint(config: ClipParallelConfig) -> int:
    return zlib.crc32(repr(config).encode())


def _agree_on_clips(comm: AxisComm, frames: range, num_frames: int, config: ClipParallelConfig) -> list[range]:
    """Gather every rank's clip and check, on every rank alike, that they tile the video."""
    mine = torch.tensor([frames.start, frames.stop, num_frames, _fingerprint(config)], device=comm.device)
    rows = [r.tolist() for r in comm.all_gather(mine, "setup")]
    if any(row[2:] != rows[0][2:] for row in rows):
        raise ConfigError(f"clip workers disagree on the frame count or the clip config: {rows}")
    clips = [range(row[0], row[1]) for row in rows]
    bounds = [0] + [b for c in clips for b in (c.start, c.stop)] + [num_frames]
    gaps = any(a != b for a, b in zip(bounds[0::2], bounds[1::2], strict=True))
    if gaps or any(len(c) < 1 for c in clips):
        raise ConfigError(f"the clips {clips} do not tile the {num_frames} frames in rank order")
    shortest = min(len(c) for c in clips)
    if len(clips) > 1 and shortest < min_clip_frames(config):
        raise ConfigError(
            f"a clip of {shortest} frames is shorter than the {min_clip_frames(config)}-frame temporal halo; "
            "use fewer clip workers or more frames"
        )
    return clips


def _processor_already_installed(modules: TemporalModules) -> bool:
    return any(
        isinstance(attn.processor, (ClipAttnProcessor, PositionedScopeProcessor)) for _, attn in modules.attentions()
    )


def _global_positions(module: nn.Module, start: int, x: torch.Tensor) -> torch.Tensor:
    """The frame-position embedding of this clip's frames at their global indices ``start..``."""
    return x + module.pe[:, start : start + x.shape[1]]


def _check_positions(modules: TemporalModules, num_frames: int, config: ClipParallelConfig) -> None:
    limit = modules.frame_limit
    if limit is None:
        return
    for path, module in modules.positions:
        if position_table(path, module).shape[0] < limit:
            raise ConfigError(f"{path}: holds fewer than the {limit} frame positions the model declares")
    if config.mode == "exact" and num_frames > limit:
        raise ConfigError(
            f"video.num_frames: {num_frames} frames are more than the {limit} frame positions of this model's "
            "temporal attention, which sees all frames at once with parallel.clip_mode: exact; render at most "
            f"{limit} frames, or use parallel.clip_mode: dual_scope"
        )


def apply_clip_parallel(
    unet: nn.Module,
    comm: AxisComm,
    frames: range,
    num_frames: int,
    config: ClipParallelConfig,
    band_comm: AxisComm | None = None,
    modules: TemporalModules | None = None,
) -> ClipParallelHandle:
    """Install clip parallelism on ``unet``: this worker owns frames ``frames`` of ``num_frames``.

    ``band_comm``: the patch axis when this worker holds only a band of each frame's rows.
    ``modules``: the temporal modules as the model's family finds them
    (:meth:`~videogen.models.family.ModelFamily.temporal_modules`; default: UNet3D's).
    Every rank of ``comm`` must call this (it makes one small collective to check that the clips
    tile the video in rank order and that all ranks share ``config``; a mismatch raises
    :class:`ConfigError` on every rank). Afterwards call the UNet with this worker's frames only.
    """
    modules = modules if modules is not None else find_temporal_modules(unet)
    if _processor_already_installed(modules):
        raise RuntimeError("clip parallelism is already installed on this UNet; remove it first")
    for path, layer in modules.convs:
        _check_conv_layer(path, layer, config.conv_halo)
    _check_positions(modules, num_frames, config)
    clips = _agree_on_clips(comm, frames, num_frames, config)
    recorder = TimestepRecorder()
    state = _ClipState(comm, clips, num_frames, config, recorder, band_comm, modules.frame_limit)
    undo: list[Callable[[], None]] = []
    processor = ClipAttnProcessor(state)
    positioned = config.mode == "dual_scope"
    for path, attn in modules.attentions():
        previous = attn.processor
        positions = modules.position_of(path)
        if positions is not None and positioned:
            attn.set_processor(PositionedScopeProcessor(state, position_table(path, positions)))
        else:
            attn.set_processor(processor)
        undo.append(functools.partial(attn.set_processor, previous))
    for _, positions in modules.positions:
        if positioned:
            undo.append(without_positions(positions))
        else:
            undo.append(patch_forward(positions, functools.partial(_global_positions, positions, frames.start)))
    for _, layer in modules.convs:
        undo.append(patch_forward(layer, functools.partial(_clip_temporal_conv, layer, state)))
    if config.exact_groupnorm:
        for _, transformer in modules.transformers:
            norm = transformer.norm
            undo.append(patch_forward(norm, functools.partial(_exact_group_norm, norm, state)))
    if config.mode == "dual_scope":
        undo.append(recorder.attach(unet).remove)
    return ClipParallelHandle(state, undo)
