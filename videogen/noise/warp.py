"""Go-with-the-Flow noise warping (Burgert et al., "Go-with-the-Flow", CVPR 2025, Sec. 3, Algorithm 1).

Each frame keeps a noise image ``q`` (C, H, W) and a flow density ``p`` (H, W). One step moves the
noise along integer forward/backward flows ``f``, ``b`` (how real flows are rounded: "Sub-pixel
motion" below) with a bipartite graph of explicit edges:

* contraction: every previous pixel ``v`` sends an edge to ``v + f(v)`` when it lands inside;
* expansion: every next-frame pixel ``v'`` that received nothing takes an edge from
  ``v' + b(v')`` when that lies inside;
* conditional white-noise splitting: a source of out-degree ``d`` gives its edges
  ``X_i = q(v)/d + (Z_i - S/d)/sqrt(d)`` with ``Z ~ N(0, I_d)``, ``S = sum Z`` (so ``X_i ~ N(0, 1/d)``,
  pairwise independent, ``sum X_i = q(v)``);
* density-weighted merging: with ``a = p(v)/d(v)`` per edge, ``q'(v') = sum a X / sqrt(sum a^2/d)`` and
  ``p'(v') = sum a``; a pixel that no edge reaches gets fresh N(0, 1) noise and density 1.

If ``q`` is i.i.d. N(0, 1) so is ``q'`` (the paper's Proposition 1). Sources are tracked by index,
not by grouping equal float values as the reference code does.

Sub-pixel motion. Rounding each step's flow on its own loses every motion under half a pixel per
frame (and turns 0.8 pixels per frame into 1). So each pixel also carries a remainder ``r(v)`` in
R^2, the part of its accumulated motion not yet applied as whole pixels (its noise is, in effect, at
``v + r(v)``), and the edges above move by whole pixels chosen with it, ``R(x) = floor(x + 1/2)``:

* a contraction edge goes to ``v + R(f(v) + r(v))`` and carries ``f + r - R(f + r)`` (in [-1/2, 1/2));
* the expansion edge of a hole ``v'`` (from ``s = v' + round(b(v'))``) moves the whole pixels
  ``-round(b)`` of the motion ``-b(v')`` and so carries ``r(s) + round(b(v')) - b(v')``, clamped to
  [-1, 1]: the hole's share of ``s`` stays where the noise of ``s`` is, so the pieces of a source
  stretched over several pixels move together and merge back where they meet instead of drifting
  into their neighbours (without the clamp, a hole refilled every frame from its own previous piece
  would let the remainder grow with the distance its source travelled);
* a next-frame pixel takes the ``alpha``-weighted mean of its incoming contraction edges'
  remainders (the noise's merge weights), a hole its one expansion edge's, a fresh pixel 0.

A uniform flow ``u`` then moves the noise by exactly ``R(t u)`` whole pixels in ``t`` steps
(``t R(u)`` without the remainder). The remainders only choose the integer edges; the noise values
(splits, merges, fresh draws) follow the paper unchanged, so every frame is still exactly i.i.d.
N(0, 1), and the state is still one frame: (noise, density, remainder).

Warping on a grid ``k`` times finer than the output and pooling each k x k block back with
``sum / k`` (the block holds k^2 independent unit Gaussians, so the pooled value is again N(0, 1))
moves the output noise in steps of ``1/k`` output pixel rather than whole pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from videogen.errors import MediaError
from videogen.noise.gaussian import frame_noise

NoiseDraw = Callable[[Literal["split", "fresh"], int], torch.Tensor]
"""``draw(kind, count) -> (C, count)`` standard normal samples for ``count`` split edges or fresh pixels."""

# Sub-streams of ``frame_noise(seed, frame, ..., stream="warp", step=...)``.
_INIT, _SPLIT, _FRESH, _DEGRADE = 0, 1, 2, 3
# Densities are kept at mean 1 (the merge is scale invariant) and floored here, so a pixel split
# every frame for hundreds of frames keeps a tiny but non-zero weight instead of underflowing.
_MIN_DENSITY = 1e-20
# A hole's remainder is clamped to this many pixels per axis (module docstring).
_MAX_HOLE_REMAINDER = 1.0

OFF_FRAME = 1.0e6
"""A flow component that leaves any frame: marks a pixel with no match in the other frame
(occluded in the forward flow: its noise vanishes; revealed in the backward flow: fresh noise)."""


class FlowError(MediaError):
    """A flow field that cannot drive the warper: wrong shape, non-finite values, mismatched sizes."""


@dataclass(frozen=True)
class WarpResult:
    """One warp step: next-frame noise (C, H, W), density (H, W), where fresh noise was drawn (H, W)
    and the sub-pixel remainder (2, H, W) of every pixel's motion."""

    noise: torch.Tensor
    density: torch.Tensor
    fresh: torch.Tensor
    remainder: torch.Tensor


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads, then restore the previous setting.

    Warping is memory bound: one thread is about as fast as several, and it cannot stall the way an
    OpenMP team does when other processes oversubscribe the cores.
    """
    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_flow(flow: torch.Tensor, size: tuple[int, int], name: str) -> None:
    """Raise :class:`FlowError` unless ``flow`` is a finite (2, H, W) tensor with (H, W) == ``size``."""
    if not isinstance(flow, torch.Tensor) or flow.dim() != 3 or flow.shape[0] != 2:
        shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise FlowError(f"{name} flow must be shaped (2, H, W) as (dx, dy), got {shape}")
    if tuple(flow.shape[1:]) != tuple(size):
        raise FlowError(f"{name} flow is {tuple(flow.shape[1:])} but the warp grid is {tuple(size)}")
    if not flow.is_floating_point():
        raise FlowError(f"{name} flow must be floating point, got {flow.dtype}")
    if not bool(torch.isfinite(flow).all()):
        raise FlowError(f"{name} flow contains NaN or infinite values")


def _flat_targets(step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat index of ``v + step(v)`` for every pixel ``v`` of a whole-pixel (2, H, W) ``step`` (``v``
    itself where that leaves the frame) and the mask of moves that stay inside. Indices are int64."""
    _, h, w = step.shape
    limit = float(2 * max(h, w))
    step = step.clamp(-limit, limit).long()
    cols = torch.arange(w, device=step.device)
    rows = torch.arange(h, device=step.device)[:, None]
    x, y = step[0] + cols, step[1] + rows
    inside = ((x >= 0) & (x < w) & (y >= 0) & (y < h)).reshape(-1)
    own = (rows * w + cols).reshape(-1)
    return torch.where(inside, (y * w + x).reshape(-1), own), inside


