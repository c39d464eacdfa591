"""Measure what a video shows, with the shapes world's own vocabulary, and score it against a caption.

This module is the reference for every quality metric of rendered shapes videos: each function's
docstring gives the metric's definition. Conventions are those of :mod:`videogen.data.shapes`:
frames are RGB uint8 ``(H, W, 3)`` (a video ``(F, H, W, 3)``); image coordinates are ``(x, y)`` with
x to the right and y down; pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)``, so its
centre is ``(j + 0.5, i + 0.5)`` and a centroid here is directly comparable with
:attr:`~videogen.data.shapes.ShapesClip.centres`; velocities are in pixels per frame.

The pipeline, from pixels to a verdict:

1. :func:`palette_labels` / :func:`palette_masks` segment a frame by palette colour, in the
   chromaticity plane (the RGB plane orthogonal to grey), where a blend of an object with the
   background lies on a straight line from the background's chromaticity to the object's.
2. :func:`dominant_objects` cuts each colour mask into connected blobs above a minimum area.
3. :func:`classify_shape` names a blob's shape by the best intersection-over-union with the world's
   own shapes (:func:`~videogen.data.shapes.signed_distance`) fitted to the blob's area and centroid.
4. :func:`track_colour` follows a colour's largest blob over a video, :func:`fit_motion` fits a
   robust straight line (Theil-Sen) and names its direction, :func:`estimate_pan` measures the
   background's (the camera's) motion.
5. :func:`score_video` compares everything with :func:`parse_caption`'s reading of the caption.

Temporal consistency: :func:`track_jump_ratio`, :func:`area_stability`, :func:`background_flicker`;
against a known path: :func:`trajectory_error`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from videogen.data.shapes import (
    DIRECTIONS,
    PALETTE,
    PAN_DIRECTIONS,
    SHAPES,
    SPEEDS,
    ObjectSpec,
    Scene,
    caption_for,
    signed_distance,
)

__all__ = [
    "Blob",
    "CaptionSpec",
    "Motion",
    "ObjectPrompt",
    "ObjectScore",
    "ShapeFit",
    "Track",
    "VideoScore",
    "angle_to_direction",
    "area_stability",
    "background_flicker",
    "classify_shape",
    "default_min_area",
    "direction_of",
    "dominant_objects",
    "estimate_pan",
    "expected_track",
    "fit_motion",
    "object_masks",
    "palette_labels",
    "palette_masks",
    "pan_velocity",
    "parse_caption",
    "prompt_velocity",
    "score_video",
    "track_colour",
    "track_jump_ratio",
    "trajectory_error",
]

# -- captions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectPrompt:
    """One object a caption asks for. ``direction`` is a key of ``DIRECTIONS`` ("still" included);
    ``speed`` a key of ``SPEEDS`` ("" is the plain speed, and always "" when standing still)."""

    colour: str
    shape: str
    direction: str
    speed: str = ""


@dataclass(frozen=True)
class CaptionSpec:
    """A caption read back into the world's terms: its objects and the camera pan ("" for none)."""

    objects: tuple[ObjectPrompt, ...]
    pan_direction: str = ""

    @property
    def scene(self) -> Scene:
        """A scene with this caption; what the caption leaves open (sizes, starts, background) is a placeholder
        (:func:`videogen.data.shapes.redraw_scene` draws it)."""
        objects = tuple(
            ObjectSpec(o.shape, o.colour, 1.0, (0.0, 0.0), (0.0, 0.0), o.direction, o.speed) for o in self.objects
        )
        return Scene(objects, "black", pan_direction=self.pan_direction)

    @property
    def caption(self) -> str:
        """The caption the world's grammar writes for this spec (``parse_caption`` inverts it)."""
        return caption_for(self.scene)


_WORD = r"[a-z\-]+"
_OBJECT = re.compile(rf"(?P<article>an?) (?P<colour>{_WORD}) (?P<shape>{_WORD})(?: (?P<motion>.+))?")
_MOTION = re.compile(rf"standing still|moving (?P<direction>{_WORD})(?: (?P<speed>{_WORD}))?")


def parse_caption(text: str) -> CaptionSpec:
    """Read a caption of the world's grammar (:func:`~videogen.data.shapes.caption_for`) back.

    The grammar: one object with its motion, or two objects each with its motion (``... and ...``),
    or two objects sharing one motion (``a red circle and a blue square moving up``); an object is
    ``a|an <colour> <shape>``, a motion ``standing still`` or ``moving <direction> [slowly|quickly]``;
    an optional ``, camera panning <left|right|up|down>`` ends it. Case and surrounding or repeated
    whitespace are forgiven; anything else outside the grammar raises ``ValueError`` naming the part.
    """
    if not isinstance(text, str):
        raise ValueError(f"a caption is a string, got {type(text).__name__}")
    clean = " ".join(text.lower().split())
    if not clean:
        raise ValueError("empty caption")
    body, pan = clean, ""
    if ", camera panning " in clean:
        body, pan = clean.rsplit(", camera panning ", 1)
        if pan not in PAN_DIRECTIONS:
            raise ValueError(f"camera pan {pan!r} in {text!r}: known pans are {', '.join(PAN_DIRECTIONS)}")
    elif "," in clean or "camera" in clean:
        raise ValueError(f"{text!r}: a camera clause reads ', camera panning <{'|'.join(PAN_DIRECTIONS)}>'")
    parts = body.split(" and ")
    if len(parts) > 2:
        raise ValueError(f"{text!r} names {len(parts)} objects; the grammar has one or two")
    read = [_parse_object(part, text) for part in parts]
    if read[-1][3] is None:
        raise ValueError(f"{text!r}: the last object needs a motion ('moving <direction>' or 'standing still')")
    if len(read) == 2 and read[0][3] is None:  # the shared motion of "a ... and a ... moving up"
        read[0] = (*read[0][:3], read[1][3])
    objects = tuple(ObjectPrompt(colour, shape, *motion) for _, colour, shape, motion in read)
    return CaptionSpec(objects, pan)


