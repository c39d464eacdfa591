"""Motion control measured on a render: where an object went against where the motion asked it to go.

A warped-noise job (``noise.kind: warped``, docs/warped_noise.md) states a motion: a camera move that
carries the whole scene, or a region dragged along a path. :func:`requested_motion` turns the motion
into one 2x3 affine map per video frame, frame 0 to frame ``t``, in the coordinates of
:mod:`videogen.data.measure` (x right, y down, pixel ``(row i, column j)`` centred at
``(j + 0.5, i + 0.5)``); :func:`requested_track` follows a point through them, and
:func:`motion_errors` compares an object's measured track with it:

* **absolute** (a drag): ``e_t = |c_t - g_t|`` with ``g_t`` the drag's grab point on frame ``t``: the
  dragged object should be where the drag takes the region it was grabbed in;
* **anchored** (any motion): ``e_t = |c_t - A_t A_{t0}^-1 c_{t0}|``, the object's own position on its
  first seen frame ``t0`` carried by the motion: did it move as asked, wherever it appeared.

Each gives ``endpoint = e_T`` at the last frame ``T`` where the object is seen and ``mean = mean_t e_t``
over the frames where it is seen (:func:`videogen.data.measure.trajectory_error`).
:func:`track_continuity` scores how steadily a track moves from frame to frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from videogen.data.measure import trajectory_error
from videogen.noise.flow import camera_step, drag_transform
from videogen.noise.warp_spec import CameraMoveSpec, WarpedNoiseSpec
from videogen.noise.warped_latents import motion_frames

__all__ = ["MotionErrors", "motion_errors", "requested_motion", "requested_track", "track_continuity"]

_TO_FLOW = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
"""Homogeneous map from measure coordinates (pixel centres at +0.5) to the flow grid's (centres at integers)."""


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def _in_measure_coordinates(matrix: np.ndarray) -> np.ndarray:
    """A 2x3 map of the flow grid's coordinates as a 2x3 map of measure coordinates."""
    return (np.linalg.inv(_TO_FLOW) @ _homogeneous(matrix) @ _TO_FLOW)[:2]


def _camera_move_at(moves: list[CameraMoveSpec], t: int) -> CameraMoveSpec | None:
    """The move playing on motion frame ``t`` (moves play in order; none after the last one ends)."""
    start = 0
    for move in moves:
        if move.frames == 0 or t < start + move.frames:
            return move
        start += move.frames
    return None


def requested_motion(spec: WarpedNoiseSpec, num_frames: int, width: int, height: int, *, drag: int = 0) -> np.ndarray:
    """``(num_frames, 2, 3)``: the motion's map from frame 0 to each video frame, in measure coordinates.

    Video frame ``t`` is motion frame ``t * temporal_stride`` (a model without temporal compression).
    ``camera``: the composition of each motion frame's camera step
    (:func:`videogen.noise.flow.camera_step`: zoom and turn about the centre, then the scene shifted by
    ``(-pan W, tilt H)``). ``drag``: drag number ``drag``'s map from the first frame
    (:func:`videogen.noise.flow.drag_transform`: the grab point moving at constant speed along the path,
    scaling and turning about it). Driving videos and flow files state no path of their own and are
    refused.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    size = (height, width)
    stride = spec.temporal_stride
    maps = np.empty((num_frames, 2, 3))
    if spec.source == "camera":
        total = np.eye(3)
        maps[0] = total[:2]
        for t in range(1, num_frames):
            for step in range((t - 1) * stride, t * stride):
                move = _camera_move_at(spec.camera.moves, step)
                if move is not None:
                    total = _homogeneous(camera_step(move, size)) @ total
            maps[t] = total[:2]
        return np.stack([_in_measure_coordinates(m) for m in maps])
    if spec.source == "drag":
        if not 0 <= drag < len(spec.drags):
            raise ValueError(f"drag {drag}: the motion has {len(spec.drags)} drags")
        motion = motion_frames(spec, num_frames)
        chosen = spec.drags[drag]
        return np.stack(
            [_in_measure_coordinates(drag_transform(chosen, t * stride, motion, size)) for t in range(num_frames)]
        )
    raise ValueError(f"noise.warped.source {spec.source!r} states no path to compare with; use camera or drag")


def grab_point(spec: WarpedNoiseSpec, width: int, height: int, *, drag: int = 0) -> tuple[float, float]:
    """The first point of drag ``drag``'s path, in measure coordinates (a fraction ``u`` is ``u * W`` px)."""
    if spec.source != "drag" or not 0 <= drag < len(spec.drags):
        raise ValueError("only a drag has a grab point")
    first = spec.drags[drag].path[0]
    return (first.x * width, first.y * height)


