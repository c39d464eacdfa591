"""One row per video, and a suite's summary computed from its rows.

A row is :func:`videogen.data.measure.score_video` of the video against its prompt, flattened to
plain values (the metric definitions are that module's; docs/quality.md collects them). A summary
turns the rows of a suite into rates and means:

* a flag's rate is the share of videos where it holds, in percent:
  ``rate(flag) = 100 * |{v : flag(v)}| / N`` over the suite's ``N`` videos;
* a per-frame hit rate's summary is its mean over the videos, in percent:
  ``hits = 100 * sum_v rate(v) / N``;
* a temporal metric's summary is its mean over the videos where it is defined:
  ``mean(m) = sum_{v : m(v) finite} m(v) / |{v : m(v) finite}|`` (NaN when none is), since a
  track that is never seen has no jump ratio or area variation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from videogen.data.measure import score_video

FLAGS = {
    "ok": "ok",
    "colour": "colour_ok",
    "shape": "shape_ok",
    "count": "count_ok",
    "direction": "direction_ok",
    "direction_near": "direction_near",
    "speed": "speed_ok",
    "pan": "pan_ok",
}
"""Summary rate name -> the row flag it counts."""

HITS = {"colour_hits": "colour_hit_rate", "shape_hits": "shape_hit_rate", "count_hits": "count_rate"}
"""Summary name -> the per-frame rate of a row it averages (in percent)."""

MEANS = ("jump_ratio", "area_cv", "background_flicker", "seconds")
"""Row metrics a summary averages over the videos where they are finite."""


@dataclass(frozen=True)
class VideoRow:
    """One rendered video scored against its prompt (:class:`videogen.data.measure.VideoScore`).

    ``ok``: every flag below holds. ``colour_ok``, ``shape_ok``, ``count_ok``: the per-frame rates
    ``colour_hit_rate``, ``shape_hit_rate``, ``count_rate`` (fractions of frames) reach the scoring
    ``min_rate``. ``direction_ok`` / ``direction_near``: every object moves in its prompted direction
    within 22.5 / 45 degrees (or stands still when asked to). ``speed_ok``: every object's speed is
    nearest its prompted speed word's. ``pan_ok``: the background shows the prompted camera pan, or
    none when none is asked for. ``direction``, ``speed`` (px/frame), ``velocity_x``,
    ``velocity_y``: the first object's measured motion in the scene (NaN / "unknown" when it is never
    seen); ``pan_direction``: the camera pan the background shows ("" for none). ``jump_ratio``,
    ``area_cv``: the worst object's; ``background_flicker``: mean absolute frame-to-frame change of
    the background (0-255 levels). ``frames``: the video's length; ``workers``: how many workers
    rendered it; ``seconds``: the render's wall time.
    """

    suite: str
    prompt: str
    seed: int
    ok: bool
    colour_ok: bool
    shape_ok: bool
    count_ok: bool
    direction_ok: bool
    direction_near: bool
    speed_ok: bool
    pan_ok: bool
    colour_hit_rate: float
    shape_hit_rate: float
    count_rate: float
    direction: str
    speed: float
    velocity_x: float
    velocity_y: float
    pan_direction: str
    jump_ratio: float
    area_cv: float
    background_flicker: float
    frames: int
    workers: int
    seconds: float


def score_row(
    frames: np.ndarray,
    prompt: str,
    *,
    suite: str = "",
    seed: int = 0,
    seconds: float = math.nan,
    workers: int = 1,
    min_rate: float = 0.5,
    pan_reference: str = "measured",
) -> VideoRow:
    """Score a video ``(F, H, W, 3)`` uint8 against ``prompt`` (a caption of the shapes world's grammar)."""
    score = score_video(frames, prompt, min_rate=min_rate, pan_reference=pan_reference)
    main = score.objects[0]
    return VideoRow(
        suite=suite,
        prompt=prompt,
        seed=int(seed),
        ok=bool(score.ok),
        colour_ok=bool(score.colour_ok),
        shape_ok=bool(score.shape_ok),
        count_ok=bool(score.count_ok),
        direction_ok=bool(score.direction_ok),
        direction_near=bool(score.direction_near),
        speed_ok=bool(score.speed_ok),
        pan_ok=bool(score.pan_ok),
        colour_hit_rate=float(score.colour_hit_rate),
        shape_hit_rate=float(score.shape_hit_rate),
        count_rate=float(score.count_rate),
        direction=main.direction,
        speed=float(main.speed),
        velocity_x=float(main.velocity[0]),
        velocity_y=float(main.velocity[1]),
        pan_direction=score.pan_direction,
        jump_ratio=float(score.jump_ratio),
        area_cv=float(score.area_cv),
        background_flicker=float(score.background_flicker),
        frames=int(len(frames)),
        workers=int(workers),
        seconds=float(seconds),
    )


@dataclass(frozen=True)
class SuiteSummary:
    """A suite's rows in a few figures (see the module docstring for the formulas).

    ``videos``: how many. Rates, in percent of the videos: ``ok``, ``colour``, ``shape``, ``count``,
    ``direction``, ``direction_near``, ``speed``, ``pan`` (the rows' ``*_ok`` flags and
    ``direction_near``). Mean per-frame rates, in percent: ``colour_hits``, ``shape_hits``,
    ``count_hits``. Means over the videos where defined: ``jump_ratio``, ``area_cv``,
    ``background_flicker``, ``seconds`` (per render); ``total_seconds``: the renders' sum.
    """

    suite: str
    videos: int
    ok: float
    colour: float
    shape: float
    count: float
    direction: float
    direction_near: float
    speed: float
    pan: float
    colour_hits: float
    shape_hits: float
    count_hits: float
    jump_ratio: float
    area_cv: float
    background_flicker: float
    seconds: float
    total_seconds: float


def finite_mean(values: Iterable[float]) -> float:
    """The mean of the finite ``values``; NaN when there is none."""
    kept = [float(v) for v in values if math.isfinite(float(v))]
    return sum(kept) / len(kept) if kept else math.nan


def summarize(rows: Sequence[VideoRow], suite: str | None = None) -> SuiteSummary:
    """The summary of ``rows`` (named ``suite``, default the first row's suite)."""
    if not rows:
        raise ValueError("a summary needs at least one video")
    n = len(rows)
    rates = {name: 100.0 * sum(bool(getattr(r, flag)) for r in rows) / n for name, flag in FLAGS.items()}
    hits = {name: 100.0 * sum(float(getattr(r, rate)) for r in rows) / n for name, rate in HITS.items()}
    means = {name: finite_mean(getattr(r, name) for r in rows) for name in MEANS}
    total = sum(r.seconds for r in rows if math.isfinite(r.seconds))
    name = rows[0].suite if suite is None else suite
    return SuiteSummary(suite=name, videos=n, **rates, **hits, **means, total_seconds=total)


def summarize_suites(rows: Sequence[VideoRow]) -> list[SuiteSummary]:
    """One summary per suite, in the order the suites first appear in ``rows``."""
    order: dict[str, list[VideoRow]] = {}
    for row in rows:
        order.setdefault(row.suite, []).append(row)
    return [summarize(group, name) for name, group in order.items()]