def _parse_object(part: str, text: str) -> tuple[str, str, str, tuple[str, str] | None]:
    match = _OBJECT.fullmatch(part)
    if match is None:
        raise ValueError(f"{part!r} in {text!r} is not 'a|an <colour> <shape> [motion]'")
    colour, shape, motion = match["colour"], match["shape"], match["motion"]
    if colour not in PALETTE:
        raise ValueError(f"colour {colour!r} in {text!r}: known colours are {', '.join(PALETTE)}")
    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r} in {text!r}: known shapes are {', '.join(SHAPES)}")
    article = "an" if colour[0] in "aeiou" else "a"
    if match["article"] != article:
        raise ValueError(f"{part!r} in {text!r}: the grammar writes {article!r} before {colour!r}")
    if motion is None:
        return article, colour, shape, None
    found = _MOTION.fullmatch(motion)
    if found is None:
        raise ValueError(f"motion {motion!r} in {text!r} is not 'standing still' or 'moving <direction> [speed]'")
    if motion == "standing still":
        return article, colour, shape, ("still", "")
    direction, speed = found["direction"], found["speed"] or ""
    if direction not in DIRECTIONS or direction == "still":
        moving = ", ".join(d for d in DIRECTIONS if d != "still")
        raise ValueError(f"direction {direction!r} in {text!r}: known directions are {moving}")
    if speed not in SPEEDS:
        raise ValueError(f"speed {speed!r} in {text!r}: known speeds are {', '.join(s for s in SPEEDS if s)}")
    return article, colour, shape, (direction, speed)


def prompt_velocity(prompt: ObjectPrompt, width: int = 64) -> tuple[float, float]:
    """The world velocity (px/frame) a prompt asks for: ``DIRECTIONS[d] * SPEEDS[s] * width / 64``."""
    if prompt.direction == "still":
        return (0.0, 0.0)
    unit, pixels = DIRECTIONS[prompt.direction], SPEEDS[prompt.speed] * width / 64.0
    return (unit[0] * pixels, unit[1] * pixels)


def pan_velocity(pan_direction: str, width: int = 64, pan_speed: float = 1.0) -> tuple[float, float]:
    """The image velocity of the background under a camera pan, as the world renders it.

    The camera turning left moves the scene right: ``-DIRECTIONS[pan] * pan_speed * width / 64``
    (``pan_speed`` is :attr:`~videogen.data.shapes.WorldSpec.pan_speed`); ``(0, 0)`` for no pan.
    """
    if not pan_direction:
        return (0.0, 0.0)
    if pan_direction not in PAN_DIRECTIONS:
        raise ValueError(f"pan {pan_direction!r}: known pans are {', '.join(PAN_DIRECTIONS)}")
    unit, step = DIRECTIONS[pan_direction], pan_speed * width / 64.0
    return (-unit[0] * step + 0.0, -unit[1] * step + 0.0)


# -- colour segmentation ------------------------------------------------------------------------

_CHROMA = np.array([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]).T / np.array([math.sqrt(2.0), math.sqrt(6.0)])
"""(3, 2): an orthonormal basis of the RGB plane orthogonal to grey (1, 1, 1)."""
_COLOURS = tuple(PALETTE)
_PALETTE_CHROMA = np.array([PALETTE[c] for c in _COLOURS], dtype=np.float64) @ _CHROMA  # (C, 2)


