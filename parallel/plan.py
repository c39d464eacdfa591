"""What a render will do, worked out before it runs: the mesh, each worker's share, the bytes each axis
moves, and every error the render would stop with.

Nothing here loads weights or starts a worker. The UNet is built from its ``config.json`` on the
meta device and called once at each worker's share of the video (no memory, no compute) the way the
render calls it: through the model family's own call (:meth:`~videogen.models.family.ModelFamily.unet_call`)
on conditioning of the family's shapes (:meth:`~videogen.models.family.ModelFamily.meta_condition`).
That records the input shape of every layer that communicates; the bytes follow from those shapes by
the same rules the collectives record them with (:class:`parallel.comm.CommStats`). Which rules apply
is decided by the installer the family names for each axis (``ModelFamily.parallelize``):

- ``clip`` with :func:`parallel.clip.apply_clip_parallel` (per UNet call, ``n`` clip workers, ``B`` the
  UNet batch, activations of ``e`` bytes): ``conv_halo``: the family's ``temporal_halo`` frames of
  ``B x C x h x w`` from each neighbour per temporal conv layer (none without temporal convs);
  ``groupnorm`` (exact statistics): ``(n-1) x 3 x B x groups`` float64 per temporal GroupNorm;
  ``attn_kv`` (exact): ``(n-1)`` clips, padded to the longest, of K and V (``2 x B h w x inner``) per
  frame; ``attn_scope`` (dual-scope): each neighbour's ``local_radius`` edge frames plus every other
  clip's global frames of K and V;
- ``clip`` with :func:`parallel.svd.apply_svd_clip_parallel` (Stable Video Diffusion):
  :func:`parallel.svd.clip_bytes_per_call` per temporal ResNet and temporal self-attention;
- ``patch``: :func:`parallel.patch.traffic_per_step` per UNet call (synchronous for the first
  ``patch_options.warmup_steps`` calls), and with clip workers too, ``groupnorm_temporal``: the
  band statistics of every temporal GroupNorm the clip installer combines, ``(p-1) x 3 x B x groups``
  float64;
- ``cfg``: the other branch's output for this worker's band and frames, once per step;
- ``step``: per ParaStep round (and per split warm-up step), the other step workers' model
  outputs, one latent of this worker's frames each;
- ``clip`` ``decode_halo``: a family with a temporal decoder (``ModelFamily.decode_halo``) has every
  decoding clip worker take that many latent frames from each neighbouring clip once, after the loop
  (:func:`parallel.svd_decode.context_bytes`).

Guidance is on for every worker when the family's guidance scale exceeds 1 on any frame of the video
(per-frame scales included), as the render decides it. Bytes received per worker over the denoising
loop and the decode are predicted; setup exchanges (agreeing on clips, sharing the image latent,
gathering the reports) are not part of it. An axis whose installer has no rule here is not guessed:
:attr:`RenderPlan.unpredicted` says so.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from parallel.clip import ClipParallelConfig, _conv_stages
from parallel.dual_scope import global_frame_indices
from parallel.job_plan import clip_config, job_clips, patch_config, step_config
from parallel.mesh import ParallelPlan
from parallel.patch import PatchSplit, split_rows, traffic_per_step
from parallel.patch_vae import decode_method, frame_share
from parallel.step import check_sampler, step_schedule
from parallel.svd_decode import context_bytes
from videogen.config import JobConfig
from videogen.errors import ConfigError, ModelLoadError, VideogenError
from videogen.models.family import LatentGeometry, ModelFamily
from videogen.models.layers import SpatialModules
from videogen.models.loader import DTYPES, component_config, component_dir, model_components, model_family
from videogen.sampling import Denoiser

SETUP_KINDS = frozenset({"setup", "resume", "image_latent", "report"})
"""Exchanges made once per render, outside the denoising loop."""


@dataclass
class WorkerShare:
    """One worker's place and share: mesh coordinates, frames, latent rows (or columns), decoded frames,
    and its UNet calls as ``(batch, synchronous)`` pairs in call order."""

    rank: int
    coords: dict[str, int]
    frames: tuple[int, int]
    rows: tuple[int, int]
    decodes: tuple[int, int] | None
    calls: list[tuple[int, bool]] = field(default_factory=list)


@dataclass
class RenderPlan:
    """The plan of a render. ``traffic[rank][axis][kind]`` is the bytes that worker receives over the
    denoising loop and the decode; ``problems`` the errors the render would stop with (empty: it would
    start); ``unpredicted`` the traffic the plan cannot predict exactly and leaves out of ``traffic``."""

    mesh: dict[str, int]
    world_size: int
    launcher: str
    steps: int
    latent: tuple[int, int, int, int] | None = None  # (channels, frames, height, width)
    split: str | None = None  # "h" or "w" with patch workers
    workers: list[WorkerShare] = field(default_factory=list)
    traffic: list[dict[str, dict[str, float]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unpredicted: list[str] = field(default_factory=list)  # traffic left out of ``traffic``, and why

    def mean_traffic(self) -> dict[str, dict[str, float]]:
        """Bytes received per worker over the loop and the decode, by axis and kind, averaged over the workers."""
        out: dict[str, dict[str, float]] = {}
        for worker in self.traffic:
            for axis, kinds in worker.items():
                for kind, value in kinds.items():
                    into = out.setdefault(axis, {})
                    into[kind] = into.get(kind, 0.0) + value / len(self.traffic)
        return out

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "mean_traffic": self.mean_traffic()}, indent=1)


def measured_traffic(traffic: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """A worker's recorded ``{axis: {kind: Traffic fields}}`` as bytes received by axis and kind, setup left out."""
    return {
        axis: {kind: t["bytes_received"] for kind, t in kinds.items() if kind not in SETUP_KINDS and t["calls"]}
        for axis, kinds in traffic.items()
        if any(kind not in SETUP_KINDS and t["calls"] for kind, t in kinds.items())
    }


