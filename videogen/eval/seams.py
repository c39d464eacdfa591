"""Where a video may break: at the boundaries between clip workers, and where a prompt schedule switches.

* :func:`boundary_jumps`: clip parallelism renders frames ``[s_k, e_k)`` on worker ``k``; a seam shows as a
  bigger change across a boundary pair ``(e_k - 1, e_k)`` than between frames inside a clip. With
  ``d_t = mean |F_{t+1} - F_t|`` (all pixels and channels, in levels) and ``s_t = |c_{t+1} - c_t|`` the
  main object's step (pairs where it is seen in both frames),

  ``pixel ratio = mean_{t in B} d_t / mean_{t not in B} d_t``, ``track ratio = mean_{t in B} s_t /
  mean_{t not in B} s_t``,

  over the boundary pairs ``B``; 1 means a boundary looks like any other pair, a seam shows as a ratio
  well above 1 (Video-Infinity, arXiv 2406.16260, section 4, is what clip parallelism and dual-scope
  attention must keep seamless).
* :func:`switch_frame`: a schedule that changes the main object's colour from ``a`` to ``b`` at frame
  ``k`` should show ``b`` from about ``k`` on. The switch is the frame ``t`` that best splits the video
  into ``a`` before and ``b`` from ``t`` on: ``argmax_t (#{u < t: a in u} + #{u >= t: b in u})``, where
  ``a in u`` when the most frequent prompted colour of frame ``u``'s dominant objects is ``a``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from videogen.data.measure import dominant_objects

__all__ = ["BoundaryJumps", "boundary_jumps", "boundary_pairs", "frame_colours", "switch_frame"]


@dataclass(frozen=True)
class BoundaryJumps:
    """Change across clip boundaries against change inside clips (:func:`boundary_jumps`)."""

    pixel_ratio: float
    track_ratio: float
    boundary_pixel: float
    within_pixel: float
    boundaries: int


def boundary_pairs(clips: Sequence[range]) -> list[int]:
    """The first frame ``t`` of each boundary pair ``(t, t + 1)`` between consecutive clips."""
    return [clip.stop - 1 for clip in clips[:-1]]


def _ratio(values: np.ndarray, at: np.ndarray) -> float:
    inside, across = values[~at & np.isfinite(values)], values[at & np.isfinite(values)]
    if not len(inside) or not len(across):
        return math.nan
    base = float(inside.mean())
    return float(across.mean()) / base if base > 0 else (math.inf if float(across.mean()) > 0 else 1.0)


def boundary_jumps(frames: np.ndarray, clips: Sequence[range], centres: np.ndarray | None = None) -> BoundaryJumps:
    """Pixel and track change across the boundaries of ``clips`` relative to inside them.

    ``frames``: ``(F, H, W, 3)`` uint8; ``clips``: the workers' frame ranges tiling ``range(F)``;
    ``centres``: the main object's ``(F, 2)`` track (NaN where unseen), or None for the pixel figures only.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames are (F, H, W, 3), got shape {frames.shape}")
    if [f for c in clips for f in c] != list(range(len(frames))):
        raise ValueError(f"clips {list(clips)} do not tile the video's {len(frames)} frames")
    at = np.zeros(len(frames) - 1, dtype=bool)
    at[boundary_pairs(clips)] = True
    change = np.abs(np.diff(frames.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))
    track = math.nan
    if centres is not None:
        steps = np.linalg.norm(np.diff(np.asarray(centres, dtype=np.float64), axis=0), axis=1)
        track = _ratio(steps, at)
    return BoundaryJumps(
        pixel_ratio=_ratio(change, at),
        track_ratio=track,
        boundary_pixel=float(change[at].mean()) if at.any() else math.nan,
        within_pixel=float(change[~at].mean()) if (~at).any() else math.nan,
        boundaries=int(at.sum()),
    )


def frame_colours(frames: np.ndarray, colours: Sequence[str], *, min_area: int | None = None) -> list[str | None]:
    """Per frame, which of ``colours`` covers the most pixels among the frame's dominant objects (None: none)."""
    out: list[str | None] = []
    for frame in np.asarray(frames):
        area = {c: 0 for c in colours}
        for blob in dominant_objects(frame, min_area=min_area):
            if blob.colour in area:
                area[blob.colour] += blob.area
        best = max(colours, key=lambda c: area[c])
        out.append(best if area[best] > 0 else None)
    return out


def switch_frame(frames: np.ndarray, before: str, after: str, *, min_area: int | None = None) -> int:
    """The frame from which the video shows ``after`` instead of ``before`` (see the module docstring)."""
    seen = frame_colours(frames, (before, after), min_area=min_area)
    a = np.array([c == before for c in seen], dtype=int)
    b = np.array([c == after for c in seen], dtype=int)
    agree = [int(a[:t].sum() + b[t:].sum()) for t in range(len(seen) + 1)]
    return int(np.argmax(agree))
