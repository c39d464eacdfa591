"""The render job schema, and how a job is loaded, merged and validated.

A job is merged in three layers (later wins): the packaged defaults (the dataclasses below), the
job YAML, then ``key=value`` overrides from the command line. Every mistake a user can make
(an unknown key, a wrong type, a missing required value, an impossible value) raises one
:class:`~videogen.errors.ConfigError` whose message names the key and where it came from.
YAML is read with OmegaConf's safe loader: a config file never executes code.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, Node, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from videogen.errors import ConfigError
from videogen.noise.i2v_spec import ImageToVideoSpec, i2v_problems
from videogen.noise.warp_spec import WarpedNoiseSpec
from videogen.noise.warp_spec import validate as validate_warped_spec


@dataclass
class ModelConfig:
    """Where the model lives and how it is placed.

    ``path`` is a diffusers-format folder (``model_index.json`` + component subfolders), or
    ``tiny`` for the bundled tiny model (built on first use, no download). Each component can be
    taken from another folder (the VideoCrafter2 recipe: UNet from one folder, VAE and text
    encoder from zeroscope); such a folder holds the component's files directly or in a
    subfolder of the component's name. ``family`` names the model family
    (:mod:`videogen.models.family`); ``auto`` picks the one that claims the UNet. ``motion_adapter``
    is an AnimateDiff ``MotionAdapter`` folder to pair with a Stable Diffusion UNet (by default a
    ``motion_adapter/`` subfolder of ``path``, where one is needed).
    """

    path: str = MISSING
    family: str = "auto"
    unet: str | None = None
    vae: str | None = None
    text_encoder: str | None = None
    tokenizer: str | None = None
    scheduler: str | None = None
    motion_adapter: str | None = None
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"
    attention: Literal["sdpa", "xformers"] = "sdpa"
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = "auto"


@dataclass
class PromptSegment:
    """A prompt for frames ``start`` (inclusive) to ``end`` (exclusive; ``null`` = to the end).

    A boundary is a frame (an integer: ``64``) or a share of the video: a number with a decimal point
    within [0, 1] (``0.5``) or a percentage (``"50%"``), which becomes the frame
    ``round(share * video.num_frames)`` once the video's length is known, so one schedule fits any
    length (:func:`schedule_spans`). A job loaded from a file records the frames it resolved to.
    """

    text: str = MISSING
    start: int | float | str = 0
    end: int | float | str | None = None


@dataclass
class PromptsConfig:
    """One prompt (``text``) or a schedule of prompts over frame ranges.

    With a schedule, each frame is conditioned on its own prompt; ``blend_frames`` > 0 blends
    the text embeddings linearly over that many frames around each boundary (the two segments
    meeting there each give up their share, so no frame mixes more than two neighbouring prompts).
    ``text: null`` (or ``negative: null``) is the empty prompt, so a job can switch to a schedule
    from the command line.
    """

    text: str | None = ""
    negative: str | None = ""
    schedule: list[PromptSegment] = field(default_factory=list)
    blend_frames: int = 0


@dataclass
class VideoConfig:
    """``fps`` is the written file's frame rate and, unless ``condition_fps`` is set, the rate a model
    with frame-rate conditioning (VideoCrafter2) is conditioned on; ``condition_fps`` sets that rate
    apart (Video-Infinity conditions on 24 and writes 8). A model that takes no rate refuses it."""

    width: int = 256
    height: int = 256
    num_frames: int = 16
    fps: int = 8
    condition_fps: int | None = None


@dataclass
class SamplerConfig:
    """The denoising loop. ``name: auto`` is the model family's usual scheduler (DDIM for UNet3D,
    ``dpmpp_sde`` for VideoCrafter2: SDE-DPM-Solver++ with Karras sigmas, fresh noise every step).
    ``checkpoint_every`` > 0 saves latents every that many steps."""

    name: Literal["auto", "ddim", "euler", "dpmpp", "unipc", "dpmpp_sde"] = "auto"
    steps: int = 25
    guidance_scale: float = 9.0
    eta: float = 0.0
    checkpoint_every: int = 0


@dataclass
class NoiseConfig:
    """Initial noise. ``seed: -1`` draws a seed, which is recorded beside the output.

    ``kind: gaussian`` draws frame ``i``'s noise from (seed, i); ``kind: warped`` warps noise
    along a motion (camera moves, drags, a driving video's optical flow or a flow file) with
    Go-with-the-Flow, configured in ``warped`` (docs/warped_noise.md).
    """

    seed: int = 0
    kind: Literal["gaussian", "warped"] = "gaussian"
    warped: WarpedNoiseSpec = field(default_factory=WarpedNoiseSpec)


@dataclass
class DualScopeSection:
    """Video-Infinity's dual-scope attention (parallel.clip_mode: dual_scope).

    Each query attends to frames within ``local_radius`` of it and to ``global_frames`` frames
    spread over the whole video; before ``switch_timestep`` (t >= switch) the global scope gets
    ``scope_bias`` extra logit, after it the local scope does.
    """

    local_radius: int = 8
    global_frames: int = 16
    switch_timestep: float = 800.0
    scope_bias: float = 10.0


@dataclass
class PatchSection:
    """Patch parallelism (parallel.patch > 1): DistriFusion displaced patches with PCPP.

    ``mode``: ``displaced`` (stale neighbour activations after ``warmup_steps`` synchronous UNet
    calls) or ``sync`` (exact every step). ``portion``: ``all`` (DistriFusion's full
    conditioning) or the fraction in (0, 1] of each neighbour's band that attention sees (PCPP).
    ``groupnorm``: ``exact`` or ``stale`` (corrected stale statistics, displaced only).
    ``split``: ``auto``, ``h`` or ``w``. ``decode``: ``auto``, ``frames`` or ``patch``.
    """

    mode: Literal["displaced", "sync"] = "displaced"
    portion: str = "0.25"
    warmup_steps: int = 4
    groupnorm: Literal["exact", "stale"] = "stale"
    split: Literal["auto", "h", "w"] = "auto"
    decode: Literal["auto", "frames", "patch"] = "auto"


@dataclass
class ParallelConfig:
    """How workers split the video.

    ``clip``: workers along the frame axis, each owning a contiguous clip. ``clip_mode``:
    ``exact`` (temporal attention sees every frame; the video equals the one-worker render) or
    ``dual_scope`` (local window + global frames, Video-Infinity). ``groupnorm``: temporal
    GroupNorm statistics over the whole video (``exact``) or per clip (``local``, dual-scope
    only). ``launcher``: ``ray`` (actors in a placement group; a local Ray instance unless
    ``ray.address`` is set) or ``local`` (processes on this machine, no Ray).
    ``threads_per_worker``: torch CPU threads per worker (0 = torch's default).
    ``patch``: workers splitting each frame's latent rows (``patch_options``). ``cfg``: 2 puts
    the two guidance branches on two workers. ``step``: ParaStep workers computing different
    denoising steps after ``step_warmup`` common ones, reusing outputs by ``step_reuse``;
    ``step_warmup_split`` shares each warm-up step's two guidance branches between two of them.
    The world size is clip x patch x cfg x step.
    """

    clip: int = 1
    patch: int = 1
    cfg: int = 1
    step: int = 1
    step_warmup: int = 3
    step_reuse: Literal["shared", "own"] = "shared"
    step_warmup_split: bool = True
    patch_options: PatchSection = field(default_factory=PatchSection)
    clip_mode: Literal["exact", "dual_scope"] = "exact"
    groupnorm: Literal["exact", "local"] = "exact"
    dual_scope: DualScopeSection = field(default_factory=DualScopeSection)
    launcher: Literal["ray", "local"] = "ray"
    threads_per_worker: int = 0

    @property
    def world_size(self) -> int:
        """How many workers the job runs on: clip x patch x cfg x step."""
        return self.clip * self.patch * self.cfg * self.step

    def mesh(self) -> dict[str, int]:
        """The size of each axis, outermost first (the order of ``parallel.mesh.AXES``)."""
        return {"step": self.step, "cfg": self.cfg, "clip": self.clip, "patch": self.patch}


@dataclass
class RayConfig:
    """The Ray cluster for multi-worker renders.

    ``address``: ``null`` (or ``local``) starts a private local Ray instance for this render, whatever
    an earlier ``ray start`` left behind; ``auto`` or ``ray://host:10001`` / ``host:6379`` joins a
    running cluster, and an address that does not answer within ``connect_timeout_s`` fails at once.
    ``placement``: the placement group strategy (``PACK`` keeps a clip group on as few nodes as
    possible). ``gpus_per_worker``: ``-1`` = 1 when the cluster has GPUs, else 0.
    ``startup_timeout_s``: how long the cluster may take to find room for the workers and start them.
    ``max_restarts``: how many times a render whose worker died or hung re-forms its workers and
    resumes from the newest checkpoint they share (0 = fail at once); with it, and
    ``sampler.checkpoint_every: 0``, checkpoints are written every ``max(1, steps // 10)`` steps.
    ``hang_timeout_s``: a worker that does not answer the driver for this long counts as lost.
    """

    address: str | None = None
    placement: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = -1.0
    startup_timeout_s: float = 300.0
    connect_timeout_s: float = 20.0
    max_restarts: int = 2
    hang_timeout_s: float = 300.0


@dataclass
class OutputConfig:
    """Where the video goes. The suffix picks the format: ``.mp4``, ``.gif``, or none for PNGs.

    ``decode_chunk_frames`` frames are decoded and written at a time, so memory does not grow
    with the video's length. Checkpoints go to ``checkpoint_dir`` (default: ``<path>.ckpt``).
    """

    path: str = "out/video.mp4"
    crf: int = 18
    decode_chunk_frames: int = 8
    checkpoint_dir: str | None = None


@dataclass
class SvdSection:
    """Stable Video Diffusion's conditioning (``model.family: svd``, docs/svd.md); diffusers' defaults.

    ``fps``, ``motion_bucket_id`` and ``noise_aug_strength`` are the UNet's added time ids (it sees
    ``fps - 1``; the image is encoded with ``noise_aug_strength`` of Gaussian noise added). Guidance rises
    linearly over the frames from ``min_guidance_scale`` to ``max_guidance_scale`` (``sampler.guidance_scale``
    is not used). ``image_prior``: fuse TRIP's image noise prior (the ``image:`` keys) into the output too.
    ``decode_halo``: latent frames of context each side of every decoded chunk or clip.
    """

    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    image_prior: bool = False
    decode_halo: int = 4


@dataclass
class LayoutSection:
    """The text-to-layout prior a render starts from (docs/layout.md): SDEdit from the prior's latent of
    each frame (the caption's mean, or an object prior's layout drawn from the seed), noised to the first
    step run.

    ``prior``: ``auto`` uses ``<model>/layout_prior/`` when the model folder has one, the job gives no
    image (``image.path``) and its noise is ``gaussian`` (warped noise and images bring their own motion and
    content); ``off`` (YAML reads a bare ``off`` as false, which means the same) never does; anything else is
    a layout prior folder, used even with warped noise. ``strength``: the share of the sampling steps run
    from the layout start, in (0, 1]. ``noise``: with the job's Gaussian noise, ``warped`` (the default)
    starts from Go-with-the-Flow warped noise that moves with the layout's mean motion (a camera move of
    the opposite velocity), degraded by ``degradation`` in [0, 1], so that a UNet trained on warped noise
    carries the objects along it; ``gaussian`` keeps the job's own noise. A job whose noise is warped keeps
    its own either way.
    """

    prior: str | bool = "auto"
    strength: float = 0.4
    noise: Literal["warped", "gaussian"] = "warped"
    degradation: float = 0.0


@dataclass
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    image: ImageToVideoSpec = field(default_factory=ImageToVideoSpec)
    layout: LayoutSection = field(default_factory=LayoutSection)
    svd: SvdSection = field(default_factory=SvdSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


OUTPUT_FORMATS = {".mp4": "mp4", ".gif": "gif", "": "png"}


def output_format(path: str) -> str:
    """``mp4``, ``gif`` or ``png`` (a folder of frames), from the output path's suffix."""
    return OUTPUT_FORMATS[Path(path).suffix.lower()]


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: job file not found")
    try:
        loaded = OmegaConf.load(path)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); a job file is YAML") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or _first_line(error)
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    except OSError as error:
        if error.errno is None:  # OmegaConf's answer to a bare number or boolean
            raise ConfigError(f"{path}: a job file must be a mapping of sections, not a single value") from None
        raise ConfigError(f"{path}: cannot read the job file ({error.strerror or error})") from None
    except (OmegaConfBaseException, ValueError, TypeError) as error:
        raise ConfigError(f"{path}: not a job file: {_first_line(error)}") from None
    if loaded is None:
        return OmegaConf.create({})
    if not isinstance(loaded, DictConfig):
        kind = "a list" if isinstance(loaded, ListConfig) else "a single value"
        raise ConfigError(f"{path}: a job file must be a mapping of sections, not {kind}")
    return loaded


