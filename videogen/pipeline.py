"""One worker's render: prompts -> embeddings -> noise -> sampling loop -> decode -> writer.

A single-process render is the N-worker render with N = 1 (docs/architecture.md, principle 3): the
parallel runtime calls the same functions with a :class:`WorkerSlot` that names the frames this
worker owns, the hooks it adds and how it installs itself on the UNet.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from videogen.checkpoint import (
    CheckpointHook,
    checkpoint_dir,
    job_fingerprint,
    load_checkpoint,
    resume_step,
)
from videogen.config import JobConfig, layout_folder, output_format, resolve_seed, to_yaml
from videogen.decode import decode_chunks, to_uint8
from videogen.errors import ConfigError, MediaError, ModelLoadError
from videogen.io.atomic import check_target, write_text_atomic
from videogen.io.image import load_image
from videogen.io.writer import foreign_entry, open_sink
from videogen.models.attention import check_backend, set_attention_backend
from videogen.models.family import ModelFamily
from videogen.models.frame_context import FrameContext, install_frame_context
from videogen.models.layout_prior import (
    AnyLayoutPrior,
    layout_latents,
    layout_velocity,
    load_layout_prior,
)
from videogen.models.loader import (
    DTYPES,
    ModelBundle,
    component_config,
    component_dir,
    load_bundle,
    load_scheduler_config,
    model_family,
    resolve_device,
)
from videogen.models.trip_fusion import load_fusion
from videogen.noise.gaussian import video_noise
from videogen.noise.i2v_spec import prior_schedule, resolve_fusion
from videogen.noise.image_prior import (
    ImagePriorHook,
    encode_image_latent,
    i2v_initial_latents,
    i2v_start_index,
    prediction_form,
)
from videogen.noise.warp_spec import CameraMoveSpec, CameraSpec, WarpedNoiseSpec
from videogen.noise.warped_latents import warped_latent_noise
from videogen.prompts import TextContext, build_text_context
from videogen.sampling import Denoiser, ProgressHook, StepHook, make_scheduler, restore_scheduler_state, run_steps

Installer = Callable[[torch.nn.Module, Denoiser], Callable[[], None]]


def _unchanged(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass
class WorkerSlot:
    """The part of a render one process does. The default is the whole video on one worker.

    ``frames``: the global frames this worker owns. ``hooks``: extra step hooks. ``install``:
    called with (unet, denoiser) before sampling, returns the function that uninstalls it.
    ``loop``: the denoising loop, :func:`videogen.sampling.run_steps` or a replacement with the
    same signature (a step-parallel driver). ``share``: gives every worker rank 0's copy of a
    tensor (the first-frame latent is encoded once and broadcast). ``saves_checkpoints``: false
    for workers whose peers hold the same frames and save them (patch, cfg and step peers).
    """

    rank: int = 0
    world_size: int = 1
    frames: range | None = None
    hooks: list[StepHook] = field(default_factory=list)
    install: Installer | None = None
    loop: Callable[..., torch.Tensor] = run_steps
    share: Callable[[torch.Tensor], torch.Tensor] = _unchanged
    saves_checkpoints: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class RenderResult:
    """What a render wrote. ``timings``: seconds per stage (as in the ``.meta.json``); ``host``: the
    machine that wrote the output when it is not this one (a Ray worker on another node)."""

    output: Path
    seed: int
    frames: int
    seconds: float
    model_evaluations: int
    resumed_from_step: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    host: str | None = None

    def summary(self) -> str:
        """The line ``videogen render`` ends with."""
        where = f" on {self.host}" if self.host else ""
        stages = ", ".join(f"{name} {value:.1f}" for name, value in self.timings.items())
        return (
            f"wrote {self.output}{where} ({self.frames} frames, seed {self.seed}, "
            f"{self.model_evaluations} model evaluations, {self.seconds:.1f} s" + (f": {stages})" if stages else ")")
        )


class StageClock:
    """Wall seconds per stage of a render: :meth:`lap` closes the stage running since the last lap."""

    def __init__(self, started: float | None = None):
        self.started = time.perf_counter() if started is None else started
        self._last = self.started
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self.started

    def rounded(self) -> dict[str, float]:
        return {stage: round(value, 3) for stage, value in self.stages.items()}


def slot_frames(job: JobConfig, slot: WorkerSlot) -> range:
    return slot.frames if slot.frames is not None else range(job.video.num_frames)


def check_size(job: JobConfig, bundle: ModelBundle) -> None:
    _check_family(job, bundle.family)
    _check_multiple(job, bundle.geometry)
    _check_frame_limit(job, bundle.family, dict(bundle.unet.config))


def _check_family(job: JobConfig, family: ModelFamily) -> None:
    """The first job setting the model's family cannot render, as a :class:`ConfigError` naming its key."""
    problems = family.job_problems(job)
    if problems:
        key, problem = problems[0]
        raise ConfigError.of(key, problem)


