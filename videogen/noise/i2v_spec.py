"""The ``image:`` job section: image-to-video with TRIP's image noise prior (docs/i2v.md).

A plain dataclass usable as an OmegaConf structured config; every field has a default, so a
text-to-video job never mentions it (``path: null``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from videogen.errors import ConfigError

if TYPE_CHECKING:  # the schema stays importable without torch/diffusers
    from videogen.noise.image_prior import PriorSchedule

_PREFIX = "image"


@dataclass
class ImageToVideoSpec:
    """The first frame and how strongly the video is tied to it.

    ``path``: the first-frame image (PNG, JPEG, ...); ``null`` renders text-to-video.
    ``resize``: ``cover`` (scale to cover the video size, crop the centre) or ``stretch`` (scale each axis).
    ``strength``: fraction of the sampling steps run, starting from the image latent noised to the first
    step run (1.0: all steps, as in text-to-video; lower keeps more of the image in every frame and gives
    less motion).
    ``schedule``: how the prior's weight decays with the frame index: ``linear``, ``exponential`` or
    ``constant``; ``weight_first`` is frame 0's weight, ``weight_floor`` the weight far from it,
    ``decay_frames`` the frames to reach the floor (linear) or the e-folding length (exponential).
    ``active_fraction``: the prior acts on the first ``ceil(active_fraction * steps)`` steps.
    ``pin_first_frame``: frame 0 keeps ``weight_first`` at every step (with 1.0 the video starts exactly
    on the image's latent).
    ``fusion``: ``auto`` uses ``<model>/trip_fusion`` when the model folder has a trained Temporal Noise
    Fusion module, ``none`` never does, anything else is the module's folder.
    """

    path: str | None = None
    resize: Literal["cover", "stretch"] = "cover"
    strength: float = 1.0
    schedule: Literal["linear", "exponential", "constant"] = "linear"
    weight_first: float = 1.0
    weight_floor: float = 0.0
    decay_frames: float = 16.0
    active_fraction: float = 0.5
    pin_first_frame: bool = True
    fusion: str = "auto"


def _unit_problem(value: float, low_open: bool = False) -> str | None:
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if (value <= 0.0 if low_open else value < 0.0) or value > 1.0:
        return f"must be in {'(0' if low_open else '[0'}, 1], got {value}"
    return None


def i2v_problems(spec: ImageToVideoSpec) -> list[tuple[str, str]]:
    """``(key, what is wrong)`` for every impossible value, keys relative to ``image.``, in field order.

    The image file itself is checked when it is read (:func:`videogen.io.image.load_image`).
    """
    out: list[tuple[str, str]] = []
    if spec.path is not None and not spec.path.strip():
        out.append(("path", "is empty; give an image file, or null for text-to-video"))
    if spec.resize not in ("cover", "stretch"):
        out.append(("resize", f"must be cover or stretch, got {spec.resize!r}"))
    strength = _unit_problem(spec.strength, low_open=True)
    if strength:
        out.append(("strength", strength))
    if spec.schedule not in ("linear", "exponential", "constant"):
        out.append(("schedule", f"must be linear, exponential or constant, got {spec.schedule!r}"))
    for key in ("weight_first", "weight_floor"):
        problem = _unit_problem(getattr(spec, key))
        if problem:
            out.append((key, problem))
    if spec.weight_floor > spec.weight_first:
        out.append(("weight_floor", f"{spec.weight_floor} is above weight_first ({spec.weight_first})"))
    if not math.isfinite(spec.decay_frames) or spec.decay_frames <= 0:
        out.append(("decay_frames", f"must be > 0, got {spec.decay_frames}"))
    active = _unit_problem(spec.active_fraction)
    if active:
        out.append(("active_fraction", active))
    if not spec.fusion.strip():
        out.append(("fusion", "is empty; use auto, none, or the folder of a trained fusion module"))
    return out


def validate_i2v_spec(spec: ImageToVideoSpec) -> None:
    """Raise :class:`ConfigError` ``image.<key>: <what is wrong>`` for the first impossible value."""
    problems = i2v_problems(spec)
    if problems:
        key, message = problems[0]
        raise ConfigError(f"{_PREFIX}.{key}: {message}")


def prior_schedule(spec: ImageToVideoSpec) -> PriorSchedule:
    """The :class:`PriorSchedule` the spec describes."""
    from videogen.noise.image_prior import PriorSchedule

    return PriorSchedule(
        kind=spec.schedule,
        first=spec.weight_first,
        floor=spec.weight_floor,
        decay_frames=spec.decay_frames,
        active_fraction=spec.active_fraction,
        pin_first_frame=spec.pin_first_frame,
    )


def resolve_fusion(spec: ImageToVideoSpec, model_dir: str | Path) -> Path | None:
    """The trained fusion module's folder to use, or None for linear fusion.

    ``auto``: ``<model_dir>/trip_fusion`` if it holds a module; ``none``: never; else the given folder
    (the module's own, or one with a ``trip_fusion/`` subfolder, such as ``train-trip``'s output).
    """
    from videogen.models.trip_fusion import find_fusion_module

    if spec.fusion == "none":
        return None
    if spec.fusion == "auto":
        return find_fusion_module(model_dir)
    found = find_fusion_module(spec.fusion)
    if found is None:
        raise ConfigError(
            f"{_PREFIX}.fusion: {spec.fusion}: no trained fusion module (config.json + safetensors) there"
        )
    return found