def _kind(node: Any) -> str:
    if isinstance(node, DictConfig) and not node._is_none():
        return "a mapping"
    if isinstance(node, ListConfig) and not node._is_none():
        return "a list"
    return "a single value"


def _clash(base: Any, layer: Any, prefix: str = "") -> tuple[str, str, str] | None:
    """(key, what ``base`` holds there, what ``layer`` gives) for the first key of ``layer`` whose kind
    (mapping, list, single value) cannot replace a mapping or list of ``base``; None if there is none."""
    if isinstance(base, DictConfig) and not base._is_none() and isinstance(layer, DictConfig) and not layer._is_none():
        for key in layer.keys():
            if key in base:
                name = f"{prefix}.{key}" if prefix else str(key)
                found = _clash(base._get_node(key), layer._get_node(key), name)
                if found:
                    return found
        return None
    if isinstance(base, ListConfig) and not base._is_none() and isinstance(layer, ListConfig) and not layer._is_none():
        element = base._metadata.element_type
        if not dataclasses.is_dataclass(element):
            return None
        prototype = OmegaConf.structured(element)
        for i in range(len(layer)):
            found = _clash(prototype, layer._get_node(i), f"{prefix}[{i}]")
            if found:
                return found
        return None
    if layer is None or (isinstance(layer, Node) and layer._is_none()):
        return None  # null replaces an optional section, and is reported as such for another
    if isinstance(base, (DictConfig, ListConfig)) and not base._is_none() and _kind(base) != _kind(layer):
        return prefix or "?", _kind(base), _kind(layer)
    return None


