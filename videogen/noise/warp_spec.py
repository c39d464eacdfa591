"""The ``noise.warped`` job section: which motion drives Go-with-the-Flow noise warping.

Plain dataclasses usable as OmegaConf structured configs. Every field has a default, so a job whose
``noise.kind`` is not ``warped`` never has to mention this section; :func:`validate` says what a
chosen ``source`` still needs. Positions are fractions of the frame (x: 0 left .. 1 right, y: 0 top
.. 1 bottom); speeds are per motion frame (one warp step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from videogen.errors import ConfigError

_PREFIX = "noise.warped"
_MAX_UPSAMPLE = 16


@dataclass
class CameraMoveSpec:
    """One camera move; several fields at once combine (e.g. pan while zooming).

    ``frames``: how many motion frames the move lasts (0 = until the end; only the last move).
    ``pan``: fraction of the frame width per frame; + turns the camera right (the scene slides left).
    ``tilt``: fraction of the frame height per frame; + tilts the camera up (the scene slides down).
    ``zoom``: relative scale change per frame; +0.01 zooms in 1 % per frame, negative zooms out.
    ``rotate``: degrees per frame; + turns the scene counter-clockwise on screen (camera rolls clockwise).
    """

    frames: int = 0
    pan: float = 0.0
    tilt: float = 0.0
    zoom: float = 0.0
    rotate: float = 0.0


@dataclass
class CameraSpec:
    """Camera moves played in order; after the last one ends the camera holds still."""

    moves: list[CameraMoveSpec] = field(default_factory=list)


@dataclass
class PointSpec:
    """A point as fractions of the frame: ``x`` from the left edge, ``y`` from the top edge."""

    x: float = 0.0
    y: float = 0.0


@dataclass
class DragSpec:
    """A region cut from the first frame and dragged along a path (the cut-and-drag input).

    ``polygon``: the region's outline on the first frame (>= 3 points).
    ``path``: the grab point's route; it starts where the region is grabbed (>= 2 points). The region
    follows at constant speed along the polyline from ``start_frame`` to ``end_frame`` (None = the
    last motion frame), scaling to ``scale`` (geometric interpolation) and turning ``rotate`` degrees
    (+ = counter-clockwise on screen) about the grab point. Later drags are drawn over earlier ones;
    everything outside the regions stays still.
    """

    polygon: list[PointSpec] = field(default_factory=list)
    path: list[PointSpec] = field(default_factory=list)
    start_frame: int = 0
    end_frame: int | None = None
    scale: float = 1.0
    rotate: float = 0.0


@dataclass
class VideoFlowSpec:
    """A driving video whose optical flow is the motion.

    ``path``: the video file. ``method``: OpenCV optical flow, ``dis`` (fast) or ``farneback``.
    ``backend``: decoder, ``pyav`` or ``decord`` (when installed). ``start_frame``: first video frame used.
    """

    path: str | None = None
    method: Literal["dis", "farneback"] = "dis"
    backend: Literal["pyav", "decord"] = "pyav"
    start_frame: int = 0


@dataclass
class WarpedNoiseSpec:
    """How warped initial noise is made.

    ``source``: which motion drives the warp: ``camera``, ``drag``, ``video`` or ``flow_file``.
    ``degradation``: gamma in [0, 1]; 0 follows the flow exactly, 1 is plain Gaussian noise
    (the paper recommends about 0.5; lower = tighter motion control).
    ``upsample``: warp on a grid this many times finer than the latent, so the noise moves in steps of a
    fraction of a latent pixel (slow motion accumulates at any value through the sub-pixel remainder).
    ``temporal_stride``: motion frames (warp steps) per latent frame; every ``temporal_stride``-th
    warped frame is kept (nearest temporal downsampling, for latents that compress time).
    ``flow_file``: a ``.npy`` or ``.safetensors`` file of flows (layouts in docs/warped_noise.md).
    """

    source: Literal["camera", "drag", "video", "flow_file"] = "camera"
    degradation: float = 0.5
    upsample: int = 4
    temporal_stride: int = 1
    camera: CameraSpec = field(default_factory=CameraSpec)
    drags: list[DragSpec] = field(default_factory=list)
    video: VideoFlowSpec = field(default_factory=VideoFlowSpec)
    flow_file: str | None = None


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError.of(f"{_PREFIX}.{key}", message)


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise _fail(key, f"must be a finite number, got {value}")


def _validate_camera(camera: CameraSpec) -> None:
    last = len(camera.moves) - 1
    for i, move in enumerate(camera.moves):
        key = f"camera.moves[{i}]"
        for name in ("pan", "tilt", "zoom", "rotate"):
            _finite(f"{key}.{name}", getattr(move, name))
        if move.frames < 0:
            raise _fail(f"{key}.frames", f"must be >= 0, got {move.frames}")
        if move.frames == 0 and i != last:
            raise _fail(f"{key}.frames", "0 (until the end) is only allowed for the last move")
        if move.zoom <= -1.0:
            raise _fail(f"{key}.zoom", f"must be > -1 (a scale factor 1 + zoom > 0), got {move.zoom}")


def _polygon_area(points: list[PointSpec]) -> float:
    return 0.5 * abs(sum(a.x * b.y - b.x * a.y for a, b in zip(points, points[1:] + points[:1], strict=True)))


def _validate_drag(i: int, drag: DragSpec) -> None:
    key = f"drags[{i}]"
    if len(drag.polygon) < 3:
        raise _fail(f"{key}.polygon", f"needs at least 3 points, got {len(drag.polygon)}")
    if len(drag.path) < 2:
        raise _fail(f"{key}.path", f"needs at least 2 points (grab point and destination), got {len(drag.path)}")
    for name, points in (("polygon", drag.polygon), ("path", drag.path)):
        for j, point in enumerate(points):
            _finite(f"{key}.{name}[{j}].x", point.x)
            _finite(f"{key}.{name}[{j}].y", point.y)
    if _polygon_area(drag.polygon) <= 0.0:
        raise _fail(f"{key}.polygon", "has zero area")
    _finite(f"{key}.scale", drag.scale)
    _finite(f"{key}.rotate", drag.rotate)
    if drag.scale <= 0.0:
        raise _fail(f"{key}.scale", f"must be > 0, got {drag.scale}")
    if drag.start_frame < 0:
        raise _fail(f"{key}.start_frame", f"must be >= 0, got {drag.start_frame}")
    if drag.end_frame is not None and drag.end_frame <= drag.start_frame:
        raise _fail(f"{key}.end_frame", f"must be > start_frame ({drag.start_frame}), got {drag.end_frame}")


def _validate_source(spec: WarpedNoiseSpec) -> None:
    if spec.source == "drag" and not spec.drags:
        raise _fail("drags", "source 'drag' needs at least one drag")
    if spec.source == "video" and not spec.video.path:
        raise _fail("video.path", "source 'video' needs the path of a driving video")
    if spec.source == "flow_file":
        if not spec.flow_file:
            raise _fail("flow_file", "source 'flow_file' needs the path of a .npy or .safetensors file")
        if Path(spec.flow_file).suffix.lower() not in (".npy", ".safetensors"):
            raise _fail("flow_file", f"must end in .npy or .safetensors, got {spec.flow_file!r}")
    if spec.video.start_frame < 0:
        raise _fail("video.start_frame", f"must be >= 0, got {spec.video.start_frame}")


def validate(spec: WarpedNoiseSpec) -> None:
    """Raise :class:`ConfigError` ``noise.warped.<key>: <what is wrong>`` for an impossible spec."""
    allowed = ("camera", "drag", "video", "flow_file")
    if spec.source not in allowed:
        raise _fail("source", f"must be one of {', '.join(allowed)}, got {spec.source!r}")
    _finite("degradation", spec.degradation)
    if not 0.0 <= spec.degradation <= 1.0:
        raise _fail("degradation", f"must be in [0, 1], got {spec.degradation}")
    if not 1 <= spec.upsample <= _MAX_UPSAMPLE:
        raise _fail("upsample", f"must be an integer in [1, {_MAX_UPSAMPLE}], got {spec.upsample}")
    if spec.temporal_stride < 1:
        raise _fail("temporal_stride", f"must be >= 1, got {spec.temporal_stride}")
    _validate_camera(spec.camera)
    for i, drag in enumerate(spec.drags):
        _validate_drag(i, drag)
    _validate_source(spec)


def spec_from_yaml(path: str | Path) -> WarpedNoiseSpec:
    """Load a YAML file holding a job with ``noise: {kind: warped, warped: {...}}`` or a bare spec.

    The section is merged over the defaults, checked by OmegaConf's types and by :func:`validate`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends: one line for the user
        raise ConfigError(f"{path}: not valid YAML ({_first_line(exc)})") from exc
    if not OmegaConf.is_dict(raw):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    section = _warped_section(raw, path)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(WarpedNoiseSpec), section)
        spec = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{_PREFIX}.{_error_key(exc)}: {_first_line(exc)}") from exc
    validate(spec)
    return spec


