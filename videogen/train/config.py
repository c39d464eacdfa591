"""The training job schema (``videogen train TRAIN.yaml``), loaded in layers like a render job.

Built-in defaults, the YAML file, then ``key=value`` overrides; a wrong key, type or value is one
:class:`~videogen.errors.ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from videogen.config import LoadedJob, load_layers
from videogen.models.bundled import NAMES as BUNDLED
from videogen.train.architecture import ArchitectureConfig, architecture_problems

STAGES = ("vae", "image", "unet", "trip", "layout")


@dataclass
class WorldSection:
    """The synthetic shapes world's distribution (``videogen.data.shapes.WorldSpec``); ``size_range`` is
    the object radius as a fraction of the shorter frame side."""

    size_range: list[float] = field(default_factory=lambda: [0.11, 0.17])
    two_objects: float = 0.3
    still: float = 0.1
    textured: float = 0.5
    pan: float = 0.2
    fit_path: bool = True


@dataclass
class DataSection:
    """Where clips come from: the synthetic ``shapes`` world, or ``videos`` (files/folders or a manifest).

    Clips are ``frames`` frames of ``width`` x ``height``, every ``frame_stride``-th source frame.
    ``caption_dropout`` is the fraction of captions replaced by the empty text, which the renderer's
    classifier-free guidance uses as its unconditional branch.
    """

    source: Literal["shapes", "videos"] = "shapes"
    videos: list[str] = field(default_factory=list)
    manifest: str | None = None
    backend: Literal["auto", "pyav", "decord"] = "auto"
    width: int = 64
    height: int = 64
    frames: int = 16
    frame_stride: int = 1
    seed: int = 0
    caption_dropout: float = 0.1
    world: WorldSection = field(default_factory=WorldSection)


@dataclass
class ModelSection:
    """``init``: a diffusers-format folder (or a bundled model's name) to fine-tune: every stage starts
    from its components; when null every component is built new from ``architecture``."""

    init: str | None = None
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = "auto"

    def resolved_prediction_type(self, init_scheduler: dict | None) -> str:
        """``auto``: the ``init`` model's own, else ``v_prediction`` for a new model.

        A new model predicts ``v = sqrt(abar) eps - sqrt(1 - abar) z_0`` (Salimans & Ho, 2022, Sec. 4):
        its loss weighs the clean latent's error by ``1 / (1 - abar)``, which stays near 1 at high
        noise, where the caption decides the video's content; epsilon's weighs it by the SNR, near 0
        there.
        """
        if self.prediction_type != "auto":
            return self.prediction_type
        if init_scheduler is not None:
            return init_scheduler.get("prediction_type", "epsilon")
        return "v_prediction"


@dataclass
class StageSection:
    """Optimiser steps and the usual knobs; ``batch_size`` is per worker."""

    steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 250


@dataclass
class VaeStage(StageSection):
    """VAE on single frames: ``|x - D(z)|^2 + kl_weight * KL(q(z|x) || N(0, I))``, z sampled."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6
    ema_decay: float = 0.99


@dataclass
class ImageStage(StageSection):
    """Text encoder + UNet3D on single frames (clips of one frame), before the video stage.

    A step of ``B`` stills costs about what ``B / F`` clips of ``F`` frames do, so the model sees many
    more caption-image pairs per second: this is where it learns what the words look like. The
    ``unet`` stage then starts from these weights. ``dropout`` as in :class:`UnetStage`.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    ema_decay: float = 0.99
    train_text_encoder: bool = True
    dropout: float = 0.1


@dataclass
class UnetStage(StageSection):
    """Text encoder + UNet3D on VAE latents of whole clips (epsilon or v prediction, ``model.prediction_type``).

    ``warped_fraction`` of the samples take Go-with-the-Flow's warped noise along the clip's flow
    (warped on a grid ``warp_upsample`` times the latent size), mixed with fresh noise at a
    degradation drawn uniformly from ``degradation``; the rest plain Gaussian noise. ``dropout`` is the
    probability of the UNet's dropout layers (UNet3D's temporal convolutions have them; 0.1 as built).
    ``timestep_range``: ``[low, high]``, the share of the scheduler's training timesteps the samples'
    timesteps are drawn from, uniformly (``[0.6, 1.0]``: only the noisiest 40%, where a clip's motion
    is still undecided and only the caption can tell it). ``motion_weight``: ``lambda`` of an extra
    term ``lambda mean_f (e_{f+1} - e_f)^2`` on the prediction error ``e = prediction - target`` of
    each frame: an error that changes from frame to frame (the object in the wrong place: motion) costs
    more than one every frame shares (a wrong colour everywhere). 0 (the default) is the plain loss.
    """

    steps: int = 3000
    lr: float = 5e-4
    train_text_encoder: bool = True
    warped_fraction: float = 0.5
    warp_upsample: int = 4
    degradation: list[float] = field(default_factory=lambda: [0.0, 1.0])
    dropout: float = 0.1
    timestep_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    motion_weight: float = 0.0


@dataclass
class TripStage(StageSection):
    """TRIP's Temporal Noise Fusion module on the frozen UNet (``videogen.train.trip.trip_loss``)."""

    steps: int = 400
    lr: float = 2e-4
    dim: int = 64
    heads: int = 4
    patch_size: int = 1
    ema_decay: float = 0.99