def palette_labels(
    frames: np.ndarray, *, min_alpha: float = 0.5, max_angle: float = 30.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the palette colour it shows (index into ``PALETTE``, -1 for none) and its coverage.

    Works on one frame ``(H, W, 3)`` or any stack ``(..., H, W, 3)``. Each pixel's chromaticity is
    ``q = rgb @ B``, with ``B`` an orthonormal basis of the plane orthogonal to grey, so brightness,
    grey levels and the world's near-grey texture (``w * (1, 0.9, 1.1)``) hardly move it. The
    background chromaticity ``b`` of each frame is the median ``q`` over the frame (objects cover far
    less than half of it). A pixel blending palette colour ``c`` (chromaticity ``p_c``) at coverage
    ``a`` over the background has ``q = b + a (p_c - b)``, hence, with ``u = q - b`` and
    ``v_c = p_c - b``:

    * colour ``c* = argmax_c cos(u, v_c)``, kept when that angle is at most ``max_angle`` degrees
      (at most half the angle to the nearest other palette colour: 12 degrees orange-yellow,
      15 red-orange);
    * coverage ``alpha = u . v_c* / |v_c*|^2``, kept when ``alpha >= min_alpha``.

    ``min_alpha = 0.5`` reproduces the world's masks (coverage >= 0.5) on clean frames and keeps a
    blurred edge where it was. A background pixel has ``alpha`` near 0 (the navy background, the most
    chromatic, is at ``alpha <= 0.21`` before its own chromaticity is removed) so Gaussian noise of
    sigma 10 levels moves ``alpha`` by about 0.07 and never reaches 0.5 in practice. Returns
    ``(labels, alpha)``: int64 ``(..., H, W)`` and float32 ``(..., H, W)``, the coverage of the
    labelled colour (0 where unlabelled).
    """
    labels, alphas = _segment(_as_frames(frames, min_dims=3), min_alpha=min_alpha, max_angle=max_angle)
    labels = np.maximum(labels, -1)
    alpha = np.take_along_axis(alphas, np.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    return labels, np.where(labels >= 0, alpha, 0.0).astype(np.float32)


def _segment(frames: np.ndarray, *, min_alpha: float = 0.5, max_angle: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`palette_labels`' labels, except that a pixel below ``min_alpha`` holds ``-2 - c`` with ``c``
    its nearest colour by angle, and every colour's coverage ``alpha_c`` (..., H, W, C), unclipped."""
    chroma = frames.astype(np.float32) @ _CHROMA.astype(np.float32)  # (..., H, W, 2)
    background = np.median(chroma, axis=(-3, -2), keepdims=True)  # (..., 1, 1, 2)
    u = chroma - background
    v = _PALETTE_CHROMA.astype(np.float32) - background[..., 0, :, :]  # (..., 1, C, 2) broadcast below
    v = v.reshape(*background.shape[:-3], 1, 1, len(_COLOURS), 2)
    dots = u[..., :1] * v[..., 0] + u[..., 1:] * v[..., 1]  # (..., H, W, C)
    norms = np.linalg.norm(v, axis=-1)  # (..., 1, 1, C)
    along = dots / norms  # |u| cos(u, v_c): the largest is the smallest angle
    best = np.argmax(along, axis=-1)
    best_along = along.max(axis=-1)
    best_cos = best_along / (np.hypot(u[..., 0], u[..., 1]) + 1e-6)
    alpha = best_along / np.take_along_axis(np.broadcast_to(norms, along.shape), best[..., None], axis=-1)[..., 0]
    alphas = dots / norms**2
    keep = (alpha >= min_alpha) & (best_cos >= math.cos(math.radians(max_angle)))
    # a pixel of none (below min_alpha) keeps -2 - its nearest colour, for the soft centroid of a blob
    return np.where(keep, best, -2 - best).astype(np.int64), alphas.astype(np.float32)


def palette_masks(frame: np.ndarray, **options) -> dict[str, np.ndarray]:
    """For one RGB frame ``(H, W, 3)``, a bool mask ``(H, W)`` per palette colour (see :func:`palette_labels`)."""
    frame = _as_frames(frame, min_dims=3)
    if frame.ndim != 3:
        raise ValueError(f"palette_masks takes one frame (H, W, 3), got shape {frame.shape}")
    labels, _ = palette_labels(frame, **options)
    return {colour: labels == i for i, colour in enumerate(_COLOURS)}


# -- blobs and shapes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeFit:
    """A blob's shape: the best of ``scores``, each shape's intersection-over-union with the blob."""

    shape: str
    scores: dict[str, float]

    @property
    def margin(self) -> float:
        """Best IoU minus the runner-up: how clear the call is."""
        ranked = sorted(self.scores.values(), reverse=True)
        return ranked[0] - ranked[1] if len(ranked) > 1 else ranked[0]


@dataclass(eq=False)
class Blob:
    """A connected region of one palette colour.

    ``area`` in pixels (of the mask); ``centroid`` ``(x, y)`` the coverage-weighted mean of pixel
    centres, ``sum(a_i p_i) / sum(a_i)`` with ``a_i = clip(alpha_i, 0, 1)`` the blob colour's coverage
    (:func:`palette_labels`) over the mask and the pixels within 2 px of it that are below the
    coverage threshold but nearest the blob's colour by angle (so the soft edge counts by its
    coverage, which places the centroid to a small fraction of a pixel); ``bbox``
    ``(x, y, width, height)`` in pixels; ``mask`` ``(H, W)`` bool over the whole frame.
    """

    colour: str
    area: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    mask: np.ndarray

    @cached_property
    def shape_fit(self) -> ShapeFit:
        return classify_shape(self.mask)

    @property
    def shape(self) -> str:
        return self.shape_fit.shape


def default_min_area(height: int, width: int) -> int:
    """The smallest blob that counts as an object: 16 pixels at 64 x 64, in proportion to the frame area.

    The world's smallest object (radius ``0.11 * 64 = 7`` px) covers about 150 pixels.
    """
    return max(4, round(16 * height * width / 4096))


def dominant_objects(frame: np.ndarray, *, min_area: int | None = None, **options) -> list[Blob]:
    """The coloured objects of one frame: 8-connected blobs of each palette mask with at least
    ``min_area`` pixels (default :func:`default_min_area`), largest first. ``options`` go to
    :func:`palette_labels`.

    Where two objects touch, their shared edge blends their colours, and some blends look like a
    third palette colour: orange lies between red and yellow, purple between red and blue, yellow
    between red and green. A blob that is thin (no pixel more than ``2.5`` px from its edge, by
    the distance transform) and borders two other colours it lies between (its angle to each, in
    the chromaticity plane, adds up to within 10 degrees of theirs; each covers at least 10% of
    the 2-px ring around it) is such a seam and is not an object.
    """
    frame = _as_frames(frame, min_dims=3)
    if frame.ndim != 3:
        raise ValueError(f"dominant_objects takes one frame (H, W, 3), got shape {frame.shape}")
    labels, alphas = _segment(frame, **options)
    return _blobs(labels, alphas, default_min_area(*labels.shape) if min_area is None else min_area)


_RING = np.ones((5, 5), np.uint8)
_ANGLES = np.degrees(
    np.arccos(
        np.clip(
            (_PALETTE_CHROMA @ _PALETTE_CHROMA.T)
            / np.outer(np.linalg.norm(_PALETTE_CHROMA, axis=1), np.linalg.norm(_PALETTE_CHROMA, axis=1)),
            -1.0,
            1.0,
        )
    )
)
"""(C, C): angles in degrees between the palette colours in the chromaticity plane."""


def _is_seam(mask: np.ndarray, index: int, labels: np.ndarray) -> bool:
    """Whether a blob is the blended edge between two touching objects (see :func:`dominant_objects`)."""
    if cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3).max() > 2.5:
        return False
    ring = labels[cv2.dilate(mask.astype(np.uint8), _RING).astype(bool) & ~mask]
    found, counts = np.unique(ring[(ring >= 0) & (ring != index)], return_counts=True)
    sides = found[counts >= 0.1 * max(len(ring), 1)]
    for i, a in enumerate(sides):
        for b in sides[i + 1 :]:
            if _ANGLES[a, index] + _ANGLES[index, b] <= _ANGLES[a, b] + 10.0:
                return True
    return False