def _collect(errors: list[VideogenError], check: Callable[[], object], prefix: str = "") -> None:
    try:
        check()
    except VideogenError as error:
        errors.append(type(error)(f"{prefix}{error}") if prefix else error)


def preflight_errors(job: JobConfig, resume: bool = False) -> list[VideogenError]:
    """Every error a render of ``job`` would stop with that can be found before its workers start
    (no weights loaded): the model folders and limits, the frame and row splits, each method's options,
    the inputs and the output location."""
    from videogen.pipeline import check_inputs, check_model_limits, check_output

    errors: list[VideogenError] = []
    for component in model_components(job.model):
        _collect(errors, functools.partial(component_dir, job.model, component))
        if errors:
            break  # one missing folder is enough to say
    if not errors:
        _collect(errors, functools.partial(check_model_limits, job))
        if not errors and job.parallel.patch > 1:
            _collect(errors, functools.partial(_patch_split, job), "parallel.patch: ")
    _collect(errors, functools.partial(job_clips, job), "parallel.clip: ")
    for make in (clip_config, patch_config, step_config):
        _collect(errors, functools.partial(make, job))
    model_failed = any(isinstance(error, ModelLoadError) for error in errors)
    if job.parallel.step > 1 and (job.sampler.name != "auto" or not model_failed):  # auto reads the model
        _collect(errors, functools.partial(check_sampler, job.sampler.name, job.model))
    if job.model.dtype == "fp16" and job.model.device == "cpu":
        errors.append(ConfigError("model.dtype: fp16 is for GPUs; on the CPU use fp32 or bf16"))
    _collect(errors, functools.partial(check_inputs, job))
    _collect(errors, functools.partial(check_output, job, resume))
    return errors


@dataclass
class _Model:
    """What planning reads of the model, from its config files: family, UNet config, latent geometry."""

    family: ModelFamily
    unet_config: dict
    geometry: LatentGeometry
    height: int
    width: int