def _targets(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_flat_targets` of ``round(flow)`` (nearest pixel, ties to even): the backward look-up."""
    return _flat_targets(flow.round())


def warp_frame(
    noise: torch.Tensor,
    density: torch.Tensor,
    forward: torch.Tensor,
    backward: torch.Tensor,
    draw: NoiseDraw,
    *,
    remainder: torch.Tensor | None = None,
) -> WarpResult:
    """One next-frame warp (paper Algorithm 1) of ``noise`` (C, H, W) with flows in grid pixels.

    ``forward`` (2, H, W) maps each previous pixel to the next frame, ``backward`` (2, H, W) maps each
    next-frame pixel back to the previous frame; both hold (dx, dy). ``remainder`` (2, H, W; zero when
    omitted) is each previous pixel's motion not yet applied: a pixel moves by the whole pixels
    ``floor(f + r + 1/2)`` and the result's ``remainder`` is the next frame's (module docstring).
    The backward flow is rounded to the nearest pixel. ``draw`` supplies the standard normal samples
    for split edges and fresh pixels.

    Layout: every previous pixel has one contraction slot (weight 0 when its move leaves the frame);
    each hole (a next-frame pixel no contraction reached) receives exactly one expansion edge, so
    for a hole the merge reduces to ``q'(v') = sqrt(d) X_e`` and ``p'(v') = p(v)/d``.
    """
    _, h, w = noise.shape
    check_flow(forward, (h, w), "forward")
    check_flow(backward, (h, w), "backward")
    if remainder is None:
        remainder = torch.zeros_like(forward)
    elif tuple(remainder.shape) != (2, h, w) or not bool(torch.isfinite(remainder).all()):
        raise FlowError(f"remainder must be a finite (2, H, W) = {(2, h, w)} tensor, got {tuple(remainder.shape)}")
    return _warp_frame(noise, density, forward, backward, draw, remainder.to(forward))


def _warp_frame(
    noise: torch.Tensor,
    density: torch.Tensor,
    forward: torch.Tensor,
    backward: torch.Tensor,
    draw: NoiseDraw,
    remainder: torch.Tensor,
) -> WarpResult:
    """:func:`warp_frame` on checked flows and a remainder of the flows' dtype."""
    channels, h, w = noise.shape
    n = h * w
    q, p = noise.reshape(channels, n), density.reshape(n)

    motion = forward + remainder
    step = (motion + 0.5).floor_()
    target, moved = _flat_targets(step)
    back_step = backward.round()
    source, inside = _flat_targets(back_step)
    hit = noise.new_zeros(n).scatter_add_(0, target, moved.to(noise.dtype)) > 0
    holes = (inside & ~hit).nonzero().squeeze(1)
    src_e = source[holes]
    degree = moved.to(noise.dtype) + torch.bincount(src_e, minlength=n).to(noise.dtype)
    deg_e = degree[src_e]

    # Contraction: weights alpha = p/d, rescaled per target by their maximum (the merge is invariant
    # to that scale, and densities spread over many orders of magnitude then never underflow).
    alpha = torch.where(moved, p / degree.clamp_min(1.0), torch.zeros_like(p))
    new_density = noise.new_zeros(n).scatter_add_(0, target, alpha)
    # Remainders: the alpha-weighted mean of the contraction edges' leftovers at each target (alpha
    # itself never underflows: densities are floored at _MIN_DENSITY); 0 where no edge arrives.
    leftover = motion.sub_(step).reshape(2, n).mul_(alpha.to(motion.dtype))
    new_remainder = motion.new_zeros(2, n).scatter_add_(1, target.expand(2, -1), leftover)
    new_remainder /= new_density.clamp_min(1e-30).to(motion.dtype)
    peak = noise.new_zeros(n).scatter_reduce_(0, target, alpha, "amax", include_self=False)
    alpha = alpha / peak[target].clamp_min(1e-30)
    values = q * (alpha / degree.clamp_min(1.0))
    expanded = q.index_select(1, src_e) / deg_e
    _add_split_noise(values, expanded, alpha, degree, src_e, draw)

    merged = noise.new_zeros(channels, n).scatter_add_(1, target.expand(channels, -1), values)
    weight = noise.new_zeros(n).scatter_add_(0, target, alpha * alpha / degree.clamp_min(1.0))
    merged *= weight.clamp_min(1e-30).rsqrt()  # pixels no contraction reached hold 0 here
    merged[:, holes] = expanded * deg_e.sqrt()
    new_density[holes] = p[src_e] / deg_e
    if holes.numel():
        new_remainder[:, holes] = _hole_remainder(remainder, backward, back_step, holes, src_e)

    fresh = ~hit
    fresh[holes] = False
    fresh_idx = fresh.nonzero().squeeze(1)
    if fresh_idx.numel():
        merged[:, fresh_idx] = draw("fresh", fresh_idx.numel()).to(merged)
        new_density[fresh_idx] = 1.0
    new_density = (new_density / new_density.mean()).clamp_min_(_MIN_DENSITY)
    return WarpResult(
        merged.reshape(channels, h, w), new_density.reshape(h, w), fresh.reshape(h, w), new_remainder.reshape(2, h, w)
    )


def _hole_remainder(
    remainder: torch.Tensor, backward: torch.Tensor, back_step: torch.Tensor, holes: torch.Tensor, src_e: torch.Tensor
) -> torch.Tensor:
    """(2, E) remainders the expansion edges carry into the holes: ``r(s) + round(b) - b`` of each hole's
    backward flow ``b`` and source ``s``, clamped to one pixel per axis (module docstring)."""
    b = backward.reshape(2, -1)[:, holes]
    carried = remainder.reshape(2, -1)[:, src_e] + back_step.reshape(2, -1)[:, holes] - b
    return carried.clamp_(-_MAX_HOLE_REMAINDER, _MAX_HOLE_REMAINDER)


def _add_split_noise(
    values: torch.Tensor,
    expanded: torch.Tensor,
    alpha: torch.Tensor,
    degree: torch.Tensor,
    src_e: torch.Tensor,
    draw: NoiseDraw,
) -> None:
    """Add ``(Z_e - S_v/d)/sqrt(d)`` to every edge whose source ``v`` has out-degree ``d > 1``.

    ``values`` (C, N) hold the contraction contributions ``alpha * X`` (scaled by the contraction
    weight ``alpha``), ``expanded`` (C, E) the expansion edges' ``X``. The samples are drawn for the
    contraction edges in pixel order, then the expansion edges in hole order.
    """
    multi_c = ((alpha > 0) & (degree > 1)).nonzero().squeeze(1)
    multi_e = (degree[src_e] > 1).nonzero().squeeze(1)
    if not multi_e.numel():
        return  # a source splits only when it feeds a hole
    z = draw("split", multi_c.numel() + multi_e.numel()).to(values)
    z_c, z_e = z[:, : multi_c.numel()], z[:, multi_c.numel() :]
    total = values.new_zeros(values.shape)
    total[:, multi_c] = z_c
    src_m = src_e[multi_e]
    total.index_add_(1, src_m, z_e)
    d_c, d_e = degree[multi_c], degree[src_m]
    values.index_add_(1, multi_c, (z_c - total.index_select(1, multi_c) / d_c) * (alpha[multi_c] / d_c.sqrt()))
    expanded.index_add_(1, multi_e, (z_e - total.index_select(1, src_m) / d_e) / d_e.sqrt())


def pool_noise(noise: torch.Tensor, factor: int) -> torch.Tensor:
    """Sum each ``factor x factor`` block of (C, kH, kW) noise and divide by ``factor`` (= sqrt(k^2))."""
    if factor == 1:
        return noise
    c, gh, gw = noise.shape
    blocks = noise.reshape(c, gh // factor, factor, gw // factor, factor)
    return blocks.sum(dim=(2, 4)) / factor


def degrade(noise: torch.Tensor, fresh: torch.Tensor, gamma: float) -> torch.Tensor:
    """The paper's degradation blend ``((1-g) Q + g Z) / sqrt((1-g)^2 + g^2)`` (variance preserving)."""
    if gamma == 0.0:
        return noise
    return ((1.0 - gamma) * noise + gamma * fresh) / math.sqrt((1.0 - gamma) ** 2 + gamma**2)


class NoiseWarper:
    """Streaming warper: holds only the current frame's noise, density and sub-pixel remainder.

    Frame 0 is ``frame_noise(seed, 0, (C, kH, kW), stream="warp")``; each :meth:`step` advances one
    frame. All random samples of frame ``t`` come from ``frame_noise(seed, t, ..., stream="warp")``
    sub-streams, so the sequence depends only on (seed, flows), never on who computes it.
    Flows passed to :meth:`step` live on the warp grid ``grid_size = (k*height, k*width)`` and are in
    grid pixels; the read-out :meth:`noise` is (C, height, width).
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        *,
        seed: int,
        upsample: int = 1,
        degradation: float = 0.0,
        device: str | torch.device = "cpu",
    ) -> None:
        if min(channels, height, width, upsample) < 1:
            raise ValueError("channels, height, width and upsample must all be >= 1")
        if not 0.0 <= degradation <= 1.0:
            raise ValueError(f"degradation must be in [0, 1], got {degradation}")
        self.channels, self.height, self.width = channels, height, width
        self.upsample = upsample
        self.degradation = degradation
        self.seed = seed
        self.device = torch.device(device)
        self.frame = 0
        grid = (channels, *self.grid_size)
        self._state = frame_noise(seed, 0, grid, stream="warp", step=_INIT).to(self.device)
        self._density = torch.ones(self.grid_size, device=self.device)
        self._remainder = torch.zeros(2, *self.grid_size, device=self.device)
        self._fresh = torch.zeros(self.grid_size, dtype=torch.bool, device=self.device)
        self._readout: torch.Tensor | None = None

    @property
    def grid_size(self) -> tuple[int, int]:
        """(H, W) of the warp grid: the output size times the upsampling factor."""
        return self.height * self.upsample, self.width * self.upsample

    @property
    def fresh_mask(self) -> torch.Tensor:
        """Grid pixels that got fresh noise in the last step (all False for frame 0)."""
        return self._fresh

    @property
    def grid_noise(self) -> torch.Tensor:
        """The current frame's clean warped noise on the warp grid (before pooling and degradation)."""
        return self._state

    @property
    def density(self) -> torch.Tensor:
        """Flow density of the current frame on the warp grid, normalised to mean 1."""
        return self._density

    @property
    def remainder(self) -> torch.Tensor:
        """Sub-pixel motion (2, H, W) of every grid pixel not yet applied as whole pixels (zero for frame 0)."""
        return self._remainder

    def noise(self) -> torch.Tensor:
        """The current frame's noise (C, height, width): pooled to the output size, then degraded."""
        if self._readout is None:
            pooled = pool_noise(self._state, self.upsample)
            if self.degradation > 0.0:
                z = self._draw(_DEGRADE, (self.channels, self.height, self.width))
                pooled = degrade(pooled, z, self.degradation)
            self._readout = pooled
        return self._readout

    def step(self, forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        """Advance one frame along (forward, backward) grid flows and return the new :meth:`noise`."""
        check_flow(forward, self.grid_size, "forward")
        check_flow(backward, self.grid_size, "backward")
        self.frame += 1
        subs = {"split": _SPLIT, "fresh": _FRESH}
        result = _warp_frame(  # the flows were checked above
            self._state,
            self._density,
            forward.to(self.device, torch.float32),
            backward.to(self.device, torch.float32),
            lambda kind, count: self._draw(subs[kind], (self.channels, count)),
            self._remainder,
        )
        self._state, self._density, self._fresh = result.noise, result.density, result.fresh
        self._remainder = result.remainder
        self._readout = None
        return self.noise()

    def _draw(self, sub: int, shape: tuple[int, ...]) -> torch.Tensor:
        return frame_noise(self.seed, self.frame, shape, stream="warp", step=sub).to(self.device)


# ----------------------------------------------------------------------------------------------
# Diagnostics: the Gaussianity protocol of the paper's Table 1 (K-S test and Moran's I).
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianityStats:
    """Per-frame statistics of noise that should be i.i.d. N(0, 1).

    ``ks`` / ``ks_p``: Kolmogorov-Smirnov distance to N(0, 1) over all values and its asymptotic
    p-value; ``moran_i`` / ``moran_p``: Moran's I with 4-neighbour weights (mean over channels) and
    its two-sided p-value under independence (expected value ``-1/(N-1)``).
    """

    mean: float
    var: float
    ks: float
    ks_p: float
    moran_i: float
    moran_p: float


def ks_normal(values: torch.Tensor) -> tuple[float, float]:
    """K-S distance ``D = sup |F_n - Phi|`` to N(0, 1) and its asymptotic p-value.

    ``p = Q_KS(lambda)``, ``lambda = (sqrt(n) + 0.12 + 0.11/sqrt(n)) D``,
    ``Q_KS(l) = 2 sum_k (-1)^(k-1) exp(-2 k^2 l^2)``.
    """
    x = values.detach().reshape(-1).double().sort().values
    n = x.numel()
    cdf = torch.special.ndtr(x)
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    d = float(torch.maximum(ranks / n - cdf, cdf - (ranks - 1) / n).max())
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    if lam < 0.2:
        return d, 1.0
    p = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return d, min(max(p, 0.0), 1.0)


def morans_i(frame: torch.Tensor) -> tuple[float, float]:
    """Moran's I of one (H, W) image with rook (4-neighbour) binary weights, and its z-test p-value.

    ``I = N / S0 * sum_ij w_ij z_i z_j / sum_i z_i^2`` with ``z`` the centred values.
    """
    z = frame.detach().double()
    z = z - z.mean()
    h, w = z.shape
    cross = 2.0 * float((z[:, 1:] * z[:, :-1]).sum() + (z[1:, :] * z[:-1, :]).sum())
    s0 = 2.0 * (h * (w - 1) + (h - 1) * w)
    value = h * w / s0 * cross / float((z * z).sum())
    expected, var = _moran_null(h, w)
    return value, math.erfc(abs(value - expected) / math.sqrt(2.0 * var))


def gaussianity(noise: torch.Tensor) -> GaussianityStats:
    """:class:`GaussianityStats` of one (C, H, W) noise frame."""
    values = noise.detach().double()
    ks, ks_p = ks_normal(values)
    moran = sum(morans_i(c)[0] for c in values) / values.shape[0]
    expected, var = _moran_null(*values.shape[1:])
    z = (moran - expected) / math.sqrt(var / values.shape[0])
    return GaussianityStats(
        mean=float(values.mean()),
        var=float(values.var()),
        ks=ks,
        ks_p=ks_p,
        moran_i=moran,
        moran_p=math.erfc(abs(z) / math.sqrt(2.0)),
    )


def _moran_null(h: int, w: int) -> tuple[float, float]:
    """(E[I], Var[I]) of Moran's I under independence (normality assumption) for an (h, w) rook grid.

    ``Var = (N^2 S1 - N S2 + 3 S0^2) / ((N^2 - 1) S0^2) - E[I]^2``, ``E[I] = -1/(N-1)``; with binary
    symmetric weights ``S0 = 2P``, ``S1 = 4P`` (P neighbour pairs) and ``S2 = 4 sum_i deg_i^2``.
    """
    n = h * w
    pairs = h * (w - 1) + (h - 1) * w
    s0, s1 = 2.0 * pairs, 4.0 * pairs
    interior = max(h - 2, 0) * max(w - 2, 0)
    edge = 2 * max(h - 2, 0) + 2 * max(w - 2, 0)
    corners = 4
    s2 = 4.0 * (16 * interior + 9 * edge + 4 * corners)
    expected = -1.0 / (n - 1)
    var = (n * n * s1 - n * s2 + 3.0 * s0 * s0) / ((n * n - 1) * s0 * s0) - expected**2
    return expected, var


def flow_correlation(previous: torch.Tensor, current: torch.Tensor, backward: torch.Tensor) -> float:
    """Correlation of ``current(v')`` with ``previous(v' + round(b(v')))`` over in-bounds pixels.

    ``previous``/``current`` are (C, H, W) noise frames and ``backward`` the (2, H, W) flow from the
    current frame to the previous one, in pixels of this grid: high when the noise follows the flow.
    """
    c, h, w = current.shape
    check_flow(backward, (h, w), "backward")
    source, inside = _targets(backward.to(current.device, torch.float32))
    a = previous.reshape(c, -1)[:, source[inside]].double().reshape(-1)
    b = current.reshape(c, -1)[:, inside].double().reshape(-1)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))