@dataclass
class LayoutStage(StageSection):
    """The text-to-layout prior (:mod:`videogen.models.layout_prior`): the mean latent frame of a caption at
    each position of the clip, regressed on the frozen VAE's latents, ``|m(c, f / (F - 1)) - z_0^f|^2``.
    ``clips`` clips are encoded once (the pool); a step takes ``batch_size`` frames drawn from it.
    ``kind``: ``mean`` learns the caption's mean frame (``hidden`` is the MLP's width, ``frequencies`` the
    number of ``sin/cos(pi k p)`` pairs that carry the frame's position); ``objects`` learns the object
    layout prior (:mod:`videogen.models.object_layout`, ``hidden`` the object field's width) for ``slots``
    objects from each clip's true object tracks, which only the shapes world has."""

    steps: int = 3000
    batch_size: int = 256
    clips: int = 1500
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    ema_decay: float = 0.99
    hidden: int = 256
    frequencies: int = 6
    kind: Literal["mean", "objects"] = "mean"
    slots: int = 2


@dataclass
class RaySection:
    """``workers`` > 1 trains data-parallel (DDP) on Ray Train workers; 1 trains in this process."""

    workers: int = 1
    address: str | None = None
    use_gpu: bool = False
    cpus_per_worker: int = 1


@dataclass
class TrainJob:
    """A training run. ``out`` becomes a diffusers-format model folder; its ``train/`` subfolder holds
    the resumable state and the loss curves."""

    out: str = "out/model"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    log_every: int = 25
    save_dtype: Literal["fp32", "fp16"] = "fp32"
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    vae: VaeStage = field(default_factory=VaeStage)
    image: ImageStage = field(default_factory=ImageStage)
    unet: UnetStage = field(default_factory=UnetStage)
    trip: TripStage = field(default_factory=TripStage)
    layout: LayoutStage = field(default_factory=LayoutStage)
    ray: RaySection = field(default_factory=RaySection)


def _stage_problems(name: str, stage: StageSection) -> list[tuple[str, str]]:
    out = []
    for key in ("steps", "batch_size"):
        if getattr(stage, key) < 1:
            out.append((f"{name}.{key}", f"must be >= 1, got {getattr(stage, key)}"))
    if not stage.lr > 0:
        out.append((f"{name}.lr", f"must be > 0, got {stage.lr}"))
    for key in ("warmup_steps", "checkpoint_every"):
        if getattr(stage, key) < 0:
            out.append((f"{name}.{key}", f"must be >= 0, got {getattr(stage, key)}"))
    if not 0.0 <= stage.ema_decay < 1.0:
        out.append((f"{name}.ema_decay", f"must be in [0, 1), got {stage.ema_decay}"))
    if stage.grad_clip < 0:
        out.append((f"{name}.grad_clip", f"must be >= 0 (0 = off), got {stage.grad_clip}"))
    return out