def _check_multiple(job: JobConfig, geometry) -> None:
    multiple = geometry.size_multiple
    for key, value in (("video.width", job.video.width), ("video.height", job.video.height)):
        if value % multiple:
            raise ConfigError(
                f"{key}: {value} is not a multiple of {multiple}, "
                f"which this model needs ({geometry.explain_multiple()})"
            )


def _check_frame_limit(job: JobConfig, family: ModelFamily, unet_config: dict) -> None:
    """Exact temporal attention sees every frame at once: refuse more frames than the model has positions for."""
    limit = family.frame_limit(unet_config)
    if limit is None or job.video.num_frames <= limit:
        return
    if job.parallel.clip_mode == "exact":
        raise ConfigError(
            f"video.num_frames: {job.video.num_frames} frames are more than the {limit} frame positions of this "
            f"{family.name} model's temporal attention, which sees all frames at once with parallel.clip_mode: exact; "
            "render at most that many, or use parallel.clip_mode: dual_scope, which keeps each frame's keys "
            "within the limit (docs/model_families.md)"
        )


def needs_position_windows(job: JobConfig) -> bool:
    """True when dual-scope attention must cut the video into position windows (more frames than the model's
    temporal attention has positions for): such a render runs through the clip-parallel path even on one worker.
    Read from the model's config files, without weights."""
    if job.parallel.clip_mode != "dual_scope":
        return False
    limit = model_family(job.model).configured_frame_limit(job.model)
    return limit is not None and job.video.num_frames > limit


def guides(job: JobConfig, family: ModelFamily) -> bool:
    """Whether the render evaluates both guidance branches: some frame's scale exceeds 1. Decided for the whole
    video, as diffusers decides by the largest scale, so every clip worker agrees."""
    return bool((torch.as_tensor(family.guidance(job, range(job.video.num_frames))) > 1.0).any())


def sampler_name(job: JobConfig, family: ModelFamily) -> str:
    """The scheduler the job runs: ``sampler.name``, or the family's usual one for ``auto``."""
    name = job.sampler.name if job.sampler.name != "auto" else family.default_sampler
    if job.sampler.eta > 0 and name != "ddim":
        raise ConfigError(f"sampler.eta: eta applies to ddim only, and this job samples with {name}")
    return name


def latent_shape(job: JobConfig, bundle: ModelBundle) -> tuple[int, int, int]:
    f = bundle.vae_scale_factor
    return bundle.latent_channels, job.video.height // f, job.video.width // f


def initial_noise(job: JobConfig, seed: int, frames: range, bundle: ModelBundle) -> torch.Tensor:
    """Unit-variance noise for the global ``frames``, identical however the video is split.

    Gaussian noise depends on (seed, global frame index) only; warped noise is computed along
    the motion from frame 0, and each worker keeps its own frames of that sequence.
    """
    channels, height, width = latent_shape(job, bundle)
    if job.noise.kind == "warped":
        return warped_latent_noise(job.noise.warped, seed, job.video.num_frames, channels, height, width, frames)
    return video_noise(seed, frames, channels, height, width, stream="init")


def image_prior(
    job: JobConfig, bundle: ModelBundle, scheduler, seed: int, slot: WorkerSlot
) -> tuple[torch.Tensor, int, ImagePriorHook]:
    """TRIP image-to-video: (initial latents, first step, prior hook) for this worker's frames.

    ``z0`` (the image's latent) is encoded by rank 0 and shared; every frame starts from ``z0``
    noised with the job's own noise (Gaussian or warped) to the first step run, and the hook
    fuses the model output with the image noise prior per global frame (docs/i2v.md).
    """
    spec = job.image
    prediction_form(scheduler)
    image = load_image(spec.path, job.video.width, job.video.height, spec.resize)
    z0 = slot.share(encode_image_latent(bundle.vae, image).contiguous())
    start = i2v_start_index(job.sampler.steps, spec.strength)
    fresh = initial_noise(job, seed, slot_frames(job, slot), bundle).to(bundle.device)
    latents = i2v_initial_latents(z0, fresh, scheduler, start)
    fusion_dir = resolve_fusion(spec, job.model.path)
    fusion = load_fusion(fusion_dir, bundle.latent_channels, bundle.device) if fusion_dir else None
    return latents, start, ImagePriorHook(z0, prior_schedule(spec), fusion)