def requested_track(maps: np.ndarray, start: tuple[float, float], anchor: int = 0) -> np.ndarray:
    """``(F, 2)``: the point ``start`` (seen on frame ``anchor``) carried by ``maps``
    (:func:`requested_motion`): ``p_t = A_t A_anchor^-1 start``."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or maps.shape[1:] != (2, 3):
        raise ValueError(f"maps are (F, 2, 3) affine maps, got shape {maps.shape}")
    if not 0 <= anchor < len(maps):
        raise ValueError(f"anchor frame {anchor} is outside the {len(maps)} frames")
    point = np.linalg.inv(_homogeneous(maps[anchor])) @ np.array([start[0], start[1], 1.0])
    return np.einsum("fij,j->fi", maps, point)


@dataclass(frozen=True)
class MotionErrors:
    """An object's track against the requested motion, in pixels (NaN where undefined).

    ``endpoint`` / ``mean``: absolute errors against the drag's grab point (NaN for a camera move);
    ``anchored_endpoint`` / ``anchored_mean``: against the motion carrying the object's first seen
    position; ``start_offset``: ``|c_t0 - g_t0|``, how far from the grab point the object appeared (NaN
    for a camera move); ``travel``: ``|c_T - c_t0|``, how far the object went, and ``requested_travel``
    the same for the requested track; ``frames``: the frames where the object is seen.
    """

    endpoint: float
    mean: float
    anchored_endpoint: float
    anchored_mean: float
    start_offset: float
    travel: float
    requested_travel: float
    frames: int


def motion_errors(
    centres: np.ndarray, spec: WarpedNoiseSpec, width: int, height: int, *, drag: int = 0
) -> MotionErrors:
    """Compare a measured track ``(F, 2)`` (NaN rows: absent frames) with the motion ``spec`` asks for.

    See the module docstring for the formulas; an object seen on no frame gives NaN everywhere.
    """
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] != 2:
        raise ValueError(f"a track is (F, 2) centres, got shape {centres.shape}")
    seen = np.flatnonzero(np.isfinite(centres).all(axis=1))
    if len(seen) == 0:
        return MotionErrors(*([math.nan] * 7), frames=0)
    maps = requested_motion(spec, len(centres), width, height, drag=drag)
    first, last = int(seen[0]), int(seen[-1])
    anchored = requested_track(maps, tuple(centres[first]), anchor=first)
    anchored_endpoint, anchored_mean = trajectory_error(centres, anchored)
    endpoint = mean = offset = math.nan
    if spec.source == "drag":
        grab = requested_track(maps, grab_point(spec, width, height, drag=drag))
        endpoint, mean = trajectory_error(centres, grab)
        offset = float(np.linalg.norm(centres[first] - grab[first]))
    return MotionErrors(
        endpoint=endpoint,
        mean=mean,
        anchored_endpoint=anchored_endpoint,
        anchored_mean=anchored_mean,
        start_offset=offset,
        travel=float(np.linalg.norm(centres[last] - centres[first])),
        requested_travel=float(np.linalg.norm(anchored[last] - anchored[first])),
        frames=len(seen),
    )


def track_continuity(centres: np.ndarray, width: int = 64, *, factor: float = 2.0, floor: float = 3.0) -> float:
    """The share of successive frame pairs over which a track moves on steadily, in [0, 1].

    With ``s_t = |c_{t+1} - c_t|`` over the pairs where the object is seen in both frames and ``m`` the
    median of those steps, a pair is continuous when ``s_t <= max(factor * m, floor * W / 64)`` (the
    floor, 3 px at 64 px wide, the world's fastest speed, keeps a still object's jitter from counting as
    jumps). Continuity is the continuous pairs over all ``F - 1`` pairs, so a frame where the object
    vanishes breaks the two pairs around it. NaN for a video of fewer than two frames.
    """
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] != 2:
        raise ValueError(f"a track is (F, 2) centres, got shape {centres.shape}")
    if len(centres) < 2:
        return math.nan
    both = np.isfinite(centres[:-1]).all(axis=1) & np.isfinite(centres[1:]).all(axis=1)
    if not both.any():
        return 0.0
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    limit = max(factor * float(np.median(steps[both])), floor * width / 64.0)
    return float(np.sum(both & (np.nan_to_num(steps, nan=np.inf) <= limit)) / (len(centres) - 1))