def seed_from_yaml(path: str | Path) -> int | None:
    """The ``noise.seed`` of a job file (read after :func:`spec_from_yaml` has checked the file),
    or None when the file has none (a bare spec, or a job leaving it at its default, 0)."""
    raw = OmegaConf.load(Path(path))
    noise = raw.get("noise") if OmegaConf.is_dict(raw) else None
    seed = noise.get("seed") if OmegaConf.is_dict(noise) else None
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{path}: noise.seed must be an integer, got {seed!r}")
    return seed


def _warped_section(raw, path: Path):
    if "noise" not in raw:
        return raw
    noise = raw.noise
    if not OmegaConf.is_dict(noise):
        raise ConfigError(f"{path}: noise must be a mapping")
    kind = noise.get("kind", "warped")
    if kind != "warped":
        raise ConfigError(f"noise.kind: is {kind!r}; warped noise needs kind: warped")
    if "warped" not in noise:
        raise ConfigError(f"{_PREFIX}: missing in {path}")
    return noise.warped


def _error_key(exc: OmegaConfBaseException) -> str:
    """The failing key; inside list items OmegaConf only knows the item's type, so name that."""
    key = str(getattr(exc, "full_key", "") or "")
    owner = getattr(exc, "object_type", None)
    if owner is not None and owner is not WarpedNoiseSpec and "." not in key:
        return f"<{owner.__name__}>.{key}"
    return key


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