def layout_start(
    job: JobConfig,
    bundle: ModelBundle,
    scheduler,
    text: TextContext,
    frames: range,
    seed: int,
    folder: Path,
) -> tuple[torch.Tensor, int]:
    """Start from the text-to-layout prior in ``folder`` (docs/layout.md): (initial latents, first step).

    ``m`` is the prior's latent of each of this worker's global ``frames``, from the conditional text
    states (one caption, or each frame's own with a prompt schedule), the frame's place ``f / (F - 1)`` and,
    for an object prior, the placement it draws from the seed (the same on every worker), in float32; the
    latents are ``m`` noised to the first step run, ``i2v_start_index(steps, layout.strength)``, as
    image-to-video starts from its image (SDEdit). The noise is the job's own, or,
    with :func:`layout_warps_noise`, warped noise moving with the whole layout's mean motion
    (:func:`layout_noise`).
    """
    prior = load_layout_prior(folder, bundle.device)
    _check_layout_prior(prior, folder, text.cond, bundle.latent_channels)
    _, height, width = latent_shape(job, bundle)
    if layout_warps_noise(job):
        every = range(job.video.num_frames)
        cond = text.cond
        if cond.shape[0] > 1 and frames != every:  # a prompt schedule: every frame's own text
            cond = build_text_context(bundle.tokenizer, bundle.text_encoder, job.prompts, len(every), every).cond
        whole = layout_latents(prior, cond, every, job.video.num_frames, height, width, seed)
        mean = whole[:, :, frames.start : frames.stop]
        fresh = layout_noise(job, whole, seed, frames)
    else:
        mean = layout_latents(prior, text.cond, frames, job.video.num_frames, height, width, seed)
        fresh = initial_noise(job, seed, frames, bundle)
    start = i2v_start_index(job.sampler.steps, job.layout.strength)
    return i2v_initial_latents(mean, fresh.to(bundle.device), scheduler, start), start


def layout_warps_noise(job: JobConfig) -> bool:
    """Whether a layout start replaces the job's Gaussian noise by warped noise (``layout.noise: warped``)."""
    return job.noise.kind == "gaussian" and job.layout.noise == "warped"


def layout_noise(job: JobConfig, whole: torch.Tensor, seed: int, frames: range) -> torch.Tensor:
    """Go-with-the-Flow warped noise for ``frames`` that moves with the layout ``whole`` of every frame.

    ``whole`` ``(1, C, F, h, w)`` gives the velocity ``v`` (:func:`videogen.models.layout_prior.layout_velocity`,
    latent pixels per frame; every worker computes the same); the noise is the camera move that slides the
    scene by ``v`` each frame (``pan = -v_x / w``, ``tilt = v_y / h``), warped at ``layout.degradation``
    (docs/warped_noise.md), so a UNet trained with warped noise follows it.
    """
    channels, num_frames, height, width = whole.shape[1:]
    vx, vy = layout_velocity(whole)
    move = CameraMoveSpec(pan=-vx / width, tilt=vy / height)
    spec = WarpedNoiseSpec(source="camera", degradation=job.layout.degradation, camera=CameraSpec([move]))
    return warped_latent_noise(spec, seed, num_frames, channels, height, width, frames)


def _check_layout_prior(prior: AnyLayoutPrior, folder: Path, cond: torch.Tensor, channels: int) -> None:
    cfg = prior.config
    tokens, dim = cond.shape[1:]
    if cfg.latent_channels != channels or (cfg.text_tokens, cfg.text_dim) != (tokens, dim):
        raise ConfigError.of(
            "layout.prior",
            f"{folder} is a prior for {cfg.latent_channels}-channel latents and text states of "
            f"{cfg.text_tokens} x {cfg.text_dim}; this model has {channels}-channel latents and text states of "
            f"{tokens} x {dim}",
        )


def first_step(job: JobConfig, family: ModelFamily) -> int:
    """The step a fresh render's loop starts at: later than 0 when it starts from an image (``image.strength``,
    docs/i2v.md) or from a layout (``layout.strength``, docs/layout.md)."""
    if family.uses_image_prior(job):
        return i2v_start_index(job.sampler.steps, job.image.strength)
    if layout_folder(job) is not None:
        return i2v_start_index(job.sampler.steps, job.layout.strength)
    return 0