def train_problems(job: TrainJob) -> list[tuple[str, str]]:
    """(key, what is wrong) for every impossible value."""
    out: list[tuple[str, str]] = []
    unknown = [s for s in job.stages if s not in STAGES]
    if unknown or not job.stages:
        out.append(("stages", f"use a list of {', '.join(STAGES)}; got {list(job.stages)}"))
    d = job.data
    for key in ("width", "height"):
        if getattr(d, key) < 8 or getattr(d, key) % 8:
            out.append((f"data.{key}", f"{getattr(d, key)} is not a positive multiple of 8"))
    if d.frames < 1 or ("trip" in job.stages and d.frames < 2):
        need = "TRIP needs the image frame and one more" if "trip" in job.stages else "a clip needs a frame"
        out.append(("data.frames", f"{need}: got {d.frames}"))
    if d.frame_stride < 1:
        out.append(("data.frame_stride", f"must be >= 1, got {d.frame_stride}"))
    if not 0.0 <= d.caption_dropout <= 1.0:
        out.append(("data.caption_dropout", f"must be in [0, 1], got {d.caption_dropout}"))
    if d.source == "videos" and not d.videos and not d.manifest:
        out.append(("data.videos", "data.source is videos: list video files/folders here or set data.manifest"))
    size = list(d.world.size_range)
    if len(size) != 2 or not 0.02 <= size[0] <= size[1] <= 0.3:
        out.append(("data.world.size_range", f"a range [low, high] inside [0.02, 0.3], got {size}"))
    for key in ("two_objects", "still", "textured", "pan"):
        value = getattr(d.world, key)
        if not 0.0 <= value <= 1.0:
            out.append((f"data.world.{key}", f"is a probability in [0, 1], got {value}"))
    if job.model.init is not None and job.model.init not in BUNDLED and not Path(job.model.init).expanduser().is_dir():
        out.append(("model.init", f"model folder {job.model.init} does not exist"))
    out += architecture_problems(job.model.architecture)
    for name in STAGES:
        out += _stage_problems(name, getattr(job, name))
    u = job.unet
    if not 0.0 <= u.warped_fraction <= 1.0:
        out.append(("unet.warped_fraction", f"must be in [0, 1], got {u.warped_fraction}"))
    span = u.timestep_range
    if len(span) != 2 or not 0.0 <= span[0] < span[1] <= 1.0:
        out.append(("unet.timestep_range", f"must be [low, high] with 0 <= low < high <= 1, got {span}"))
    if u.motion_weight < 0:
        out.append(("unet.motion_weight", f"must be >= 0, got {u.motion_weight}"))
    for name in ("image", "unet"):
        dropout = getattr(job, name).dropout
        if not 0.0 <= dropout < 1.0:
            out.append((f"{name}.dropout", f"must be in [0, 1), got {dropout}"))
    if u.warp_upsample < 1:
        out.append(("unet.warp_upsample", f"must be >= 1, got {u.warp_upsample}"))
    if len(u.degradation) != 2 or not 0.0 <= u.degradation[0] <= u.degradation[1] <= 1.0:
        out.append(("unet.degradation", f"a range [low, high] inside [0, 1], got {list(u.degradation)}"))
    for key in ("hidden", "frequencies", "clips", "slots"):
        if getattr(job.layout, key) < 1:
            out.append((f"layout.{key}", f"must be >= 1, got {getattr(job.layout, key)}"))
    if job.layout.kind == "objects" and job.data.source != "shapes":
        why = "objects learns from each clip's true object tracks, which only data.source: shapes has"
        out.append(("layout.kind", why))
    if job.ray.workers < 1:
        out.append(("ray.workers", f"must be >= 1, got {job.ray.workers}"))
    if job.threads < 0 or job.log_every < 0:
        out.append(("threads" if job.threads < 0 else "log_every", "must be >= 0"))
    return out


def load_train_job(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> LoadedJob:
    """Merge defaults, the training YAML and overrides; validate; ``.config`` is a :class:`TrainJob`."""
    loaded = load_layers(TrainJob, path, overrides)
    loaded.fail_on(train_problems(loaded.config))
    return loaded