def _blobs(labels: np.ndarray, alphas: np.ndarray, min_area: int) -> list[Blob]:
    """Blobs of one frame's labels (H, W); centroids weighted by the colour's coverage (see :class:`Blob`)."""
    blobs = []
    ys, xs = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]].astype(np.float64) + 0.5
    for index in np.unique(labels[labels >= 0]):
        count, parts, stats, centroids = cv2.connectedComponentsWithStats(
            (labels == index).astype(np.uint8), connectivity=8
        )
        for k in range(1, count):
            area = int(stats[k, cv2.CC_STAT_AREA])
            if area < min_area:
                continue
            x, y, w, h = (
                int(stats[k, s]) for s in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT)
            )
            mask = parts == k
            if _is_seam(mask, index, labels):
                continue
            near = mask | (cv2.dilate(mask.astype(np.uint8), _RING).astype(bool) & (labels == -2 - index))
            weight = np.where(near, np.clip(alphas[..., index], 0.0, 1.0), 0.0)
            total = float(weight.sum())
            if total > 0:
                centre = (float((weight * xs).sum() / total), float((weight * ys).sum() / total))
            else:
                centre = (float(centroids[k, 0]) + 0.5, float(centroids[k, 1]) + 0.5)
            blobs.append(Blob(_COLOURS[index], area, centre, (x, y, w, h), mask))
    blobs.sort(key=lambda b: -b.area)
    return blobs


_AREA_PER_RADIUS2 = {"circle": math.pi, "square": 1.8**2, "triangle": 3 * math.sqrt(3) / 4 * 1.25**2}
"""Each shape's area over its radius squared, as :func:`~videogen.data.shapes.signed_distance` draws it."""