def _model(job: JobConfig) -> _Model | None:
    """The model as its config files describe it; None for a hub id."""
    unet_config, vae_config = component_config(job.model, "unet"), component_config(job.model, "vae")
    if unet_config is None or vae_config is None:
        return None
    family = model_family(job.model)
    geometry = family.geometry(unet_config, vae_config)
    factor = geometry.spatial_factor
    return _Model(family, unet_config, geometry, job.video.height // factor, job.video.width // factor)


def _patch_split(job: JobConfig) -> PatchSplit | None:
    model = _model(job)
    if model is None:
        return None
    hw = (model.height, model.width)
    return split_rows(hw, job.parallel.patch, model.geometry.levels, job.parallel.patch_options.split)


@dataclass(frozen=True)
class _CallConfig:
    """What a :class:`_FamilyUNet` is built from, with the config values
    :func:`parallel.patch.traffic_per_step` reads of a UNet: the channels of the latents it is called on
    and of its output, and its cross-attention width."""

    model: _Model
    job: JobConfig

    @property
    def in_channels(self) -> int:
        return self.model.geometry.channels

    @property
    def out_channels(self) -> int:
        return int(self.model.unet_config["out_channels"])

    @property
    def cross_attention_dim(self) -> int:
        return self.model.unet_config["cross_attention_dim"]


class _FamilyUNet(nn.Module):
    """The family's UNet on the meta device, called as :func:`parallel.patch.traffic_per_step` calls a UNet,
    ``(latents (B, C, F, h, w), timestep, context)``, and run the way the render runs it: a
    :class:`~videogen.sampling.Denoiser` with the family's call on the family's meta conditioning, one
    guidance branch for ``B = 1`` and both for ``B = 2`` (the ``context`` argument is not used)."""

    def __init__(self, config: _CallConfig):
        super().__init__()
        self.config = config
        self.unet = config.model.family.meta_unet(config.model.unet_config)

    @classmethod
    def from_config(cls, config: _CallConfig) -> _FamilyUNet:
        return cls(config)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: object = None) -> torch.Tensor:
        family, job, batch = self.config.model.family, self.config.job, latents.shape[0]
        if batch not in (1, 2):
            raise ValueError(f"a UNet call is one or two guidance branches, not a batch of {batch}")
        text = family.meta_condition(self.unet, job, tuple(latents.shape[-2:]))
        inputs = functools.partial(family.unet_inputs, self.unet, job=job)
        call = family.unet_call(self.unet, job, text)
        denoiser = Denoiser(self.unet, text, 2.0 if batch == 2 else 1.0, None, inputs, call)
        with torch.no_grad():
            return denoiser.branch(latents, timestep, "cond") if batch == 1 else denoiser(latents[:1], timestep)


