"""Patch parallelism for UNet3D video models: DistriFusion's displaced patches and PCPP's partial conditioning.

Each worker of the ``patch`` axis owns one equal band of the latent rows (or columns) of *every*
frame and calls the UNet on that band only, ``(B, C, F, h_local, W)``. Frames are batch to the
spatial layers, so the split cuts every spatial layer at every resolution level; what crosses
workers is what a band's outputs depend on outside the band:

3x3 convolutions (``conv_in``, resnets, down/up samplers, ``conv_out``)
    ``before`` rows from the left neighbour and ``after`` rows from the right one, from the
    kernel, stride and padding (``before = p``, ``after = d(k-1) - p - s + 1``, at least 0):
    one row each side for a 3x3 conv, one row from the left only for a stride-2 downsampler.
    The conv then runs unpadded along the split axis; the image border is zero-padded as the
    single-device conv pads it.

Spatial self-attention (self-attentions of every ``Transformer2DModel``)
    ``softmax(q K^T scale) V`` where ``q`` are the band's queries and ``K, V`` are the keys and
    values of the band joined with other workers' (order does not matter: UNet spatial attention
    has no positional bias). Synchronous steps all-gather everyone's K/V, which is exact.
    Displaced steps (DistriFusion, arXiv 2402.19481, section 4) use the band's fresh K/V and
    the other workers' K/V from the previous step, while this step's K/V travel asynchronously
    and are waited for at the same layer of the next step. Full conditioning (``portion="all"``)
    attends to every other worker's stale K/V; partial conditioning (PCPP, arXiv 2412.02962,
    eq. 1) attends only to a band of ``ceil(portion * h_local)`` rows of each neighbour next to
    this worker's patch, and only that band is sent (point to point, to the two neighbours).

GroupNorm (4-D spatial norms and 5-D temporal norms alike)
    Per batch entry and group, each worker reduces its ``n`` elements to ``(sum x, sum x^2)``
    (from a float32 ``var_mean``, carried in float64); the sums are all-reduced, and
    ``mean = S1 / (nN)``, ``var = S2 / (nN) - mean^2``. *exact*: every call all-reduces.
    *stale* (DistriFusion's corrected asynchronous GroupNorm): displaced steps use
    ``S = S_stale_all - S_stale_own + S_fresh_own``, falling back to the band's own variance
    where the corrected variance is negative, while the fresh sums are all-reduced in the
    background.

Temporal layers (``TemporalConvLayer`` convs, ``TransformerTemporalModel`` attention, layer
norms, feed-forwards) act per pixel and stay local; only their GroupNorms are synchronised. The
self-attentions to wrap are found by class and module path (every non-cross ``Attention`` of a
``Transformer2DModel``), never by a name like ``attn1``, which temporal blocks share.

Steps: a forward pre-hook counts UNet calls. With classifier-free guidance batched, the sampler
calls the UNet once per step; calls ``0 .. warmup_steps - 1`` are synchronous (and exact), the
rest displaced. ``mode="sync"`` makes every call synchronous: the oracle mode, equal to the
single-device UNet. Every rank makes the same collectives in the same order (the layer order);
point-to-point messages carry a per-layer tag.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from parallel.comm import AxisComm, InFlight
from parallel.dual_scope import patch_forward, temporal_output, temporal_qkv
from videogen.errors import ConfigError
from videogen.models.layers import SpatialModules, find_spatial_modules, find_temporal_modules

__all__ = [
    "DECODES",
    "DEFAULT_PORTION",
    "GROUPNORMS",
    "MODES",
    "SPLITS",
    "PatchDenoiser",
    "PatchParallelConfig",
    "PatchParallelHandle",
    "PatchSplit",
    "PatchState",
    "agree_on_split",
    "apply_patch_parallel",
    "band_rows",
    "install_spatial",
    "split_rows",
    "traffic_per_step",
    "unet_spatial_modules",
]

MODES = ("sync", "displaced")
GROUPNORMS = ("exact", "stale")
SPLITS = ("auto", "h", "w")
DECODES = ("auto", "frames", "patch")
DEFAULT_PORTION = 0.25
SpatialFinder = Callable[[nn.Module], SpatialModules]


@dataclass(frozen=True)
class PatchParallelConfig:
    """How the ``patch`` axis couples its bands.

    ``mode``: ``"displaced"`` (stale neighbours' activations after the warm-up, DistriFusion) or
    ``"sync"`` (everything synchronous every step; exact). ``portion``: ``"all"`` (full
    conditioning, DistriFusion) or a float in (0, 1], the fraction of each neighbour's band that
    displaced self-attention sees (PCPP); the default 0.25 keeps the bytes per step at 8 workers
    under 20 % of full conditioning (docs/patch_parallel.md). ``warmup_steps``: the number of
    synchronous UNet calls before displaced ones (at least 1: the first step has nothing stale).
    ``groupnorm``: ``"exact"`` (all-reduced every call) or ``"stale"`` (corrected stale
    statistics after the warm-up; displaced mode only). ``split``: ``"h"``, ``"w"`` or
    ``"auto"`` (rows if every resolution level divides, else columns). ``decode``: how the
    patch workers of one clip share VAE decoding, ``"frames"`` (each decodes a contiguous part
    of the frames, no communication), ``"patch"`` (each decodes its rows of every frame) or
    ``"auto"`` (frames when there are at least as many frames as patch workers).
    """

    mode: str = "displaced"
    portion: float | str = DEFAULT_PORTION
    warmup_steps: int = 4
    groupnorm: str = "stale"
    split: str = "auto"
    decode: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"parallel.patch_options.mode must be one of {MODES}, got {self.mode!r}")
        if self.groupnorm not in GROUPNORMS:
            raise ConfigError(f"parallel.patch_options.groupnorm must be one of {GROUPNORMS}, got {self.groupnorm!r}")
        if self.mode == "sync" and self.groupnorm != "exact":
            raise ConfigError("parallel.patch_options.mode 'sync' needs parallel.patch_options.groupnorm 'exact'")
        if self.split not in SPLITS:
            raise ConfigError(f"parallel.patch_options.split must be one of {SPLITS}, got {self.split!r}")
        if self.decode not in DECODES:
            raise ConfigError(f"parallel.patch_options.decode must be one of {DECODES}, got {self.decode!r}")
        portion = self.portion
        numeric = isinstance(portion, (int, float)) and not isinstance(portion, bool)
        if portion != "all" and not (numeric and 0 < portion <= 1):
            raise ConfigError(f"parallel.patch_options.portion must be 'all' or a number in (0, 1], got {portion!r}")
        steps = self.warmup_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ConfigError(f"parallel.patch_options.warmup_steps must be an integer >= 1, got {steps!r}")

    @property
    def full_conditioning(self) -> bool:
        return self.portion == "all"


def band_rows(portion: float, local: int) -> int:
    """Rows of each neighbour's band that PCPP attends to: ``ceil(portion * local)``, 1 to ``local``."""
    return max(1, min(local, math.ceil(portion * local - 1e-9)))


# ---------------------------------------------------------------------------------------------
# Splitting the latent
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchSplit:
    """``parts`` equal bands of the latent along ``dim`` (``"h"`` rows, ``"w"`` columns).

    ``latent_hw`` is the full latent frame; ``levels`` the number of resolution levels the model
    runs at (level ``l`` is ``latent_hw / 2**l``), each of which the split divides.
    """

    dim: str
    parts: int
    latent_hw: tuple[int, int]
    levels: int

    @property
    def axis(self) -> int:
        """The split axis counted from the end of an ``(..., H, W)`` tensor."""
        return -2 if self.dim == "h" else -1

    def local_hw(self, level: int = 0) -> tuple[int, int]:
        """One band's ``(h, w)`` at resolution ``level``."""
        h, w = (n >> level for n in self.latent_hw)
        return (h // self.parts, w) if self.dim == "h" else (h, w // self.parts)

    def band(self, rank: int) -> range:
        """The latent rows (columns) worker ``rank`` owns at full resolution."""
        size = self.local_hw(0)[0 if self.dim == "h" else 1]
        return range(rank * size, (rank + 1) * size)

    def take(self, x: torch.Tensor, rank: int) -> torch.Tensor:
        """Worker ``rank``'s band of ``x`` ``(..., H, W)``."""
        band = self.band(rank)
        return x.narrow(x.dim() + self.axis, band.start, len(band))


def _level_name(level: int, levels: int) -> str:
    where = "full latent resolution" if level == 0 else f"after {level} downsampling{'s' if level > 1 else ''}"
    return f"resolution level {level} ({where}{', the mid block' if level == levels - 1 else ''})"


def _split_problem(length: int, parts: int, levels: int, unit: str) -> str | None:
    for level in range(levels):
        if length % (1 << level):
            return f"{_level_name(level, levels)} is not a whole number of {unit} ({length} / {1 << level})"
        size = length >> level
        if size % parts:
            return f"{_level_name(level, levels)} has {size} {unit}, not a multiple of {parts}"
    return None


def split_rows(latent_hw: tuple[int, int], parts: int, levels: int, split: str = "auto") -> PatchSplit:
    """Split a ``latent_hw`` latent into ``parts`` equal bands that every one of ``levels`` levels divides.

    ``split``: ``"h"`` (rows), ``"w"`` (columns) or ``"auto"`` (rows if possible, else columns).
    Raises :class:`ConfigError` naming the resolution level that does not divide.
    """
    if split not in SPLITS:
        raise ConfigError(f"parallel.patch_options.split must be one of {SPLITS}, got {split!r}")
    if not isinstance(parts, int) or parts < 1:
        raise ConfigError(f"the patch axis needs at least one worker, got {parts}")
    h, w = latent_hw
    problems = {
        "h": _split_problem(h, parts, levels, "rows"),
        "w": _split_problem(w, parts, levels, "columns"),
    }
    candidates = ("h", "w") if split == "auto" else (split,)
    for dim in candidates:
        if problems[dim] is None:
            return PatchSplit(dim, parts, (h, w), levels)
    reasons = "; ".join(f"along {dim.upper()}: {problems[dim]}" for dim in candidates)
    raise ConfigError(f"cannot split a {h}x{w} latent over {parts} patch workers: {reasons}")


# ---------------------------------------------------------------------------------------------
# Communication: neighbour bands, all-gather and all-reduce, synchronous or in flight
# ---------------------------------------------------------------------------------------------


def _neighbour_bands(
    comm: AxisComm, x: torch.Tensor, dim: int, before: int, after: int, kind: str, tag: int, async_op: bool
) -> InFlight:
    """Receive ``(left, right)``: the left neighbour's last ``before`` and the right neighbour's first ``after``.

    This rank sends its first ``after`` entries along ``dim`` to the left neighbour and its last
    ``before`` to the right one. Missing neighbours and zero widths give ``None``. Accounting as
    :meth:`AxisComm.halo_exchange`: the entries sent and received.
    """
    if comm.size == 1 or before == after == 0:
        return InFlight([], (None, None))
    length, previous, following = x.shape[dim], comm.rank - 1, comm.rank + 1
    outgoing, incoming = {}, {}

    def shape(width: int) -> list[int]:
        out = list(x.shape)
        out[dim] = width
        return out

    if previous >= 0:
        if after:
            outgoing[previous] = x.narrow(dim, 0, after)
        if before:
            incoming[previous] = shape(before)
    if following < comm.size:
        if before:
            outgoing[following] = x.narrow(dim, length - before, before)
        if after:
            incoming[following] = shape(after)
    flight = comm.start_exchange(outgoing, incoming, x, kind, tag)
    flight.finish = lambda received: (received.get(previous), received.get(following))
    if not async_op:
        flight.wait()
    return flight


class _Exchange:
    """One layer's traffic across steps: what it received last and what is still in flight."""

    def __init__(self, path: str, tag: int):
        self.path = path
        self.tag = tag
        self.received: Any = None
        self.inflight: InFlight | None = None

    def previous(self) -> Any:
        """What the previous step sent this layer (waits for it if it is still travelling)."""
        if self.inflight is not None:
            self.received = self.inflight.wait()
            self.inflight = None
        if self.received is None:
            raise RuntimeError(f"{self.path}: a displaced step needs a synchronous step before it")
        return self.received

    def drain(self) -> None:
        if self.inflight is not None:
            self.inflight.wait()
            self.inflight = None

    def clear(self) -> None:
        self.drain()
        self.received = None


class PatchState:
    """What every installed piece of one worker shares: the comm, the split, the step schedule."""

    def __init__(self, comm: AxisComm, split: PatchSplit, config: PatchParallelConfig):
        self.comm = comm
        self.split = split
        self.config = config
        self.calls = 0
        self.sync = True
        self.exchanges: list[_Exchange] = []
        self.token_hw = {h * w: (h, w) for h, w in (split.local_hw(lvl) for lvl in range(split.levels))}

    @property
    def keep_for_next(self) -> bool:
        """Whether a synchronous call must keep what it received for a displaced call after it."""
        return self.config.mode == "displaced"

    def exchange(self, path: str) -> _Exchange:
        ex = _Exchange(path, tag=len(self.exchanges))
        self.exchanges.append(ex)
        return ex

    def begin_call(self) -> None:
        self.sync = self.config.mode == "sync" or self.calls < self.config.warmup_steps
        self.calls += 1

    def split_dim(self, x: torch.Tensor) -> int:
        return x.dim() + self.split.axis

    def drain(self) -> None:
        for ex in self.exchanges:
            ex.drain()

    def reset(self) -> None:
        for ex in self.exchanges:
            ex.clear()
        self.calls = 0
        self.sync = True


# ---------------------------------------------------------------------------------------------
# Convolutions with halos
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Halo:
    """Rows a conv needs beyond the band along the split axis, and the conv's padding without them."""

    before: int
    after: int
    stride: int
    padding: tuple[int, int]


def _conv_halo(path: str, conv: nn.Conv2d, axis: int) -> _Halo | None:
    """The halo of ``conv`` along ``axis`` (-2 or -1), or ``None`` when it needs none."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ConfigError(f"{path}: patch parallelism needs integer zero padding, got {conv.padding!r}")
    i = 0 if axis == -2 else 1
    k, s, p, d = conv.kernel_size[i], conv.stride[i], conv.padding[i], conv.dilation[i]
    span = d * (k - 1)
    if not span + 1 - s <= 2 * p <= span:
        raise ConfigError(f"{path}: a convolution whose output is not its input size / stride cannot be patched")
    before, after = p, max(0, span - p - s + 1)
    if before == after == 0:
        return None
    padding = list(conv.padding)
    padding[i] = 0
    return _Halo(before, after, s, (padding[0], padding[1]))


def _or_zeros(side: torch.Tensor | None, x: torch.Tensor, dim: int, width: int) -> torch.Tensor | None:
    """A received halo, or ``width`` zero rows at the image border."""
    if side is not None or width == 0:
        return side
    shape = list(x.shape)
    shape[dim] = width
    return x.new_zeros(shape)


def _halo_conv(conv: nn.Conv2d, halo: _Halo, state: PatchState, ex: _Exchange, x: torch.Tensor) -> torch.Tensor:
    """``conv`` on ``[left halo | band | right halo]``, zero rows at the image border."""
    dim = state.split_dim(x)
    if x.shape[dim] % halo.stride:
        raise ValueError(f"{ex.path}: a band of {x.shape[dim]} is not a multiple of the stride {halo.stride}")
    if state.sync:
        left, right = _neighbour_bands(state.comm, x, dim, halo.before, halo.after, "conv_halo", ex.tag, False).result
        if state.keep_for_next:
            ex.received = (left, right)
    else:
        left, right = ex.previous()
        ex.inflight = _neighbour_bands(state.comm, x, dim, halo.before, halo.after, "conv_halo", ex.tag, True)
    parts = [_or_zeros(left, x, dim, halo.before), x, _or_zeros(right, x, dim, halo.after)]
    padded = torch.cat([p for p in parts if p is not None], dim=dim)
    return F.conv2d(padded, conv.weight, conv.bias, conv.stride, halo.padding, conv.dilation, conv.groups)


# ---------------------------------------------------------------------------------------------
# GroupNorm with statistics over all bands
# ---------------------------------------------------------------------------------------------


def _local_sums(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``([S1, S2], var, n)``: per (batch, group) sums of ``x`` and ``x^2`` (float64) over the band.

    The band's mean and variance come from the native GroupNorm kernel (one fast pass; its
    ``rstd = (var + eps)^-1/2`` gives ``var``), taken in float32 at least.
    """
    x32 = (x if x.dtype in (torch.float32, torch.float64) else x.float()).contiguous()
    b, c = x.shape[:2]
    n_per_channel = x[0, 0].numel()
    _, mean, rstd = torch.native_group_norm(x32, None, None, b, c, n_per_channel, norm.num_groups, norm.eps)
    mean, var = mean.double(), (rstd.double().pow(-2) - norm.eps).clamp_min(0)
    n = n_per_channel * (c // norm.num_groups)
    return torch.stack([mean * n, (var + mean * mean) * n]), var, n


def _normalize(norm: nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``(x - mean) (var + eps)^-1/2 w + b`` as one per-(batch, channel) scale and shift of ``x``."""
    per_group = norm.num_channels // norm.num_groups
    rstd = (var + norm.eps).rsqrt().repeat_interleave(per_group, dim=1)
    mean = mean.repeat_interleave(per_group, dim=1)
    scale = rstd * norm.weight.double() if norm.affine else rstd
    shift = (norm.bias.double() if norm.affine else 0) - mean * scale
    shape = scale.shape + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))


def _patch_group_norm(norm: nn.GroupNorm, state: PatchState, ex: _Exchange, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm of the band with statistics of all bands (exact, or corrected stale)."""
    sums, local_var, n = _local_sums(norm, x)
    comm = state.comm
    stale = not state.sync and state.config.groupnorm == "stale"
    if not stale:
        total = comm.all_reduce(sums.clone(), "groupnorm")
        if state.keep_for_next and state.config.groupnorm == "stale":
            ex.received = (total, sums)
    else:
        stale_total, stale_own = ex.previous()
        total = stale_total - stale_own + sums
        flight = comm.start_all_reduce(sums.clone(), "groupnorm")
        flight.result = (flight.result, sums)
        ex.inflight = flight
    count = n * comm.size
    mean = total[0] / count
    var = total[1] / count - mean * mean
    if stale:
        var = torch.where(var < 0, local_var, var)
    return _normalize(norm, x, mean, var.clamp_min(0))


# ---------------------------------------------------------------------------------------------
# Spatial self-attention: full or partial conditioning
# ---------------------------------------------------------------------------------------------


class PatchAttnProcessor:
    """Spatial self-attention of a band: its queries against joined keys and values (see module doc)."""

    def __init__(self, state: PatchState, ex: _Exchange):
        self.state = state
        self.ex = ex

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.dim() != 3:
            raise ValueError(f"{self.ex.path}: patch-parallel self-attention takes [B, tokens, C] without mask")
        q, k, v = temporal_qkv(attn, hidden_states)
        b, heads, tokens, d = k.shape
        if tokens not in self.state.token_hw:
            raise ValueError(f"{self.ex.path}: {tokens} tokens match no resolution level of this band")
        h, w = self.state.token_hw[tokens]
        kv = torch.stack([k, v]).view(2, b, heads, h, w, d)
        keys = torch.cat([part.flatten(3, 4) for part in self._context(kv, 3 if self.state.split.dim == "h" else 4)], 3)
        out = F.scaled_dot_product_attention(q, keys[0], keys[1], scale=attn.scale)
        return temporal_output(attn, out, hidden_states)

    def _context(self, kv: torch.Tensor, dim: int) -> list[torch.Tensor]:
        """The K/V blocks to attend to, ``[2, B, heads, rows, cols, d]`` each, this band's fresh."""
        state, ex, rank = self.state, self.ex, self.state.comm.rank
        full = state.config.full_conditioning
        if state.sync:
            parts = state.comm.all_gather(kv, "attn_kv")
            if state.keep_for_next:
                ex.received = parts if full else self._bands_of(parts, dim)
            parts[rank] = kv
            return parts
        stale = ex.previous()
        if full:
            ex.inflight = state.comm.start_all_gather(kv, "attn_kv")
            return [kv if r == rank else part for r, part in enumerate(stale)]
        rows = band_rows(state.config.portion, kv.shape[dim])
        ex.inflight = _neighbour_bands(state.comm, kv, dim, rows, rows, "attn_band", ex.tag, True)
        left, right = stale
        return [part for part in (left, kv, right) if part is not None]

    def _bands_of(self, parts: list[torch.Tensor], dim: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The neighbours' bands next to this patch, cut from a synchronous all-gather."""
        rank, size = self.state.comm.rank, self.state.comm.size
        length = parts[rank].shape[dim]
        rows = band_rows(self.state.config.portion, length)
        left = parts[rank - 1].narrow(dim, length - rows, rows).clone() if rank > 0 else None
        right = parts[rank + 1].narrow(dim, 0, rows).clone() if rank < size - 1 else None
        return left, right


# ---------------------------------------------------------------------------------------------
# Finding and wrapping the spatial modules
# ---------------------------------------------------------------------------------------------


def install_spatial(modules: SpatialModules, state: PatchState) -> list[Callable[[], None]]:
    """Wrap convs, GroupNorms and self-attentions; returns the undo functions, in install order."""
    undo: list[Callable[[], None]] = []
    for path, conv in modules.convs:
        halo = _conv_halo(path, conv, state.split.axis)
        if halo is not None:
            ex = state.exchange(path)
            undo.append(patch_forward(conv, functools.partial(_halo_conv, conv, halo, state, ex)))
    for path, norm in modules.norms:
        undo.append(patch_forward(norm, functools.partial(_patch_group_norm, norm, state, state.exchange(path))))
    for path, attn in modules.attentions:
        previous = attn.processor
        attn.set_processor(PatchAttnProcessor(state, state.exchange(path)))
        undo.append(functools.partial(attn.set_processor, previous))
    return undo


# ---------------------------------------------------------------------------------------------
# Installation on a UNet
# ---------------------------------------------------------------------------------------------


class PatchParallelHandle:
    """A patch-parallel installation on one worker's UNet.

    ``calls`` counts UNet calls since installation (or :meth:`reset`); ``synchronous`` says
    whether the latest call was synchronous. :meth:`remove` waits for the exchanges in flight
    and restores the model exactly.
    """

    def __init__(self, state: PatchState, modules: SpatialModules, undo: list[Callable[[], None]]):
        self._state = state
        self._undo = undo
        self.modules = modules

    @property
    def split(self) -> PatchSplit:
        return self._state.split

    @property
    def config(self) -> PatchParallelConfig:
        return self._state.config

    @property
    def comm(self) -> AxisComm:
        return self._state.comm

    @property
    def band(self) -> range:
        """The latent rows (columns) this worker owns."""
        return self._state.split.band(self._state.comm.rank)

    @property
    def calls(self) -> int:
        return self._state.calls

    @property
    def synchronous(self) -> bool:
        return self._state.sync

    def reset(self) -> None:
        """Forget the stale state and the call count (a new render with the same installation)."""
        self._state.reset()

    def remove(self) -> None:
        """Wait for the exchanges in flight, then put back the original forwards and processors."""
        self._state.drain()
        while self._undo:
            self._undo.pop()()


def _fingerprint(split: PatchSplit, config: PatchParallelConfig) -> int:
    return zlib.crc32(repr((split, config)).encode())


def agree_on_split(comm: AxisComm, split: PatchSplit, config: PatchParallelConfig) -> None:
    """One small all-gather: every rank must hold the same split and config (else ConfigError on all)."""
    if split.parts != comm.size:
        raise ConfigError(f"the split has {split.parts} bands but the patch axis has {comm.size} workers")
    mine = torch.tensor([_fingerprint(split, config)], dtype=torch.int64, device=comm.device)
    prints = [int(t.item()) for t in comm.all_gather(mine, "setup")]
    if len(set(prints)) > 1:
        raise ConfigError("patch workers disagree on the latent split or the patch config")


def _check_band_input(split: PatchSplit, rank: int) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        expected = split.local_hw(0)
        if tuple(sample.shape[-2:]) != expected:
            raise ValueError(
                f"patch worker {rank} expects its band {expected} of the latent, got {tuple(sample.shape[-2:])}"
            )

    return hook


def apply_patch_parallel(
    unet: nn.Module,
    comm: AxisComm,
    split: PatchSplit,
    config: PatchParallelConfig,
    modules: SpatialModules | None = None,
) -> PatchParallelHandle:
    """Install patch parallelism on ``unet``; this worker owns band ``split.band(comm.rank)``.

    Every rank of ``comm`` must call this (one small collective checks that all share ``split``
    and ``config``). Afterwards call the UNet with this worker's band only,
    ``split.take(sample, comm.rank)``; :class:`PatchDenoiser` does that inside a sampling loop.
    Install patch parallelism *before* clip parallelism when both are used: clip parallelism
    then takes over the temporal norms it synchronises itself. ``modules``: what to wrap, as the
    model's family finds it (:meth:`~videogen.models.family.ModelFamily.spatial_modules`); by default
    the spatial modules of a UNet whose temporal layers are UNet3D's.
    """
    levels = len(unet.config.block_out_channels)
    if split.levels != levels:
        raise ConfigError(f"the split was made for {split.levels} resolution levels, the UNet has {levels}")
    modules = modules if modules is not None else unet_spatial_modules(unet)
    if any(isinstance(attn.processor, PatchAttnProcessor) for _, attn in modules.attentions):
        raise RuntimeError("patch parallelism is already installed on this UNet; remove it first")
    agree_on_split(comm, split, config)
    state = PatchState(comm, split, config)
    undo = install_spatial(modules, state)
    undo.append(unet.register_forward_pre_hook(_check_band_input(split, comm.rank), with_kwargs=True).remove)
    undo.append(unet.register_forward_pre_hook(lambda module, args: state.begin_call()).remove)
    return PatchParallelHandle(state, modules, undo)


OUTPUT_ELEMENT_SIZE = 4
"""Bytes per element of the gathered guided output: float32, the latents' dtype."""


class PatchDenoiser:
    """Wraps a denoiser ``(latents, t) -> guided output``: the UNet sees this worker's band only.

    The latents stay whole (and identical) on every patch worker; each step the band's guided
    output is all-gathered along the split axis once (``kind="output"``), so the scheduler steps
    the whole latent the same way everywhere.
    """

    def __init__(self, inner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], comm: AxisComm, split: PatchSplit):
        self.inner = inner
        self.comm = comm
        self.split = split

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        out = self.inner(self.split.take(latents, self.comm.rank), timestep)
        return torch.cat(self.comm.all_gather(out, "output"), dim=out.dim() + self.split.axis)


# ---------------------------------------------------------------------------------------------
# Traffic from the module structure
# ---------------------------------------------------------------------------------------------


def unet_spatial_modules(unet: nn.Module) -> SpatialModules:
    """The spatial modules of a UNet whose temporal layers are UNet3D's (the default of the installers)."""
    return find_spatial_modules(unet, find_temporal_modules(unet).paths())


def _layer_inputs(
    unet: nn.Module, sample_shape: tuple[int, ...], spatial_modules: SpatialFinder
) -> tuple[SpatialModules, dict[str, tuple]]:
    """The input shape of every wrapped layer in one forward of a meta-device copy of ``unet``."""
    with torch.device("meta"):
        meta = type(unet).from_config(unet.config)
        sample = torch.empty(sample_shape)
        context = torch.empty(sample_shape[0], 1, unet.config.cross_attention_dim)
    modules = spatial_modules(meta)
    shapes: dict[str, tuple] = {}
    hooks = []
    for path, module in [*modules.convs, *modules.norms, *modules.attentions]:
        hooks.append(module.register_forward_pre_hook(functools.partial(_record, shapes, path)))
    try:
        with torch.no_grad():
            meta(sample, torch.tensor(500), context)
    finally:
        for hook in hooks:
            hook.remove()
    return modules, shapes


def _record(shapes: dict[str, tuple], path: str, module: nn.Module, args: tuple) -> None:
    shapes[path] = tuple(args[0].shape)


def traffic_per_step(
    unet: nn.Module,
    split: PatchSplit,
    config: PatchParallelConfig,
    batch: int,
    frames: int,
    element_size: int = 4,
    synchronous: bool = False,
    rank: int | None = None,
    spatial_modules: SpatialFinder | None = None,
) -> dict[str, float]:
    """Bytes received per patch worker in one denoising step, by kind: patch worker ``rank``'s, or with
    ``rank=None`` the mean over the workers.

    From the module structure: one UNet forward on the meta device (no weights, no compute)
    records every wrapped layer's full-frame input; then, with ``N`` bands of length ``L`` along
    the split axis and ``R`` the size of a row (column) of a layer input:

    - ``conv_halo``: ``(N-1)/N (before + after) R`` per conv (a worker receives ``before R`` from the
      previous band and ``after R`` from the next, where they exist);
    - ``groupnorm``: the all-reduced ``(S1, S2)``: ``2 x batch x groups`` float64 per norm;
    - ``attn_kv`` (synchronous calls, and displaced full conditioning): ``(N-1)`` bands of K and V;
    - ``attn_band`` (displaced PCPP): ``2 (N-1)/N`` neighbour bands (a worker's one or two) of
      ``band_rows(portion, L)`` rows of K and V;
    - ``output``: the other ``N-1`` bands of the guided output ``(1, C, frames, H, W)``, float32 like
      the latents whatever the activation dtype.

    ``batch`` is the UNet batch (2 with classifier-free guidance batched), ``element_size`` the
    activation dtype's, ``synchronous`` whether the step is a warm-up (or sync-mode) step,
    ``spatial_modules`` the family's finder (default: :func:`unet_spatial_modules`).
    """
    n = split.parts
    h, w = split.latent_hw
    finder = spatial_modules or unet_spatial_modules
    modules, shapes = _layer_inputs(unet, (batch, unet.config.in_channels, frames, h, w), finder)
    along = 0 if split.dim == "h" else 1
    share = (n - 1) / n
    has_previous, has_next = (share, share) if rank is None else (float(rank > 0), float(rank < n - 1))
    out: dict[str, float] = {}

    def add(kind: str, value: float) -> None:
        out[kind] = out.get(kind, 0.0) + value

    for path, conv in modules.convs:
        halo = _conv_halo(path, conv, split.axis)
        if halo is not None and path in shapes:
            b, c, rows, cols = shapes[path]
            received = has_previous * halo.before + has_next * halo.after
            add("conv_halo", received * b * c * (cols, rows)[along] * element_size)
    for path, norm in modules.norms:
        if path in shapes:
            add("groupnorm", (2 * shapes[path][0] * norm.num_groups * 8) if n > 1 else 0)
    for path, attn in modules.attentions:
        b, tokens, _ = shapes[path]
        inner = attn.to_k.out_features
        level = next(lvl for lvl in range(split.levels) if (h >> lvl) * (w >> lvl) == tokens)
        local_hw = split.local_hw(level)
        kv = 2 * b * local_hw[0] * local_hw[1] * inner * element_size
        if synchronous or config.mode == "sync" or config.full_conditioning:
            add("attn_kv", (n - 1) * kv)
        else:
            rows = band_rows(config.portion, local_hw[along])
            add("attn_band", (has_previous + has_next) * kv * rows / local_hw[along])
    add("output", (n - 1) * unet.config.out_channels * frames * h * w / n * OUTPUT_ELEMENT_SIZE)
    return {kind: value for kind, value in out.items() if value}