def _step_noise(seed: int, frames: range, shape: tuple[int, int, int]):
    def draw(index: int, latents: torch.Tensor) -> torch.Tensor:
        noise = video_noise(seed, frames, *shape, stream="step", step=index)
        return noise.to(device=latents.device, dtype=latents.dtype)

    return draw


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("videogen", "torch", "diffusers", "transformers", "av", "omegaconf", "ray", "xformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def image_record(job: JobConfig) -> dict | None:
    """What ``.meta.json`` says of image-to-video: the image, and the trained fusion module used
    (``fusion``: its folder, or None for TRIP's training-free linear fusion); None without an image."""
    if not job.image.path:
        return None
    fusion = resolve_fusion(job.image, job.model.path)
    return {"path": str(job.image.path), "fusion": str(fusion) if fusion else None}


def layout_record(job: JobConfig) -> dict:
    """What ``.meta.json`` says of the layout start: the prior's folder (None without one), ``layout.strength``
    and the first step run from the layout (None without one)."""
    folder = layout_folder(job)
    used = folder is not None
    start = i2v_start_index(job.sampler.steps, job.layout.strength) if used else None
    warped = used and layout_warps_noise(job)
    return {
        "prior": str(folder) if used else None,
        "strength": job.layout.strength,
        "start_step": start,
        "noise": ("warped" if warped else job.noise.kind) if used else None,
        "degradation": job.layout.degradation if warped else None,
    }


def write_job_record(job: JobConfig, result_meta: dict, output: Path) -> None:
    """``<output>.job.yaml`` (the resolved job, seed included) and ``<output>.meta.json``."""
    write_text_atomic(Path(f"{output}.job.yaml"), to_yaml(job))
    write_text_atomic(Path(f"{output}.meta.json"), json.dumps(result_meta, indent=2, default=str) + "\n")


def denoise(
    job: JobConfig,
    bundle: ModelBundle,
    seed: int,
    slot: WorkerSlot,
    resume_from: int | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, int, int | None]:
    """Sample this worker's latents, from the checkpoint of step ``resume_from`` if given.

    Returns (latents, model evaluations, resumed step).
    """
    frames = slot_frames(job, slot)
    family, unet = bundle.family, bundle.unet
    text = family.condition(bundle, job, seed, frames, slot.share)
    frame_context = FrameContext() if text.per_frame else None
    keys = family.cross_attention_keys(unet)
    remove_context = install_frame_context(unet, frame_context, keys) if frame_context else None
    inputs = functools.partial(family.unet_inputs, unet, job=job)
    call = family.unet_call(unet, job, text)
    denoiser = Denoiser(unet, text, family.guidance(job, frames), frame_context, inputs, call, guides(job, family))
    remove_parallel = slot.install(bundle.unet, denoiser) if slot.install else None
    try:
        scheduler = make_scheduler(sampler_name(job, bundle.family), bundle.scheduler_config, job.model.prediction_type)
        scheduler.set_timesteps(job.sampler.steps, device=bundle.device)
        hooks = list(slot.hooks)
        if family.uses_image_prior(job):
            latents, start, prior_hook = image_prior(job, bundle, scheduler, seed, slot)
            hooks.append(prior_hook)
        else:
            folder = layout_folder(job)
            if folder is not None:
                latents, start = layout_start(job, bundle, scheduler, text, frames, seed, folder)
            else:
                latents = initial_noise(job, seed, frames, bundle).to(bundle.device) * scheduler.init_noise_sigma
                start = 0
        checkpoints = job.sampler.checkpoint_every > 0 and slot.saves_checkpoints
        fingerprint = job_fingerprint(job) if resume_from is not None or checkpoints else ""
        ckpt_dir = checkpoint_dir(job)
        if resume_from is not None:
            ckpt = load_checkpoint(ckpt_dir, frames, resume_from, fingerprint)
            restore_scheduler_state(scheduler, ckpt.scheduler_tensors, ckpt.scheduler_values, bundle.device)
            latents = ckpt.latents.to(bundle.device)
            start = resume_from + 1
        if checkpoints:
            hooks.append(CheckpointHook(ckpt_dir, job.sampler.checkpoint_every, frames, fingerprint))
        hooks.append(ProgressHook(len(scheduler.timesteps), start, enabled=progress and slot.is_main))
        latents = slot.loop(
            denoiser,
            scheduler,
            latents,
            frames,
            hooks,
            start_index=start,
            eta=job.sampler.eta,
            step_noise=_step_noise(seed, frames, latent_shape(job, bundle)),
        )
    finally:
        if remove_parallel:
            remove_parallel()
        if remove_context:
            remove_context()
    return latents, denoiser.evaluations, resume_from


def decode_video(
    job: JobConfig, bundle: ModelBundle, latents: torch.Tensor, context: tuple[int, int] = (0, 0)
) -> Iterator[torch.Tensor]:
    """Frames ``(n, H, W, 3)`` in [0, 1], ``output.decode_chunk_frames`` at a time, as the model family decodes.

    ``context``: that many first and last latent frames are a temporal decoder's context from the
    neighbouring clips, not frames to write (a per-frame VAE gets none).
    """
    family = bundle.family
    halo = family.decode_halo(job)
    if halo is None:
        return decode_chunks(bundle.vae, latents, job.output.decode_chunk_frames)
    decode = functools.partial(family.decode, bundle.vae)
    return decode_chunks(bundle.vae, latents, job.output.decode_chunk_frames, decode, halo, context)


def decode_to(
    job: JobConfig, bundle: ModelBundle, latents: torch.Tensor, output: Path, context: tuple[int, int] = (0, 0)
) -> int:
    """Decode ``latents`` chunk by chunk into ``output`` (``context`` as in :func:`decode_video`); returns
    the number of frames written."""
    with open_sink(output, job.video.fps, job.output.crf) as sink:
        for chunk in decode_video(job, bundle, latents, context):
            sink.write(to_uint8(chunk))
        return sink.frames_written


def check_inputs(job: JobConfig) -> None:
    """Read the job's input files once before any weights load, so a bad one fails in a second."""
    if job.layout.prior not in ("auto", "off", False):
        layout_folder(job)  # a folder given must hold a layout prior
    if job.image.path is not None:
        try:
            load_image(job.image.path, job.video.width, job.video.height, job.image.resize)
        except MediaError as error:
            raise MediaError(f"image.path: {error}") from None


def check_output(job: JobConfig, resume: bool = False) -> None:
    """Refuse, before any weights load, an output location that cannot be written or would delete a user's files.

    ``output.path`` must be writable as its format's kind (a file for .mp4/.gif, a folder for PNG frames);
    an existing folder is replaced only when it holds nothing but frames. ``output.checkpoint_dir`` must
    be a folder where checkpoints are written or read.
    """
    target = Path(job.output.path)
    folder = output_format(job.output.path) == "png"
    check_target(target, "output.path", "folder" if folder else "file")
    if folder and target.is_dir() and (name := foreign_entry(target)) is not None:
        raise ConfigError(
            f"output.path: {target} is a folder holding {name}, which videogen did not write; "
            "PNG frames replace only a previous folder of frames, so give a new or empty folder"
        )
    if job.sampler.checkpoint_every > 0 or resume or job.output.checkpoint_dir:
        check_target(checkpoint_dir(job), "output.checkpoint_dir", "folder")


def _memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` (the host's RAM for the CPU), or None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_model_limits(job: JobConfig) -> None:
    """Bound the job by what its model and scheduler accept, from their config files, before any weights load.

    ``sampler.steps`` is at most the scheduler's training timesteps; width and height are multiples of
    the model's total downsampling; and the UNet's first-level activations for one worker's frames
    (both guidance branches) must fit in the device's memory, which bounds size and frame count together.
    """
    scheduler_folder = component_dir(job.model, "scheduler")
    if isinstance(scheduler_folder, Path):
        timesteps = int(load_scheduler_config(job.model).get("num_train_timesteps", 1000))
        if job.sampler.steps > timesteps:
            raise ConfigError(
                f"sampler.steps: {job.sampler.steps} is more than the {timesteps} timesteps the model's scheduler "
                f"knows ({scheduler_folder}); use at most {timesteps}"
            )
    unet, vae = component_config(job.model, "unet"), component_config(job.model, "vae")
    if unet is None or vae is None:
        return
    family = model_family(job.model)
    _check_family(job, family)
    try:
        geometry = family.geometry(unet, vae)
        first_width = int(unet["block_out_channels"][0])
    except (KeyError, TypeError, IndexError):
        return  # the loader says what is wrong with the folder
    _check_multiple(job, geometry)
    _check_frame_limit(job, family, unet)
    vae_factor = geometry.spatial_factor
    v = job.video
    try:
        device = resolve_device(job.model.device)
    except ModelLoadError:
        return  # the driver may lack the workers' devices; each worker's loader checks its own
    memory = _memory_bytes(device)
    frames = math.ceil(v.num_frames / max(job.parallel.clip, 1))
    branches = 2 if job.sampler.guidance_scale > 1 else 1
    element = torch.finfo(DTYPES[job.model.dtype]).bits // 8
    need = branches * first_width * frames * (v.height // vae_factor) * (v.width // vae_factor) * element
    if memory is not None and need > memory:
        raise ConfigError(
            f"video.width x video.height x video.num_frames: {v.width}x{v.height} with {frames} frames per worker "
            f"needs at least {need / 2**30:.3g} GiB for the UNet's first level alone, more than the "
            f"{memory / 2**30:.3g} GiB of {device.type} memory here; render a smaller or shorter video, "
            "or on more clip workers"
        )


def prepare_bundle(job: JobConfig, bundle: ModelBundle | None = None) -> ModelBundle:
    if bundle is None:
        check_backend(job.model.attention, resolve_device(job.model.device), DTYPES[job.model.dtype])
        bundle = load_bundle(job.model)
    set_attention_backend(bundle.unet, job.model.attention)
    check_size(job, bundle)
    return bundle


def check_one_worker(job: JobConfig) -> None:
    """Raise unless ``job`` asks for one worker and no position windows: this process renders alone, with the
    model's own temporal attention."""
    if needs_position_windows(job):
        raise ConfigError(
            f"parallel.clip_mode: dual_scope over {job.video.num_frames} frames cuts the video into position windows "
            "(more frames than the model's temporal attention has positions for), which the clip-parallel path "
            "installs: use videogen.api.render_job, which runs it on one clip worker"
        )
    if job.parallel.world_size > 1:
        axes = " x ".join(f"{axis}={n}" for axis, n in job.parallel.mesh().items() if n > 1)
        raise ConfigError(
            f"parallel: the job asks for {job.parallel.world_size} workers ({axes}); this function renders on "
            "one process: use videogen.api.render_job, which starts the workers"
        )


def render_frames(job: JobConfig, *, bundle: ModelBundle | None = None, progress: bool = False) -> np.ndarray:
    """Render ``job`` on this process and return its frames ``(F, H, W, 3)`` uint8, writing nothing.

    The same sampling and decoding as :func:`render`, for evaluation and benchmarks that score frames.
    """
    check_one_worker(job)
    seed = resolve_seed(job)
    check_inputs(job)
    bundle = prepare_bundle(job, bundle)
    latents, _, _ = denoise(job, bundle, seed, WorkerSlot(), progress=progress)
    return np.concatenate([to_uint8(chunk) for chunk in decode_video(job, bundle, latents)])


def render(
    job: JobConfig,
    *,
    resume: bool = False,
    bundle: ModelBundle | None = None,
    progress: bool = True,
) -> RenderResult:
    """Render ``job`` on this process and write ``job.output.path`` (atomically).

    A one-worker job only (:func:`videogen.api.render_job` dispatches by the job's world size).
    """
    check_one_worker(job)
    clock = StageClock()
    seed = resolve_seed(job)
    check_inputs(job)
    check_output(job, resume)
    if bundle is None:
        check_model_limits(job)
    slot = WorkerSlot()
    start = resume_step(checkpoint_dir(job), slot_frames(job, slot)) if resume else None
    clock.lap("checks")
    bundle = prepare_bundle(job, bundle)
    clock.lap("load")
    latents, evaluations, resumed = denoise(job, bundle, seed, slot, resume_from=start, progress=progress)
    clock.lap("denoise")
    output = Path(job.output.path)
    frames = decode_to(job, bundle, latents, output)
    clock.lap("decode")
    seconds = clock.total()
    write_job_record(
        job,
        {
            "seed": seed,
            "frames": frames,
            "workers": 1,
            "mesh": job.parallel.mesh(),
            "seconds": round(seconds, 3),
            "timings": clock.rounded(),
            "model_evaluations": evaluations,
            "resumed_from_step": resumed,
            "device": str(bundle.device),
            "host": socket.gethostname(),
            "image": image_record(job),
            "layout": layout_record(job),
            "versions": package_versions(),
        },
        output,
    )
    return RenderResult(output, seed, frames, seconds, evaluations, resumed, clock.rounded())