def _merge_layer(base: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except (OmegaConfBaseException, TypeError) as error:
        # OmegaConf raises a bare TypeError, naming no key, when a list meets a mapping
        clash = _clash(base, layer)
        key = getattr(error, "full_key", None) or ""
        if clash and (not key or clash[0].endswith(key)):
            key = clash[0]  # a list's items merge into a fresh copy, whose keys lack the list's own
        if isinstance(error, OmegaConfBaseException):
            message = _first_line(error)
        elif clash:
            message = f"{clash[2]} cannot replace {clash[1]} here"
            if clash[1] == "a list" and source.startswith("command line"):
                message += f" (a list is given whole: {clash[0]}=[...]; one item cannot be set on its own)"
        else:
            raise
        raise ConfigError(f"{source}: {key or '?'}: {message}") from None


def _parse_override(item: str) -> DictConfig:
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"command line: override {item!r} must look like section.key=value")
    try:
        return OmegaConf.from_dotlist([item])
    except OmegaConfBaseException as error:
        raise ConfigError(f"command line: override {item!r}: {_first_line(error)}") from None


def _leaf_keys(config: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(config, DictConfig):
        for key in config.keys():
            name = f"{prefix}.{key}" if prefix else str(key)
            keys.add(name)
            keys |= _leaf_keys(config._get_node(key), name)
    return keys


def _within(key: str, section: str) -> bool:
    return key == section or key.startswith((section + ".", section + "["))


@dataclass
class LoadedJob:
    """A validated job and where each of its keys came from (for error messages)."""

    config: Any
    source: str
    file_keys: set[str]
    override_keys: set[str]
    replaced: dict[str, Any] = field(default_factory=dict)
    """What the file gave each single-valued key that the command line then set (the file's value)."""

    def origin(self, key: str) -> str:
        """``command line``, the file, or ``defaults``: the layer that set ``key`` or a section above it
        (``suites[2].name`` belongs to ``suites``), the most specific one winning (an override of
        ``sampler.steps`` does not claim the file's ``sampler.guidance_scale``)."""

        def depth(keys: set[str]) -> int:
            return max((len(k) for k in keys if _within(key, k)), default=-1)

        override, file = depth(self.override_keys), depth(self.file_keys)
        if override >= 0 and override >= file:
            return "command line"
        if file >= 0:
            return self.source
        return "defaults"

    def fail_on(self, problems: list[tuple[str, str]]) -> None:
        """Raise one :class:`ConfigError` for the first (key, what is wrong), naming where the key came from."""
        if problems:
            key, message = problems[0]
            raise ConfigError(f"{self.origin(key)}: {key}: {message}")


def load_layers(schema: type, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> LoadedJob:
    """Merge ``schema``'s defaults, a YAML file (if any) and ``key=value`` overrides into a typed object.

    Unknown keys, wrong types and missing required values are one :class:`ConfigError` naming the key;
    the caller validates the values (:meth:`LoadedJob.fail_on`).
    """
    merged: DictConfig = OmegaConf.structured(schema)
    source = str(path) if path is not None else "defaults"
    file_keys: set[str] = set()
    if path is not None:
        file_layer = _read_yaml(Path(path))
        file_keys = _leaf_keys(file_layer)
        merged = _merge_layer(merged, file_layer, source)
    override_keys: set[str] = set()
    replaced: dict[str, Any] = {}
    for item in overrides:
        layer = _parse_override(item)
        keys = _leaf_keys(layer)
        for key in sorted(keys & file_keys - override_keys):
            earlier = OmegaConf.select(merged, key, default=None)
            if not isinstance(earlier, (DictConfig, ListConfig)):
                replaced[key] = earlier
        override_keys |= keys
        merged = _merge_layer(merged, layer, f"command line ({item})")
    try:
        config = OmegaConf.to_object(merged)
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", "?")
        raise ConfigError(f"{source}: {key}: a value is required (set it in the file or as {key}=...)") from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(f"{source}: {key}: {_first_line(error)}") from None
    return LoadedJob(config, source, file_keys, override_keys, replaced)


def load_job(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> LoadedJob:
    """Merge defaults, the job YAML (if any) and overrides; validate; return the typed job."""
    loaded = load_layers(JobConfig, path, overrides)
    prompts = loaded.config.prompts
    prompts.text = prompts.text or ""  # null is the empty prompt
    prompts.negative = prompts.negative or ""
    validate_job(loaded)
    resolve_schedule(loaded.config)
    return loaded


def _problems(job: JobConfig) -> list[tuple[str, str]]:
    """(key, what is wrong) for every impossible value, in schema order."""
    out: list[tuple[str, str]] = non_finite_numbers(job)
    if out:  # every comparison below is false for nan: report these alone
        return out
    v, s, o, p = job.video, job.sampler, job.output, job.prompts
    for key, value in (("video.width", v.width), ("video.height", v.height)):
        if value <= 0 or value % 8:
            out.append((key, f"{value} is not a positive multiple of 8 (the VAE downsamples by 8)"))
    if v.num_frames < 1:
        out.append(("video.num_frames", f"{v.num_frames}: a video needs at least one frame"))
    if v.fps < 1:
        out.append(("video.fps", f"{v.fps}: frames per second must be >= 1"))
    if v.condition_fps is not None and v.condition_fps < 1:
        out.append(("video.condition_fps", f"{v.condition_fps}: frames per second must be >= 1 (null = video.fps)"))
    if s.steps < 1:
        out.append(("sampler.steps", f"{s.steps}: at least one denoising step is needed"))
    if s.guidance_scale < 0:
        out.append(("sampler.guidance_scale", f"{s.guidance_scale}: must be >= 0 (1 disables guidance)"))
    if not 0.0 <= s.eta <= 1.0:
        out.append(("sampler.eta", f"{s.eta}: must be within [0, 1]"))
    if s.eta > 0 and s.name not in ("ddim", "auto"):
        out.append(("sampler.eta", f"eta applies to ddim only, not to {s.name}"))
    if s.checkpoint_every < 0:
        out.append(("sampler.checkpoint_every", f"{s.checkpoint_every}: must be >= 0 (0 = no checkpoints)"))
    if job.noise.seed < -1:
        out.append(("noise.seed", f"{job.noise.seed}: a seed is >= 0, or -1 to draw one"))
    out.extend(_parallel_problems(job))
    out.extend((f"image.{key}", message) for key, message in i2v_problems(job.image))
    out.extend(_layout_problems(job))
    out.extend(_svd_problems(job.svd))
    if job.noise.kind == "warped":
        try:
            validate_warped_spec(job.noise.warped)
        except ConfigError as error:
            out.append((error.key or "noise.warped", error.problem or str(error)))
    if not o.path.strip():
        out.append(("output.path", "is empty; give a .mp4 or .gif file, or a folder for PNG frames"))
    elif Path(o.path).name in ("", ".", ".."):
        out.append(("output.path", f"{o.path!r} names no file or folder of its own"))
    elif Path(o.path).suffix.lower() not in OUTPUT_FORMATS:
        out.append(("output.path", f"{o.path}: use .mp4, .gif, or no suffix for a folder of PNG frames"))
    if not 0 <= o.crf <= 51:
        out.append(("output.crf", f"{o.crf}: libx264 CRF is within [0, 51]"))
    if o.decode_chunk_frames < 1:
        out.append(("output.decode_chunk_frames", f"{o.decode_chunk_frames}: must be >= 1"))
    if p.text and p.schedule:
        out.append(("prompts.schedule", "give either prompts.text or prompts.schedule, not both"))
    if not p.text and not p.schedule and job.model.family != "svd":
        out.append(
            (
                "prompts.text",
                "a prompt is required (prompts.text or prompts.schedule); Stable Video Diffusion reads none: "
                "set model.family: svd",
            )
        )
    if p.blend_frames < 0:
        out.append(("prompts.blend_frames", f"{p.blend_frames}: must be >= 0"))
    if p.schedule and v.num_frames >= 1:
        out.extend(_schedule_problems(p, v.num_frames))
    return out


LAYOUT_SETTINGS = ("auto", "off")


def _layout_problems(job: JobConfig) -> list[tuple[str, str]]:
    prior, strength, out = job.layout.prior, job.layout.strength, []
    if prior is True or (isinstance(prior, str) and not prior.strip()):
        out.append(("layout.prior", f"{prior!r}: use auto, off, or the folder of a layout prior"))
    elif isinstance(prior, str) and prior not in LAYOUT_SETTINGS and job.image.path is not None:
        out.append(
            (
                "layout.prior",
                f"{prior} with image.path {job.image.path}: an image gives the video its content, which a layout "
                "start would fight; remove one of the two (layout.prior: off renders from the image)",
            )
        )
    if not 0 < strength <= 1:
        out.append(("layout.strength", f"{strength}: the share of the steps run from the layout is within (0, 1]"))
    if not 0.0 <= job.layout.degradation <= 1.0:
        out.append(("layout.degradation", f"{job.layout.degradation}: a degradation is within [0, 1]"))
    return out


def layout_folder(job: JobConfig) -> Path | None:
    """The layout prior folder the render starts from, or None (docs/layout.md).

    ``auto``: ``<model>/layout_prior/`` when the model folder has one, the job gives no image and its noise
    is Gaussian; ``off`` (or false): None; else the given folder, which must hold a layout prior
    (:class:`ConfigError` naming ``layout.prior`` otherwise). Reads the file system, loads no weights.
    """
    from videogen.models.layout_prior import CONFIG_NAME, WEIGHTS_NAME, find_layout_prior

    prior = job.layout.prior
    if prior is False or prior == "off":
        return None
    if prior == "auto":
        if job.image.path is not None or job.noise.kind != "gaussian":
            return None
        return find_layout_prior(job.model.path)
    folder = Path(str(prior)).expanduser()
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise ConfigError.of(
            "layout.prior",
            f"{folder}: no layout prior there (missing {' and '.join(missing)}); use auto, off, "
            "or a folder written by the layout stage of videogen train",
        )
    return folder


def _svd_problems(s: SvdSection) -> list[tuple[str, str]]:
    out = []
    if s.fps < 1:
        out.append(("svd.fps", f"{s.fps}: frames per second must be >= 1"))
    for key in ("motion_bucket_id", "noise_aug_strength", "min_guidance_scale", "max_guidance_scale", "decode_halo"):
        if getattr(s, key) < 0:
            out.append((f"svd.{key}", f"{getattr(s, key)}: must be >= 0"))
    return out


def _schedule_problems(p: PromptsConfig, num_frames: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i, seg in enumerate(p.schedule):
        for name in ("start", "end"):
            value = getattr(seg, name)
            if not (name == "end" and value is None) and isinstance(_boundary_frame(value, num_frames), str):
                out.append((f"prompts.schedule[{i}].{name}", _boundary_frame(value, num_frames)))
    if out:
        return out
    spans = schedule_spans(p.schedule, num_frames)
    for i, (seg, (start, end)) in enumerate(zip(p.schedule, spans, strict=True)):
        if not 0 <= start < end <= num_frames:
            shown = f"[{_shown(seg.start, start)}, {_shown(seg.end, end)})"
            out.append((f"prompts.schedule[{i}]", f"frames {shown} are not within the video's {num_frames} frames"))
    gaps = _schedule_gaps(spans, num_frames)
    out.extend(gaps)
    if not out and p.blend_frames > 0:
        out.extend(_blend_problems(spans, num_frames, p.blend_frames))
    return out


def _boundary_frame(value: Any, num_frames: int) -> int | str:
    """The frame a schedule boundary stands for, or what is wrong with it (a string)."""
    how = "give a frame (a whole number such as 64), a share of the video (0.5) or a percentage ('50%')"
    if isinstance(value, bool):
        return f"{value!r}: {how}"
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            percent = float(text[:-1]) if text.endswith("%") else None
        except ValueError:
            percent = None
        if percent is None or not math.isfinite(percent):
            return f"{value!r}: {how}"
        if not 0 <= percent <= 100:
            return f"{value!r}: a percentage of the video is within [0%, 100%]"
        share = percent / 100
    elif isinstance(value, float):
        if not 0 <= value <= 1:
            whole = f"; the frame {int(value)} is written without a decimal point" if value == int(value) else ""
            return f"{value}: a share of the video is within [0, 1]{whole}"
        share = value
    else:
        return f"{value!r}: {how}"
    return math.floor(share * num_frames + 0.5)


def _shown(value: Any, frame: int) -> str:
    """A boundary as the user wrote it, with the frame it resolved to when that was a share."""
    return str(frame) if value is None or isinstance(value, int) else f"{value} = frame {frame}"


def schedule_spans(schedule: list[PromptSegment], num_frames: int) -> list[tuple[int, int]]:
    """Each segment's frames ``(start, end)`` (end exclusive) in a video of ``num_frames`` frames.

    Integers are frames; a float within [0, 1] or a percentage string is that share of the video,
    rounded to the nearest frame (halves up), and ``end: null`` is the video's end. A boundary that is
    none of these raises :class:`ConfigError` naming it (a validated job has none).
    """
    spans = []
    for i, seg in enumerate(schedule):
        frames = []
        for name, value in (("start", seg.start), ("end", num_frames if seg.end is None else seg.end)):
            frame = _boundary_frame(value, num_frames)
            if isinstance(frame, str):
                raise ConfigError(f"prompts.schedule[{i}].{name}: {frame}")
            frames.append(frame)
        spans.append((frames[0], frames[1]))
    return spans


def resolve_schedule(job: JobConfig) -> None:
    """Replace the prompt schedule's shares of the video by the frames they stand for (in place), so the
    job's record (``.job.yaml``) says which frames each prompt got; ``end: null`` stays null."""
    spans = schedule_spans(job.prompts.schedule, job.video.num_frames)
    for seg, (start, end) in zip(job.prompts.schedule, spans, strict=True):
        seg.start = start
        if seg.end is not None:
            seg.end = end


def non_finite_numbers(config: Any, key: str = "") -> list[tuple[str, str]]:
    """(key, what is wrong) for every nan or infinite number anywhere in ``config`` (dataclasses, lists, dicts)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return [
            problem
            for f in dataclasses.fields(config)
            for problem in non_finite_numbers(getattr(config, f.name), f"{key}.{f.name}" if key else f.name)
        ]
    if isinstance(config, (list, tuple)):
        return [problem for i, item in enumerate(config) for problem in non_finite_numbers(item, f"{key}[{i}]")]
    if isinstance(config, dict):
        return [problem for k, item in config.items() for problem in non_finite_numbers(item, f"{key}.{k}")]
    if isinstance(config, float) and not math.isfinite(config):
        return [(key, f"{config} is not a finite number")]
    return []


def blend_split(blend_frames: int) -> tuple[int, int]:
    """How many of the ``blend_frames`` blended frames lie before and after a schedule boundary."""
    before = blend_frames // 2
    return before, blend_frames - before


def _blend_overflow(spans: list[tuple[int, int]], blend_frames: int) -> tuple[int, int, int] | None:
    """(segment index, frames it gives to blends, its frames) for the first segment shorter than the blended
    frames it gives to its boundaries (its own prompt would vanish and two boundaries' blends would overlap)."""
    before, after = blend_split(blend_frames)
    ordered = sorted(range(len(spans)), key=lambda i: spans[i][0])
    for position, index in enumerate(ordered):
        length = spans[index][1] - spans[index][0]
        given = (after if position > 0 else 0) + (before if position < len(ordered) - 1 else 0)
        if given > length:
            return index, given, length
    return None


def _blend_problems(spans: list[tuple[int, int]], num_frames: int, blend_frames: int) -> list[tuple[str, str]]:
    overflow = _blend_overflow(spans, blend_frames)
    if overflow is None:
        return []
    index, given, length = overflow
    widest = range(min(blend_frames - 1, num_frames), 0, -1)
    largest = next((b for b in widest if not _blend_overflow(spans, b)), 0)
    return [
        (
            "prompts.blend_frames",
            f"{blend_frames} blended frames per boundary take {given} frames of prompts.schedule[{index}], "
            f"which has {length}; use at most {largest}, or longer segments",
        )
    ]


def _parallel_problems(job: JobConfig) -> list[tuple[str, str]]:
    par, out = job.parallel, []
    if par.clip < 1:
        out.append(("parallel.clip", f"{par.clip}: at least one worker"))
    elif par.clip > job.video.num_frames:
        out.append(("parallel.clip", f"{par.clip} workers cannot split {job.video.num_frames} frames"))
    if par.clip_mode == "exact" and par.groupnorm != "exact":
        out.append(("parallel.groupnorm", "local statistics only go with parallel.clip_mode: dual_scope"))
    ds = par.dual_scope
    shortest = job.video.num_frames // par.clip if par.clip >= 1 else 0
    if ds.local_radius < 1:
        out.append(("parallel.dual_scope.local_radius", f"{ds.local_radius}: must be >= 1"))
    elif par.clip_mode == "dual_scope" and par.clip > 1 and 1 <= shortest < ds.local_radius:
        out.append(
            (
                "parallel.dual_scope.local_radius",
                f"{ds.local_radius} is more than the shortest clip ({shortest} of {job.video.num_frames} frames "
                f"over {par.clip} workers): each worker exchanges local_radius frames with its neighbours; "
                f"use at most {shortest}, or fewer workers",
            )
        )
    if ds.global_frames < 1:
        out.append(("parallel.dual_scope.global_frames", f"{ds.global_frames}: must be >= 1"))
    if par.patch < 1 or par.step < 1 or par.cfg not in (1, 2):
        out.append(("parallel", "patch and step must be >= 1, cfg 1 or 2"))
    if par.cfg == 2 and job.sampler.guidance_scale <= 1:
        out.append(("parallel.cfg", "splitting guidance branches needs sampler.guidance_scale > 1"))
    if par.step > 1 and par.step_warmup < 1:
        out.append(("parallel.step_warmup", f"{par.step_warmup}: must be >= 1"))
    portion = par.patch_options.portion
    if portion != "all" and not _is_fraction(portion):
        out.append(("parallel.patch_options.portion", f"{portion!r}: 'all' or a number in (0, 1]"))
    if par.threads_per_worker < 0:
        out.append(("parallel.threads_per_worker", f"{par.threads_per_worker}: must be >= 0 (0 = default)"))
    if par.clip > 1 and Path(job.output.path).suffix.lower() == ".gif":
        out.append(("output.path", "GIF cannot be joined from worker segments; use .mp4 or a PNG folder"))
    out.extend(_ray_problems(job))
    return out


def _ray_problems(job: JobConfig) -> list[tuple[str, str]]:
    ray, out = job.ray, []
    workers = job.parallel.world_size
    if ray.address and ray.address.split("://", 1)[0] in ("http", "https"):
        out.append(
            (
                "ray.address",
                f"{ray.address} is a dashboard address (for `ray job submit`); give the cluster's host:6379, "
                "ray://host:10001 or auto",
            )
        )
    if ray.cpus_per_worker < 0:
        out.append(("ray.cpus_per_worker", f"{ray.cpus_per_worker}: must be >= 0"))
    gpus = ray.gpus_per_worker
    if gpus < 0 and gpus != -1:
        out.append(("ray.gpus_per_worker", f"{gpus}: must be >= 0, or -1 (1 when the cluster has GPUs)"))
    elif gpus > 1 and gpus != int(gpus):
        out.append(("ray.gpus_per_worker", f"{gpus}: Ray shares GPUs in fractions below 1 only; use whole GPUs"))
    elif 0 < gpus < 1 and workers > 1:
        out.append(
            (
                "ray.gpus_per_worker",
                f"{gpus}: {workers} workers would share a GPU, which NCCL refuses; use 1, or 0 for CPU workers",
            )
        )
    elif ray.cpus_per_worker == 0 and gpus == 0:
        out.append(("ray.cpus_per_worker", "0 with ray.gpus_per_worker: 0 asks for nothing to place a worker on"))
    for key in ("startup_timeout_s", "connect_timeout_s", "hang_timeout_s"):
        if getattr(ray, key) <= 0:
            out.append((f"ray.{key}", f"{getattr(ray, key)}: must be > 0 seconds"))
    if ray.max_restarts < 0:
        out.append(("ray.max_restarts", f"{ray.max_restarts}: must be >= 0 (0 = fail when a worker is lost)"))
    return out


def _is_fraction(text: str) -> bool:
    try:
        return 0 < float(text) <= 1
    except ValueError:
        return False


def _schedule_gaps(spans: list[tuple[int, int]], num_frames: int) -> list[tuple[str, str]]:
    covered = [False] * num_frames
    for start, end in spans:
        for f in range(max(start, 0), min(end, num_frames)):
            if covered[f]:
                return [("prompts.schedule", f"frame {f} is covered by more than one prompt")]
            covered[f] = True
    if not all(covered):
        first = covered.index(False)
        return [("prompts.schedule", f"frame {first} has no prompt; the schedule must cover every frame")]
    return []


def job_problems(job: JobConfig) -> list[tuple[str, str]]:
    """(key, what is wrong) for every impossible value of a typed render job, in schema order."""
    return _problems(job)


MODEL_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "motion_adapter")


def _stale_components(loaded: LoadedJob) -> list[tuple[str, str]]:
    """A command line that moves ``model.path`` away from the job file's folder, while components the file
    took from a folder of their own (``model.unet``, ...) are left where they were: one problem naming them.

    Nothing is guessed: a component folder may be a deliberate mix (VideoCrafter2's UNet beside
    zeroscope's VAE) or a leftover of the old model, and only the user knows which.
    """
    if "model.path" not in loaded.replaced:
        return []
    model = loaded.config.model
    old, new = loaded.replaced["model.path"], model.path
    if old == new:
        return []
    stale = [
        name
        for name in MODEL_COMPONENTS
        if getattr(model, name) is not None and loaded.origin(f"model.{name}") != "command line"
    ]
    if not stale:
        return []

    def both(items: list[str]) -> str:
        return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"

    keys = both([f"model.{name}" for name in stale])
    folders = both([str(getattr(model, name)) for name in stale])
    clear = " ".join(f"model.{name}=null" for name in stale)
    them, points = ("it", "points") if len(stale) == 1 else ("them", "point")
    return [
        (
            "model.path",
            f"{new} replaces {old}, but {keys} still {points} at {folders} (set in {loaded.source}); add {clear} "
            f"to take {them} from {new}, or set {them} again on the command line to keep {them}",
        )
    ]


def validate_job(loaded: LoadedJob) -> None:
    loaded.fail_on(_stale_components(loaded) + _problems(loaded.config))


def resolve_seed(job: JobConfig) -> int:
    """The job's seed, drawing (and recording in ``job``) a fresh one for ``-1``."""
    if job.noise.seed == -1:
        job.noise.seed = secrets.randbelow(2**31)
    return job.noise.seed


def to_yaml(job: JobConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(job))