def _layer_inputs(
    probe: _FamilyUNet, layers: list[tuple[str, nn.Module]], frames: int, hw: tuple[int, int]
) -> dict[str, tuple[int, ...]]:
    """The input shape of each of ``layers`` (modules of ``probe.unet``) in one call on one guidance branch
    of ``frames`` latent frames of ``hw``."""
    seen: dict[str, tuple[int, ...]] = {}

    def record(path: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.setdefault(path, tuple(hidden.shape))

    hooks = [m.register_forward_pre_hook(functools.partial(record, p), with_kwargs=True) for p, m in layers]
    try:
        probe(torch.empty(1, probe.config.in_channels, frames, *hw, device="meta"), torch.tensor(500))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@dataclass
class _ClipLayers:
    """What a clip installer moves in one UNet call: ``call_bytes(clips, rank, batch)`` by kind, and the groups
    of the temporal GroupNorms whose statistics it combines itself (``norms``; with patch workers their band
    statistics travel as ``groupnorm_temporal`` instead of as patch GroupNorms)."""

    call_bytes: Callable[[list[range], int, int], dict[str, float]]
    norms: list[int]


@dataclass
class _TemporalShapes:
    """Per temporal conv layer ``(C, h, w, [groups of its four norms])``; per transformer its norm's groups
    and ``(C, h, w)``; per temporal attention ``(h * w, inner, scope width)``: recorded at batch 1. The scope
    width is what dual-scope mode sends per token and frame: keys and values (``2 * inner``), or the
    normalised tokens when the attention adds frame positions itself."""

    convs: list[tuple[int, int, int, list[int]]]
    transformers: list[tuple[int, int, int, int]]
    attentions: list[tuple[int, int, int]]


def _temporal_shapes(probe: _FamilyUNet, frames: int, hw: tuple[int, int]) -> _TemporalShapes:
    modules = probe.config.model.family.temporal_modules(probe.unet)
    frames = min(frames, modules.frame_limit or frames)  # the widths do not depend on the frame count
    seen = _layer_inputs(probe, [*modules.convs, *modules.transformers, *modules.attentions()], frames, hw)
    convs = []
    for path, layer in modules.convs:
        _, c, h, w = seen[path]  # [frames, C, h, w] at batch 1
        convs.append((c, h, w, [stage[0].num_groups for stage in _conv_stages(layer)]))
    transformers = []
    for path, transformer in modules.transformers:
        _, c, h, w = seen[path]
        transformers.append((c, h, w, transformer.norm.num_groups))
    attentions = []
    for path, attn in modules.attentions():
        tokens, _, _ = seen[path]  # [h * w, frames, C] at batch 1
        positioned = modules.position_of(path) is not None
        width = attn.to_k.in_features if positioned else 2 * attn.to_k.out_features
        attentions.append((tokens, attn.to_k.out_features, width))
    return _TemporalShapes(convs, transformers, attentions)


def _norm_bytes(batch: int, groups: int, peers: int) -> float:
    return peers * 3 * batch * groups * 8.0


def _clip_call_bytes(
    shapes: _TemporalShapes,
    job: JobConfig,
    config: ClipParallelConfig,
    clips: list[range],
    rank: int,
    batch: int,
    element: int,
) -> dict[str, float]:
    """Bytes clip worker ``rank`` receives in one UNet call of batch ``batch`` under clip config ``config``."""
    n = len(clips)
    neighbours = sum(1 for peer in (rank - 1, rank + 1) if 0 <= peer < n)
    out = {"conv_halo": 0.0}
    for c, h, w, groups in shapes.convs:
        out["conv_halo"] += neighbours * config.conv_halo * batch * c * h * w * element
        if config.exact_groupnorm:
            out["groupnorm"] = out.get("groupnorm", 0.0) + sum(_norm_bytes(batch, g, n - 1) for g in groups)
    if config.exact_groupnorm:
        for _, _, _, g in shapes.transformers:
            out["groupnorm"] = out.get("groupnorm", 0.0) + _norm_bytes(batch, g, n - 1)
    if config.mode == "exact":
        longest = max(len(c) for c in clips)
        out["attn_kv"] = sum(
            (n - 1) * 2 * batch * tokens * inner * longest * element for tokens, inner, _ in shapes.attentions
        )
    else:
        ds = config.dual_scope
        glob = global_frame_indices(job.video.num_frames, ds.global_frames)
        counts = [sum(1 for g in glob if g in clip) for clip in clips]
        frames_in = sum(
            (ds.local_radius if abs(peer - rank) == 1 else 0) + counts[peer] for peer in range(n) if peer != rank
        )
        out["attn_scope"] = sum(batch * tokens * width * frames_in * element for tokens, _, width in shapes.attentions)
    return out


def _unet3d_clip_layers(
    probe: _FamilyUNet, job: JobConfig, frames: int, hw: tuple[int, int], element: int
) -> _ClipLayers:
    """:func:`parallel.clip.apply_clip_parallel`: temporal conv layers and transformers (UNet3D's kinds)."""
    shapes = _temporal_shapes(probe, frames, hw)
    config = clip_config(job)
    norms = [g for *_, groups in shapes.convs for g in groups]
    if config.exact_groupnorm:
        norms += [g for *_, g in shapes.transformers]
    return _ClipLayers(functools.partial(_clip_call_bytes, shapes, job, config, element=element), norms)


def _svd_clip_layers(probe: _FamilyUNet, job: JobConfig, frames: int, hw: tuple[int, int], element: int) -> _ClipLayers:
    """:func:`parallel.svd.apply_svd_clip_parallel`: temporal ResNets and temporal self-attentions (exact:
    :func:`parallel.svd.clip_bytes_per_call`; dual-scope: its ``attn_kv`` replaced by
    :func:`parallel.svd.scope_bytes_per_call`, and no ``groupnorm`` with clip-local statistics)."""
    from parallel.svd import clip_bytes_per_call, scope_bytes_per_call

    modules = probe.config.model.family.temporal_modules(probe.unet)
    attentions = [(path, attn) for path, attn in modules.attentions() if not attn.is_cross_attention]
    seen = _layer_inputs(probe, [*modules.convs, *attentions], frames, hw)
    resnets = []
    for path, block in modules.convs:
        _, c, _, h, w = seen[path]  # [1, C, frames, h, w]
        resnets.append((c, h * w, [block.norm1.num_groups, block.norm2.num_groups]))
    tokens = [(seen[path][0], attn.to_k.out_features) for path, attn in attentions]  # [h * w, frames, C]
    norms = [g for *_, groups in resnets for g in groups]
    config = clip_config(job)

    def call_bytes(clips: list[range], rank: int, batch: int) -> dict[str, float]:
        out = clip_bytes_per_call(resnets, tokens, clips, rank, batch, element)
        if not config.exact_groupnorm:
            out.pop("groupnorm", None)
        if config.mode == "dual_scope":
            out.pop("attn_kv", None)
            out["attn_scope"] = scope_bytes_per_call(tokens, clips, rank, batch, element, config.dual_scope)
        return {kind: value for kind, value in out.items() if value}

    return _ClipLayers(call_bytes, norms)


CLIP_RULES: dict[str, Callable[[_FamilyUNet, JobConfig, int, tuple[int, int], int], _ClipLayers]] = {
    "parallel.clip:apply_clip_parallel": _unet3d_clip_layers,
    "parallel.svd:apply_svd_clip_parallel": _svd_clip_layers,
}
"""Clip installers (``ModelFamily.parallelize["clip"]``) whose traffic the plan predicts, and how."""

PATCH_INSTALLERS = frozenset({"parallel.patch:apply_patch_parallel", "parallel.svd:apply_svd_patch_parallel"})
"""Patch installers that move what :func:`parallel.patch.traffic_per_step` counts."""


def _first_step(family: ModelFamily, job: JobConfig) -> int:
    """The first step the loop runs: later than 0 when it starts from the image latent (``image.strength``
    below 1, docs/i2v.md) or from a layout prior (``layout.strength`` below 1, docs/layout.md)."""
    from videogen.pipeline import first_step

    return first_step(job, family)


def _unet_batches(job: JobConfig, step_rank: int, guided: bool, start: int) -> list[int]:
    """The batch of each of this step-rank's UNet calls from step ``start`` on, in order (a split ParaStep
    warm-up call has batch 1)."""
    par = job.parallel
    batch = 2 if guided and par.cfg == 1 else 1
    steps = job.sampler.steps
    if par.step == 1:
        return [batch] * (steps - start)
    config = step_config(job)
    schedule = step_schedule(start, steps, config.warmup, par.step)
    split = config.warmup_split and guided and par.patch == 1 and par.cfg == 1
    warmup = [] if split and step_rank >= 2 else [1 if split else batch] * len(schedule.warmup)
    return warmup + [batch] * sum(len(r) > step_rank for r in schedule.rounds)


def _step_bytes(job: JobConfig, latent_bytes: float, guided: bool, start: int) -> dict[str, float]:
    """Bytes a step worker receives over the loop: the other ranks' outputs, once per round (and split warm-up step)."""
    par = job.parallel
    config = step_config(job)
    schedule = step_schedule(start, job.sampler.steps, config.warmup, par.step)
    out = {"model_output": (par.step - 1) * latent_bytes * len(schedule.rounds)}
    if config.warmup_split and guided and par.patch == 1 and par.cfg == 1:
        out["warmup_branch"] = (par.step - 1) * latent_bytes * len(schedule.warmup)
    return {kind: value for kind, value in out.items() if value}


def _unpredicted(model: _Model, job: JobConfig) -> list[str]:
    """Why the traffic of an axis whose installer has no byte rule here is left out."""
    par, installers, name = job.parallel, model.family.parallelize, model.family.name
    out = []
    if par.clip > 1 and installers["clip"] not in CLIP_RULES:
        also = "; nor the patch GroupNorms, whose temporal ones it may combine itself" if par.patch > 1 else ""
        out.append(f"clip: the {name} family's clip installer {installers['clip']} has no byte rule here{also}")
    if par.patch > 1 and installers["patch"] not in PATCH_INSTALLERS:
        out.append(f"patch: the {name} family's patch installer {installers['patch']} has no byte rule here")
    return out


def plan_render(job: JobConfig) -> RenderPlan:
    """The plan of ``job``'s render: every worker's share and traffic, and the problems it would hit."""
    par = job.parallel
    plan = RenderPlan(
        par.mesh(), par.world_size, par.launcher if par.world_size > 1 else "this process", job.sampler.steps
    )
    plan.problems = [str(error) for error in preflight_errors(job)]
    if any(p.startswith(("model.", "parallel.", "video.", "layout.prior")) for p in plan.problems):
        return plan  # the shares below need a readable model, a possible split and the first step
    model = _model(job)
    if model is None:
        return plan
    from videogen.pipeline import guides, needs_position_windows

    if par.world_size == 1 and needs_position_windows(job):
        plan.launcher = par.launcher  # one clip worker cuts the video into position windows
    channels, height, width = model.geometry.channels, model.height, model.width
    plan.latent = (channels, job.video.num_frames, height, width)
    split = split_rows((height, width), par.patch, model.geometry.levels, par.patch_options.split)
    plan.split = split.dim if par.patch > 1 else None
    clips = job_clips(job)
    guided = guides(job, model.family)
    plan.unpredicted = _unpredicted(model, job)
    start = _first_step(model.family, job)
    mesh = ParallelPlan(clip=par.clip, patch=par.patch, step=par.step, cfg=par.cfg)
    probe = _FamilyUNet(_CallConfig(model, job))
    element = torch.finfo(DTYPES[job.model.dtype]).bits // 8
    clip_rule = CLIP_RULES.get(model.family.parallelize["clip"]) if par.clip > 1 else None
    clip_layers: dict[int, _ClipLayers] = {}

    def spatial_modules(meta: _FamilyUNet) -> SpatialModules:
        return model.family.spatial_modules(meta.unet)

    @functools.cache
    def patch_bytes(batch: int, frames: int, synchronous: bool, rank: int) -> dict[str, float]:
        config = patch_config(job)
        return traffic_per_step(probe, split, config, batch, frames, element, synchronous, rank, spatial_modules)

    for rank in range(mesh.world_size):
        coords = mesh.coords(rank)
        frames = clips[coords["clip"]]
        band = split.band(coords["patch"])
        share = WorkerShare(rank, coords, (frames.start, frames.stop), (band.start, band.stop), None)
        share.decodes = _decoded(job, coords, frames)
        share.calls = [
            (batch, index < par.patch_options.warmup_steps or par.patch_options.mode == "sync")
            for index, batch in enumerate(_unet_batches(job, coords["step"], guided, start))
        ]
        plan.workers.append(share)
        if clip_rule is not None and len(frames) not in clip_layers:
            clip_layers[len(frames)] = clip_rule(probe, job, len(frames), split.local_hw(0), element)
        traffic = _worker_traffic(
            job,
            patch_bytes if par.patch > 1 and model.family.parallelize["patch"] in PATCH_INSTALLERS else None,
            split,
            clips,
            coords,
            share.calls,
            clip_layers.get(len(frames)),
            guided,
            start,
            channels,
        )
        decode = share.decodes is not None and par.clip > 1
        halo = (model.family.decode_halo(job) or 0) if decode else 0
        if halo:  # whole latent frames of the neighbouring clips, float32 like the latents
            received = context_bytes(clips, coords["clip"], halo, channels * height * width * 4.0)
            traffic.setdefault("clip", {})["decode_halo"] = received
        plan.traffic.append(traffic)
    return plan


def _decoded(job: JobConfig, coords: dict[str, int], frames: range) -> tuple[int, int] | None:
    if coords["cfg"] or coords["step"]:
        return None
    if job.parallel.patch > 1 and decode_method(patch_config(job), len(frames), job.parallel.patch) == "frames":
        share = frame_share(frames, job.parallel.patch, coords["patch"])
        return (share.start, share.stop)
    return (frames.start, frames.stop) if coords["patch"] == 0 else None


def _worker_traffic(
    job: JobConfig,
    patch_bytes: Callable[[int, int, bool, int], dict[str, float]] | None,
    split: PatchSplit,
    clips: list[range],
    coords: dict[str, int],
    calls: list[tuple[int, bool]],
    clip_layers: _ClipLayers | None,
    guided: bool,
    start: int,
    latent_channels: int,
) -> dict[str, dict[str, float]]:
    """Bytes this worker receives over the loop by axis and kind; an axis whose installer has no rule
    (``patch_bytes`` None, or no ``clip_layers`` with clip workers) is left out, with its patch GroupNorms."""
    par = job.parallel
    frames = len(clips[coords["clip"]])
    out: dict[str, dict[str, float]] = {}

    def add(axis: str, kinds: dict[str, float]) -> None:
        into = out.setdefault(axis, {})
        for kind, value in kinds.items():
            into[kind] = into.get(kind, 0.0) + value

    temporal_norms = clip_layers.norms if clip_layers is not None else []
    for batch, synchronous in calls:
        if clip_layers is not None:
            add("clip", clip_layers.call_bytes(clips, coords["clip"], batch))
        if patch_bytes is not None:
            kinds = dict(patch_bytes(batch, frames, synchronous, coords["patch"]))
            if temporal_norms:  # their band statistics travel as groupnorm_temporal, not as patch GroupNorms
                kinds["groupnorm"] -= sum(2 * batch * g * 8 for g in temporal_norms)
                kinds["groupnorm_temporal"] = sum(_norm_bytes(batch, g, par.patch - 1) for g in temporal_norms)
            elif par.clip > 1 and clip_layers is None:  # an unknown clip installer may take over temporal norms
                kinds.pop("groupnorm", None)
            add("patch", kinds)
    band_h, band_w = split.local_hw(0)
    if par.cfg == 2:  # the other branch's guided-output band, float32 like the latents, once per call
        add("cfg", {"output": len(calls) * latent_channels * frames * band_h * band_w * 4.0})
    if par.step > 1:
        h, w = split.latent_hw
        add("step", _step_bytes(job, latent_channels * frames * h * w * 4.0, guided, start))
    return {axis: {k: v for k, v in kinds.items() if v} for axis, kinds in out.items() if any(kinds.values())}


def format_plan(plan: RenderPlan, source: str) -> str:
    """The plan as the terminal shows it."""
    mesh = " x ".join(f"{axis}={n}" for axis, n in plan.mesh.items())
    lines = [f"{source}: {plan.world_size} worker(s) ({mesh}) on {plan.launcher}, {plan.steps} steps"]
    if plan.latent is not None:
        c, f, h, w = plan.latent
        lines.append(
            f"latents: {c} channels x {f} frames x {h} x {w}"
            + (f", patch split along {plan.split}" if plan.split else "")
        )
    if plan.workers:
        header = ["rank", "step", "cfg", "clip", "patch", "frames", "rows", "decodes", "UNet calls"]
        rows = [
            [w.rank, *(w.coords[a] for a in ("step", "cfg", "clip", "patch")), _span(w.frames), _span(w.rows)]
            + [_span(w.decodes), len(w.calls)]
            for w in plan.workers
        ]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines.append("")
        lines.extend("  ".join(f"{str(v):>{n}}" for v, n in zip(r, widths, strict=True)) for r in [header, *rows])
    mean = plan.mean_traffic()
    if mean:
        lines.append("")
        lines.append("bytes received per worker (mean over workers): whole render, and per step")
        for axis, kinds in mean.items():
            for kind, value in sorted(kinds.items()):
                lines.append(f"  {axis:<6} {kind:<20} {_mb(value):>12}  {_mb(value / plan.steps):>12}/step")
    elif plan.workers and plan.world_size > 1 and not plan.unpredicted:
        lines.append("no communication in the denoising loop")
    if plan.unpredicted:
        lines.append("")
        lines.append("not predicted (left out of the bytes above):")
        lines.extend(f"  {note}" for note in plan.unpredicted)
    lines.append("")
    if plan.problems:
        lines.append(f"the render would stop with {len(plan.problems)} error(s):")
        lines.extend(f"  {p}" for p in plan.problems)
    else:
        lines.append("no problems found: the render would start")
    return "\n".join(lines)


def _span(span: tuple[int, int] | None) -> str:
    return "-" if span is None else f"{span[0]}-{span[1] - 1}"


def _mb(value: float) -> str:
    return f"{value / 1e6:.3f} MB" if value >= 1e5 else f"{value / 1e3:.2f} kB"