def classify_shape(mask: np.ndarray, *, shapes: tuple[str, ...] = SHAPES, iterations: int = 2) -> ShapeFit:
    """Name a blob's shape by template matching against the world's own shapes.

    For each shape ``s`` an ideal ``s`` (axis-aligned square, apex-up triangle, as the world draws
    them) is fitted to the blob: centred at the blob's centroid, with the radius that gives the
    blob's area; near the frame edge it is then ``iterations`` times moved and rescaled so that its
    part inside the frame has the blob's centroid and area (a shape cut by the edge keeps its size). Its soft
    coverage ``t = clip(0.5 - d, 0, 1)`` (``d`` the signed distance) is compared with the mask ``m``:
    ``IoU_s = sum(min(m, t)) / sum(max(m, t))``, and the shape is ``argmax_s IoU_s``. Fitting area
    and centroid makes the call independent of size and position; the soft edge and the fitted area
    make a blurred or a slightly grown or shrunk blob still match its own shape best.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a blob mask is 2-D (H, W), got shape {mask.shape}")
    unknown = [s for s in shapes if s not in _AREA_PER_RADIUS2]
    if unknown or not shapes:
        raise ValueError(f"shapes must be among {', '.join(SHAPES)}, got {shapes}")
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        raise ValueError(f"a blob needs at least 3 pixels to have a shape, got {len(xs)}")
    area = float(len(xs))
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    reach = 1.6 * math.sqrt(area / _AREA_PER_RADIUS2["triangle"]) + 2
    bounds = (int(xs.min() - reach), int(xs.max() + reach) + 1, int(ys.min() - reach), int(ys.max() + reach) + 1)
    x0, x1 = max(bounds[0], 0), min(bounds[1], mask.shape[1])
    y0, y1 = max(bounds[2], 0), min(bounds[3], mask.shape[0])
    cut = (x0, x1, y0, y1) != bounds  # the frame edge may cut a template: fit its visible part
    window = mask[y0:y1, x0:x1].astype(np.float64)
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    scores = {}
    for shape in shapes:
        middle, radius = centre.copy(), math.sqrt(area / _AREA_PER_RADIUS2[shape])
        for step in range(iterations + 1):
            cover = np.clip(0.5 - signed_distance(shape, gx, gy, middle, radius), 0.0, 1.0)
            mass = cover.sum()
            if step == iterations or mass <= 0 or not cut:
                break
            middle = middle + centre - np.array([(cover * gx).sum(), (cover * gy).sum()]) / mass
            radius *= math.sqrt(area / mass)
        scores[shape] = float(np.minimum(window, cover).sum() / max(np.maximum(window, cover).sum(), 1e-9))
    best = max(scores, key=scores.get)
    return ShapeFit(best, scores)


# -- tracks and motion --------------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    """A colour's largest blob over a video: ``centres`` (F, 2) with NaN where absent, ``areas`` (F,)
    (0 where absent), ``present`` (F,) bool, and the blobs themselves (``None`` where absent)."""

    colour: str
    centres: np.ndarray
    areas: np.ndarray
    present: np.ndarray
    blobs: tuple[Blob | None, ...]


def track_colour(frames: np.ndarray, colour: str, *, min_area: int | None = None, **options) -> Track:
    """Follow the largest blob of ``colour`` through a video ``(F, H, W, 3)``; frames where no blob
    of that colour reaches ``min_area`` are marked absent (NaN centre)."""
    frames = _as_frames(frames, min_dims=4)
    _check_colour(colour)
    area = default_min_area(*frames.shape[1:3]) if min_area is None else min_area
    return _track(_video_blobs(frames, area, **options)[1], colour)


def _video_blobs(frames: np.ndarray, min_area: int, **options) -> tuple[np.ndarray, list[list[Blob]]]:
    """Labels (F, H, W) and blobs of every frame, one frame at a time to bound the memory held."""
    labels, blobs = np.empty(frames.shape[:3], np.int64), []
    for t, frame in enumerate(frames):
        labels[t], alphas = _segment(frame, **options)
        blobs.append(_blobs(labels[t], alphas, min_area))
    return labels, blobs


def _track(frame_blobs: list[list[Blob]], colour: str) -> Track:
    picked = tuple(next((b for b in blobs if b.colour == colour), None) for blobs in frame_blobs)
    centres = np.array([b.centroid if b else (np.nan, np.nan) for b in picked], dtype=np.float64).reshape(-1, 2)
    areas = np.array([b.area if b else 0 for b in picked], dtype=np.float64)
    return Track(colour, centres, areas, areas > 0, picked)


@dataclass(frozen=True)
class Motion:
    """A straight-line fit of a track: ``velocity`` (vx, vy) px/frame, ``speed = |velocity|``,
    ``direction`` (a ``DIRECTIONS`` name, or "unknown" with fewer than two present frames),
    ``residual`` the median distance (px) of the track from the fitted line, ``frames`` the present
    frames used."""

    velocity: tuple[float, float]
    speed: float
    direction: str
    residual: float
    frames: int


def fit_motion(centres: np.ndarray, *, still_speed: float = 0.5) -> Motion:
    """Robust constant-velocity fit of a track ``(F, 2)`` (NaN rows are absent frames).

    Theil-Sen per axis: the slope is the median over all pairs of present frames ``i < j`` of
    ``(x_j - x_i) / (j - i)``; the intercept is the median of ``x_t - slope * t``. Up to about 29% of
    the frames can be wrong (an occlusion, a bad segmentation) without moving the fit. The direction
    is :func:`direction_of` the velocity with ``still_speed``.
    """
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] != 2:
        raise ValueError(f"a track is (F, 2) centres, got shape {centres.shape}")
    t = np.flatnonzero(np.isfinite(centres).all(axis=1))
    if len(t) < 2:
        return Motion((math.nan, math.nan), math.nan, "unknown", math.nan, len(t))
    points = centres[t]
    i, j = np.triu_indices(len(t), k=1)
    slopes = (points[j] - points[i]) / (t[j] - t[i])[:, None].astype(np.float64)
    velocity = np.median(slopes, axis=0)
    intercept = np.median(points - velocity * t[:, None], axis=0)
    residual = float(np.median(np.linalg.norm(points - (intercept + velocity * t[:, None]), axis=1)))
    vx, vy = float(velocity[0]), float(velocity[1])
    return Motion((vx, vy), math.hypot(vx, vy), direction_of((vx, vy), still_speed=still_speed), residual, len(t))


def direction_of(velocity: tuple[float, float], *, still_speed: float = 0.5) -> str:
    """The ``DIRECTIONS`` name of a velocity: "still" when ``|v| < still_speed`` px/frame, else the
    nearest of the eight unit directions by angle (each covers +-22.5 degrees around it)."""
    vx, vy = (float(c) for c in velocity)
    if not (math.isfinite(vx) and math.isfinite(vy)):
        return "unknown"
    if math.hypot(vx, vy) < still_speed:
        return "still"
    moving = [d for d in DIRECTIONS if d != "still"]
    return max(moving, key=lambda d: vx * DIRECTIONS[d][0] + vy * DIRECTIONS[d][1])


def angle_to_direction(velocity: tuple[float, float], direction: str) -> float:
    """Angle in degrees (0 to 180) between a velocity and a moving ``DIRECTIONS`` entry; NaN when
    the velocity is zero or not finite."""
    if direction not in DIRECTIONS or direction == "still":
        raise ValueError(f"direction {direction!r} has no angle; moving directions: {', '.join(DIRECTIONS)}")
    vx, vy = (float(c) for c in velocity)
    norm = math.hypot(vx, vy)
    if not math.isfinite(norm) or norm == 0:
        return math.nan
    ux, uy = DIRECTIONS[direction]
    return math.degrees(math.acos(max(-1.0, min(1.0, (vx * ux + vy * uy) / norm))))


def expected_track(start: tuple[float, float], velocity: tuple[float, float], frames: int) -> np.ndarray:
    """The straight track ``start + t * velocity`` for ``t = 0 .. frames - 1``, shape (frames, 2)."""
    t = np.arange(frames, dtype=np.float64)[:, None]
    return np.asarray(start, dtype=np.float64) + t * np.asarray(velocity, dtype=np.float64)


def trajectory_error(track: np.ndarray, expected_track: np.ndarray) -> tuple[float, float]:
    """``(endpoint_error, mean_error)`` in pixels between a measured and an expected track (F, 2).

    With ``e_t = |track_t - expected_t|`` over the frames where both are finite (NaN marks an absent
    frame): ``mean_error = mean_t e_t`` and ``endpoint_error = e_T`` at the last such frame ``T``.
    """
    a, b = np.asarray(track, dtype=np.float64), np.asarray(expected_track, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or a.shape != b.shape:
        raise ValueError(f"tracks must both be (F, 2), got {a.shape} and {b.shape}")
    both = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    if not both.any():
        raise ValueError("the tracks share no frame where both are present")
    errors = np.linalg.norm(a[both] - b[both], axis=1)
    return float(errors[-1]), float(errors.mean())


# -- temporal consistency ------------------------------------------------------------------------


def track_jump_ratio(centres: np.ndarray, *, min_step: float = 0.5) -> float:
    """How much the worst step of a track stands out: ``max_t s_t / max(median_t s_t, min_step)``.

    ``s_t`` is the centroid displacement per frame between successive present frames (a gap of
    ``g`` frames divides its step by ``g``). A steady track scores about 1, a teleporting object
    much more; ``min_step`` (px/frame) keeps a still object's jitter from dividing by nearly zero.
    NaN with fewer than two steps.
    """
    centres = np.asarray(centres, dtype=np.float64)
    t = np.flatnonzero(np.isfinite(centres).all(axis=1))
    if len(t) < 3:
        return math.nan
    steps = np.linalg.norm(np.diff(centres[t], axis=0), axis=1) / np.diff(t)
    return float(steps.max() / max(float(np.median(steps)), min_step))


def area_stability(areas: np.ndarray) -> float:
    """Coefficient of variation of a blob's area over the frames where it is present:
    ``std(area) / mean(area)`` (0 for a rigid object seen whole; NaN when never present)."""
    areas = np.asarray(areas, dtype=np.float64)
    present = areas[np.isfinite(areas) & (areas > 0)]
    if len(present) == 0:
        return math.nan
    return float(present.std() / present.mean())


def object_masks(frames: np.ndarray, *, min_area: int | None = None, grow: int = 2) -> np.ndarray:
    """Where the objects are: (F, H, W) bool, the union of each frame's palette pixels that belong to
    8-connected regions (any palette colours together) of at least ``min_area`` pixels (default
    :func:`default_min_area`; lone noise pixels do not count), grown by ``grow`` pixels."""
    frames = _as_frames(frames, min_dims=4)
    labels = np.stack([_segment(frame)[0] for frame in frames])
    area = default_min_area(*frames.shape[1:3]) if min_area is None else min_area
    return _grown(labels >= 0, area, grow)


def _grown(coloured: np.ndarray, min_area: int, grow: int) -> np.ndarray:
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    out = np.zeros(coloured.shape, bool)
    for t, frame in enumerate(coloured.astype(np.uint8)):
        count, parts, stats, _ = cv2.connectedComponentsWithStats(frame, connectivity=8)
        big = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area)
        keep = np.isin(parts, big[big > 0]).astype(np.uint8)
        out[t] = (cv2.dilate(keep, kernel) if grow > 0 else keep).astype(bool)
    return out


def _default_masks(frames: np.ndarray, masks: np.ndarray | None, grow: int) -> np.ndarray:
    if masks is None:
        return object_masks(frames, grow=grow)
    masks = np.asarray(masks, dtype=bool)
    if masks.shape != frames.shape[:3]:
        raise ValueError(f"object masks must be (F, H, W) = {frames.shape[:3]}, got {masks.shape}")
    return masks


def background_flicker(
    frames: np.ndarray,
    masks: np.ndarray | None = None,
    *,
    pan: tuple[float, float] | None = None,
    grow: int = 2,
) -> float:
    """Mean absolute frame-to-frame change (0-255 levels, over channels) of the background.

    ``flicker = sum_t sum_{x in B_t} |I_{t+1}(x + p) - I_t(x)| / sum_t |B_t|``, averaged over the
    three channels and pooled over the pairs, where ``B_t`` holds the pixels outside every object
    mask in both frames (masks grown by ``grow`` pixels so blurred edges do not count; default
    :func:`object_masks`) and away from the frame border that a pan brings in, and ``p`` is the
    background's motion per frame (``pan``, e.g. from :func:`estimate_pan`; sampled bilinearly), so
    a smoothly panning background scores near 0 and a boiling or flashing one high. NaN when no
    pixel qualifies.
    """
    frames = _as_frames(frames, min_dims=4)
    if len(frames) < 2:
        raise ValueError("background flicker needs at least two frames")
    masks = _default_masks(frames, masks, grow)
    h, w = frames.shape[1:3]
    px, py = (0.0, 0.0) if pan is None else (float(pan[0]), float(pan[1]))
    border = np.zeros((h, w), bool)
    mx, my = math.ceil(abs(px)), math.ceil(abs(py))
    border[my : h - my, mx : w - mx] = True
    shift = np.float32([[1, 0, px], [0, 1, py]])
    total, count = 0.0, 0
    for t in range(len(frames) - 1):
        current = frames[t].astype(np.float32)
        following = frames[t + 1].astype(np.float32)
        moved_mask = masks[t + 1]
        if px or py:  # sample frame t+1 at x + p: warp it back by the pan
            following = cv2.warpAffine(following, shift, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            moved = cv2.warpAffine(masks[t + 1].astype(np.uint8), shift, (w, h), flags=cv2.WARP_INVERSE_MAP)
            moved_mask = moved.astype(bool) | ~border
        keep = ~masks[t] & ~moved_mask & border
        if keep.any():
            total += float(np.abs(following - current)[keep].sum())
            count += int(keep.sum()) * 3
    return total / count if count else math.nan


def estimate_pan(
    frames: np.ndarray,
    masks: np.ndarray | None = None,
    *,
    grow: int = 2,
    max_shift: int = 3,
    min_contrast: float = 3.0,
    distinct: float = 0.5,
) -> tuple[float, float]:
    """The background's image velocity (px/frame): the camera's pan as the video shows it.

    On grey frames smoothed by a Gaussian (sigma 1.5), for each pair ``(t, t+1)`` the shift ``d_t``
    minimises the mean squared difference ``mean_x (I_{t+1}(x) - I_t(x - d))^2`` over background
    pixels (at least 4 px, the smoothing's reach, outside every object mask in both frames, default
    :func:`object_masks` grown by ``grow``, and inside the frame after the shift): first the best
    integer shift with ``|d| <= max_shift``, then three Gauss-Newton (Lucas-Kanade) steps to
    sub-pixel precision. A pair whose best integer cost is not under ``distinct`` times the median
    cost over all the shifts tried has no clear match (a plain or noise-only background) and is
    skipped. The pan is the median of
    the remaining ``d_t``, ``(0, 0)`` when none remains: a background whose smoothed grey standard
    deviation is under ``min_contrast`` levels (a plain backdrop) cannot show a pan.
    """
    frames = _as_frames(frames, min_dims=4)
    if len(frames) < 2:
        raise ValueError("a pan needs at least two frames")
    masks = _default_masks(frames, masks, grow)
    grey = frames.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    smooth = np.stack([cv2.GaussianBlur(g, (0, 0), 1.5) for g in grey])
    halo = np.ones((9, 9), np.uint8)  # the smoothing spreads an object about 4 px (3 sigma) further
    background = ~np.stack([cv2.dilate(m.astype(np.uint8), halo) > 0 for m in masks])
    spread = [float(s[b].std()) if b.sum() > 16 else 0.0 for s, b in zip(smooth, background, strict=True)]
    if float(np.median(spread)) < min_contrast:
        return (0.0, 0.0)
    shifts = _background_shifts(smooth, background, max_shift, distinct)
    found = shifts[np.isfinite(shifts).all(axis=1)]
    if len(found) == 0:
        return (0.0, 0.0)
    vx, vy = np.median(found, axis=0)
    return (float(vx), float(vy))


def _background_shifts(smooth: np.ndarray, valid: np.ndarray, reach: int, distinct: float) -> np.ndarray:
    """(F-1, 2): per pair the shift ``d`` with ``I_{t+1}(x) = I_t(x - d)`` on the pixels valid in both
    (see :func:`estimate_pan`), NaN where no shift is clearly best."""
    pairs, (h, w) = len(smooth) - 1, smooth.shape[1:]
    a, b, valid_a, valid_b = smooth[:-1], smooth[1:], valid[:-1], valid[1:]
    offsets, costs = [], []
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
            src = (slice(None), slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0)))
            keep = valid_b[:, ys, xs] & valid_a[src]
            count = keep.sum(axis=(1, 2))
            total = np.where(keep, (b[:, ys, xs] - a[src]) ** 2, 0.0).sum(axis=(1, 2))
            offsets.append((dx, dy))
            costs.append(np.where(count >= 0.1 * h * w, total / np.maximum(count, 1), np.inf))
    costs = np.stack(costs, axis=1)  # (pairs, shifts)
    margin = reach + 2
    inside = np.zeros((h, w), bool)
    inside[margin : h - margin, margin : w - margin] = True
    out = np.full((pairs, 2), np.nan)
    for t in range(pairs):
        finite = costs[t][np.isfinite(costs[t])]
        if len(finite) == 0 or finite.min() > distinct * float(np.median(finite)):
            continue  # no clear best shift: a plain or noise-only background
        d = np.array(offsets[int(np.argmin(costs[t]))], dtype=np.float64)
        for _ in range(3):  # Gauss-Newton: I_t(x - d - e) ~ moved - grad . e
            shift = np.float32([[1, 0, d[0]], [0, 1, d[1]]])
            moved = cv2.warpAffine(a[t], shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            moved_valid = cv2.warpAffine(valid_a[t].astype(np.uint8), shift, (w, h), flags=cv2.INTER_NEAREST) > 0
            keep = moved_valid & valid_b[t] & inside
            if keep.sum() < 16:
                break
            gy, gx = np.gradient(moved)
            grads = np.stack([gx[keep], gy[keep]], axis=1).astype(np.float64)
            step, *_ = np.linalg.lstsq(grads, (moved - b[t])[keep].astype(np.float64), rcond=None)
            d += np.clip(step, -1.0, 1.0)
        out[t] = d
    return out


# -- scoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectScore:
    """How one prompted object shows in a video.

    ``track``: its colour's :class:`Track`; ``motion``: :func:`fit_motion` in image space of the
    track's whole frames (frames where the blob is under 85% of its largest area, partly hidden or
    cut by the frame edge, are left out while at least two others remain); ``velocity``: that
    motion minus the background's (the pan), i.e. its motion in the scene, which is what the
    caption's direction and speed describe; ``direction`` / ``speed``: of
    ``velocity``; ``angle``: degrees between ``velocity`` and the prompted direction (NaN for
    still); ``colour_hit_rate``: fraction of frames with a blob of its colour; ``shape_hit_rate``:
    fraction of those frames where that blob is classified as the prompted shape;
    ``direction_ok``: measured direction equals the prompt's (for a moving prompt: within 22.5
    degrees and faster than ``still_speed``; for "standing still": slower than it);
    ``direction_near``: the same with 45 degrees; ``speed_ok``: the object is seen moving (in at least
    two frames) and its measured speed is nearest the prompted speed word's (``SPEEDS``, scaled by
    width / 64) among the three, or it is still for still;
    ``jump_ratio``: :func:`track_jump_ratio`; ``area_cv``: :func:`area_stability`.
    """

    prompt: ObjectPrompt
    track: Track
    motion: Motion
    velocity: tuple[float, float]
    direction: str
    speed: float
    angle: float
    colour_hit_rate: float
    shape_hit_rate: float
    direction_ok: bool
    direction_near: bool
    speed_ok: bool
    jump_ratio: float
    area_cv: float


@dataclass(frozen=True)
class VideoScore:
    """A video measured against its caption.

    * ``colour_hit_rate``: fraction of frames whose ``K`` largest blobs (``K`` prompted objects)
      have exactly the prompted colours (one object: the largest coloured blob is its colour);
      ``colour_ok``: ``colour_hit_rate >= min_rate``.
    * ``shape_hit_rate``: the lowest over objects of :attr:`ObjectScore.shape_hit_rate`;
      ``shape_ok``: ``>= min_rate`` (so every object is present and mostly the right shape).
    * ``count_rate``: fraction of frames with exactly ``K`` blobs; ``count_ok``: ``>= min_rate``.
    * ``direction_ok`` / ``direction_near`` / ``speed_ok``: every object's, objects standing still
      included (they must measure still).
    * ``pan``: the measured background velocity (:func:`estimate_pan`), ``pan_direction`` its name
      among ``PAN_DIRECTIONS`` read as a camera turn (background moving right = camera panning left)
      or "" when slower than ``still_speed``; ``pan_ok``: equals the caption's pan ("" for none).
    * ``velocity``: the first (main) object's velocity in the scene (px/frame).
    * ``background_flicker``, ``jump_ratio`` (worst object), ``area_cv`` (worst object): temporal
      consistency, see :func:`background_flicker`, :func:`track_jump_ratio`, :func:`area_stability`.
    * ``frame_blobs``: every frame's :func:`dominant_objects`, prompted colours or not.
    """

    caption: CaptionSpec
    objects: tuple[ObjectScore, ...]
    colour_ok: bool
    shape_ok: bool
    count_ok: bool
    direction_ok: bool
    direction_near: bool
    speed_ok: bool
    pan_ok: bool
    velocity: tuple[float, float]
    colour_hit_rate: float
    shape_hit_rate: float
    count_rate: float
    counts: np.ndarray
    pan: tuple[float, float]
    pan_direction: str
    background_flicker: float
    jump_ratio: float
    area_cv: float
    frame_blobs: tuple[tuple[Blob, ...], ...] = ()

    @property
    def ok(self) -> bool:
        """Everything the caption asks for holds."""
        return all((self.colour_ok, self.shape_ok, self.count_ok, self.direction_ok, self.speed_ok, self.pan_ok))


def score_video(
    frames: np.ndarray,
    caption: str | CaptionSpec,
    *,
    min_area: int | None = None,
    still_speed: float | None = None,
    pan_speed: float = 1.0,
    pan_reference: str = "measured",
    min_rate: float = 0.5,
) -> VideoScore:
    """Score a video ``(F, H, W, 3)`` against its caption (see :class:`VideoScore` for the fields).

    Each frame is segmented (:func:`palette_labels`) into blobs of at least ``min_area`` pixels
    (:func:`dominant_objects`); each prompted object is followed by its colour (:func:`track_colour`),
    its blobs classified (:func:`classify_shape`) and its track fitted (:func:`fit_motion`); the pan
    is measured on the background (:func:`estimate_pan`). ``min_rate`` is the fraction of frames a
    per-frame check must pass for its flag to hold. ``still_speed`` (px/frame) separates "still"
    from moving, default ``0.5 * W / 64`` (half the "slowly" speed). Object directions are judged
    in the scene: the image velocity minus the background's, which is measured
    (:func:`estimate_pan`) with ``pan_reference="measured"`` or taken from the caption
    (:func:`pan_velocity` with ``pan_speed``) with ``"caption"``.
    """
    frames = _as_frames(frames, min_dims=4)
    if frames.ndim != 4:
        raise ValueError(f"a video is (F, H, W, 3), got shape {frames.shape}")
    if len(frames) < 2:
        raise ValueError("scoring motion needs at least two frames")
    if pan_reference not in ("measured", "caption"):
        raise ValueError(f"pan_reference is 'measured' or 'caption', got {pan_reference!r}")
    spec = parse_caption(caption) if isinstance(caption, str) else caption
    colours = [o.colour for o in spec.objects]
    if len(set(colours)) != len(colours):
        raise ValueError(f"objects of one colour cannot be told apart by colour: {colours}")
    width = frames.shape[2]
    still = 0.5 * width / 64.0 if still_speed is None else still_speed
    area = default_min_area(*frames.shape[1:3]) if min_area is None else min_area
    labels, frame_blobs = _video_blobs(frames, area)
    masks = _grown(labels >= 0, area, 2)
    measured_pan = estimate_pan(frames, masks)
    reference = measured_pan if pan_reference == "measured" else pan_velocity(spec.pan_direction, width, pan_speed)

    objects = tuple(_score_object(prompt, frame_blobs, reference, width, still) for prompt in spec.objects)
    k = len(spec.objects)
    counts = np.array([len(blobs) for blobs in frame_blobs])
    colour_hits = [sorted(b.colour for b in blobs[:k]) == sorted(colours) for blobs in frame_blobs]
    colour_rate = float(np.mean(colour_hits))
    shape_rate = min(o.shape_hit_rate for o in objects)
    count_rate = float(np.mean(counts == k))
    pan_name = _pan_name(measured_pan, still)
    flicker = background_flicker(frames, masks, pan=measured_pan if pan_name else None)
    return VideoScore(
        caption=spec,
        objects=objects,
        colour_ok=colour_rate >= min_rate,
        shape_ok=shape_rate >= min_rate,
        count_ok=count_rate >= min_rate,
        direction_ok=all(o.direction_ok for o in objects),
        direction_near=all(o.direction_near for o in objects),
        speed_ok=all(o.speed_ok for o in objects),
        pan_ok=pan_name == spec.pan_direction,
        velocity=objects[0].velocity,
        colour_hit_rate=colour_rate,
        shape_hit_rate=shape_rate,
        count_rate=count_rate,
        counts=counts,
        pan=measured_pan,
        pan_direction=pan_name,
        background_flicker=flicker,
        jump_ratio=_worst(o.jump_ratio for o in objects),
        area_cv=_worst(o.area_cv for o in objects),
        frame_blobs=tuple(tuple(blobs) for blobs in frame_blobs),
    )


def _score_object(
    prompt: ObjectPrompt, frame_blobs: list[list[Blob]], pan: tuple[float, float], width: int, still: float
) -> ObjectScore:
    track = _track(frame_blobs, prompt.colour)
    motion = fit_motion(_whole_frames(track), still_speed=still)
    velocity = (motion.velocity[0] - pan[0], motion.velocity[1] - pan[1])
    speed = math.hypot(*velocity)
    direction = direction_of(velocity, still_speed=still)
    present = [b for b in track.blobs if b is not None]
    shape_rate = float(np.mean([b.shape == prompt.shape for b in present])) if present else 0.0
    if prompt.direction == "still":
        angle, ok = math.nan, direction == "still"
        near = speed_ok = ok
    else:
        angle = angle_to_direction(velocity, prompt.direction)
        ok = direction == prompt.direction
        near = direction != "still" and angle <= 45.0
        speeds = {word: value * width / 64.0 for word, value in SPEEDS.items()}
        moving = direction not in ("still", "unknown")  # "unknown": never seen, no speed to compare
        speed_ok = moving and min(speeds, key=lambda w: abs(speeds[w] - speed)) == prompt.speed
    return ObjectScore(
        prompt=prompt,
        track=track,
        motion=motion,
        velocity=velocity,
        direction=direction,
        speed=speed,
        angle=angle,
        colour_hit_rate=float(track.present.mean()),
        shape_hit_rate=shape_rate,
        direction_ok=ok,
        direction_near=bool(near),
        speed_ok=bool(speed_ok),
        jump_ratio=track_jump_ratio(track.centres),
        area_cv=area_stability(track.areas),
    )


def _whole_frames(track: Track, keep: float = 0.85) -> np.ndarray:
    """The track's centres with the frames where its blob is under ``keep`` times its largest area
    (partly hidden or cut by the frame edge, so its centroid is off) set absent, unless fewer than
    two frames would be left."""
    whole = track.areas >= keep * track.areas.max() if track.present.any() else track.present
    if whole.sum() < 2:
        return track.centres
    return np.where(whole[:, None], track.centres, np.nan)


def _pan_name(pan: tuple[float, float], still: float) -> str:
    """The camera pan a background velocity shows: the background moving right is a pan left."""
    if not math.hypot(*pan) >= still:
        return ""
    return max(PAN_DIRECTIONS, key=lambda d: -(pan[0] * DIRECTIONS[d][0] + pan[1] * DIRECTIONS[d][1]))


def _worst(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else math.nan


def _check_colour(colour: str) -> None:
    if colour not in PALETTE:
        raise ValueError(f"colour {colour!r}: known colours are {', '.join(PALETTE)}")


def _as_frames(frames: np.ndarray, *, min_dims: int) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames are RGB (..., H, W, 3), got shape {frames.shape}")
    if frames.ndim < min_dims and min_dims == 4:
        raise ValueError(f"a video is (F, H, W, 3), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames are uint8 RGB, got dtype {frames.dtype}")
    return frames
