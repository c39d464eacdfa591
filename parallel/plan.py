"""What a render will do, worked out before it runs: the mesh, each worker's share, the bytes each axis
moves, and every error the render would stop with.

Nothing here loads weights or starts a worker. The UNet is built from its ``config.json`` on the
meta device and run once at each worker's share of the video (no memory, no compute) to record
the input shape of every layer that communicates; the bytes follow from those shapes by the
same rules the collectives record them with (:class:`parallel.comm.CommStats`):

- ``clip`` (per UNet call, ``n`` clip workers, ``B`` the UNet batch, activations of ``e`` bytes):
  ``conv_halo``: ``CONV_HALO`` frames of ``B x C x h x w`` from each neighbour per temporal conv
  layer; ``groupnorm`` (exact statistics): ``(n-1) x 3 x B x groups`` float64 per temporal
  GroupNorm; ``attn_kv`` (exact): ``(n-1)`` clips, padded to the longest, of K and V
  (``2 x B h w x inner``) per frame; ``attn_scope`` (dual-scope): each neighbour's
  ``local_radius`` edge frames plus every other clip's global frames of K and V;
- ``patch``: :func:`parallel.patch.traffic_per_step` per UNet call (synchronous for the first
  ``patch_options.warmup_steps`` calls), and with clip workers too, ``groupnorm_temporal``: the
  band statistics of every temporal GroupNorm, ``(p-1) x 3 x B x groups`` float64;
- ``cfg``: the other branch's output for this worker's band and frames, once per step;
- ``step``: per ParaStep round (and per split warm-up step), the other step workers' model
  outputs, one latent of this worker's frames each.

Bytes received per worker over the whole denoising loop are predicted; setup exchanges (agreeing
on clips, sharing the image latent, gathering the reports) are not part of it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from parallel.clip import CONV_HALO, _conv_stages
from parallel.dual_scope import global_frame_indices
from parallel.job_plan import clip_config, job_clips, patch_config, step_config
from parallel.mesh import ParallelPlan
from parallel.patch import PatchSplit, split_rows, traffic_per_step
from parallel.patch_vae import decode_method, frame_share
from parallel.step import check_sampler, step_schedule
from videogen.config import JobConfig
from videogen.errors import ConfigError, ModelLoadError, VideogenError
from videogen.models.family import LatentGeometry, ModelFamily
from videogen.models.loader import DTYPES, component_config, component_dir, model_components, model_family

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
    denoising loop; ``problems`` the errors the render would stop with (empty: it would start)."""

    mesh: dict[str, int]
    world_size: int
    launcher: str
    steps: int
    latent: tuple[int, int, int, int] | None = None  # (channels, frames, height, width)
    split: str | None = None  # "h" or "w" with patch workers
    workers: list[WorkerShare] = field(default_factory=list)
    traffic: list[dict[str, dict[str, float]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def mean_traffic(self) -> dict[str, dict[str, float]]:
        """Bytes received per worker over the loop, by axis and kind, averaged over the workers."""
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


@dataclass
class _TemporalShapes:
    """Per temporal conv layer ``(C, h, w, [groups of its four norms])``; per transformer its norm's groups
    and ``(C, h, w)``; per temporal attention ``(h * w, inner, scope width)``: recorded at batch 1. The scope
    width is what dual-scope mode sends per token and frame: keys and values (``2 * inner``), or the
    normalised tokens when the attention adds frame positions itself."""

    convs: list[tuple[int, int, int, list[int]]]
    transformers: list[tuple[int, int, int, int]]
    attentions: list[tuple[int, int, int]]


def _temporal_shapes(
    model: _Model, meta: nn.Module, job: JobConfig, frames: int, hw: tuple[int, int]
) -> _TemporalShapes:
    modules = model.family.temporal_modules(meta)
    frames = min(frames, modules.frame_limit or frames)  # the widths do not depend on the frame count
    seen: dict[str, tuple] = {}
    hooks = []

    def record(path: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.setdefault(path, tuple(hidden.shape))

    for path, module in [*modules.convs, *modules.transformers, *modules.attentions()]:
        hooks.append(module.register_forward_pre_hook(functools.partial(record, path), with_kwargs=True))
    sample = torch.empty(1, meta.config.in_channels, frames, *hw, device="meta")
    context = torch.empty(1, 1, meta.config.cross_attention_dim, device="meta")
    try:
        with torch.no_grad():
            meta(sample, torch.tensor(500), **model.family.unet_inputs(meta, context, job))
    finally:
        for hook in hooks:
            hook.remove()
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
    shapes: _TemporalShapes, job: JobConfig, clips: list[range], rank: int, batch: int, element: int
) -> dict[str, float]:
    """Bytes clip worker ``rank`` receives in one UNet call of batch ``batch``."""
    config = clip_config(job)
    n = len(clips)
    neighbours = sum(1 for peer in (rank - 1, rank + 1) if 0 <= peer < n)
    out = {"conv_halo": 0.0}
    for c, h, w, groups in shapes.convs:
        out["conv_halo"] += neighbours * CONV_HALO * batch * c * h * w * element
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


def _unet_batches(job: JobConfig, step_rank: int) -> list[int]:
    """The batch of each of this step-rank's UNet calls, in order (a split ParaStep warm-up call has batch 1)."""
    par = job.parallel
    guided = job.sampler.guidance_scale > 1
    batch = 2 if guided and par.cfg == 1 else 1
    steps = job.sampler.steps
    if par.step == 1:
        return [batch] * steps
    config = step_config(job)
    schedule = step_schedule(0, steps, config.warmup, par.step)
    split = config.warmup_split and guided and par.patch == 1 and par.cfg == 1
    warmup = [] if split and step_rank >= 2 else [1 if split else batch] * len(schedule.warmup)
    return warmup + [batch] * sum(len(r) > step_rank for r in schedule.rounds)


def _step_bytes(job: JobConfig, latent_bytes: float) -> dict[str, float]:
    """Bytes a step worker receives over the loop: the other ranks' outputs, once per round (and split warm-up step)."""
    par = job.parallel
    config = step_config(job)
    schedule = step_schedule(0, job.sampler.steps, config.warmup, par.step)
    out = {"model_output": (par.step - 1) * latent_bytes * len(schedule.rounds)}
    if config.warmup_split and job.sampler.guidance_scale > 1 and par.patch == 1 and par.cfg == 1:
        out["warmup_branch"] = (par.step - 1) * latent_bytes * len(schedule.warmup)
    return {kind: value for kind, value in out.items() if value}


def plan_render(job: JobConfig) -> RenderPlan:
    """The plan of ``job``'s render: every worker's share and traffic, and the problems it would hit."""
    par = job.parallel
    plan = RenderPlan(
        par.mesh(), par.world_size, par.launcher if par.world_size > 1 else "this process", job.sampler.steps
    )
    plan.problems = [str(error) for error in preflight_errors(job)]
    if any(p.startswith(("model.", "parallel.", "video.")) for p in plan.problems):
        return plan  # the shares below need a readable model and a possible split
    model = _model(job)
    if model is None:
        return plan
    from videogen.pipeline import needs_position_windows

    if par.world_size == 1 and needs_position_windows(job):
        plan.launcher = par.launcher  # one clip worker cuts the video into position windows
    channels, height, width = model.geometry.channels, model.height, model.width
    plan.latent = (channels, job.video.num_frames, height, width)
    split = split_rows((height, width), par.patch, model.geometry.levels, par.patch_options.split)
    plan.split = split.dim if par.patch > 1 else None
    clips = job_clips(job)
    mesh = ParallelPlan(clip=par.clip, patch=par.patch, step=par.step, cfg=par.cfg)
    meta = model.family.meta_unet(model.unet_config)
    element = torch.finfo(DTYPES[job.model.dtype]).bits // 8
    shapes: dict[int, _TemporalShapes] = {}

    @functools.cache
    def patch_bytes(batch: int, frames: int, synchronous: bool, rank: int) -> dict[str, float]:
        return traffic_per_step(
            meta, split, patch_config(job), batch, frames, element, synchronous, rank, model.family.spatial_modules
        )

    for rank in range(mesh.world_size):
        coords = mesh.coords(rank)
        frames = clips[coords["clip"]]
        band = split.band(coords["patch"])
        share = WorkerShare(rank, coords, (frames.start, frames.stop), (band.start, band.stop), None)
        share.decodes = _decoded(job, coords, frames)
        share.calls = [
            (batch, index < par.patch_options.warmup_steps or par.patch_options.mode == "sync")
            for index, batch in enumerate(_unet_batches(job, coords["step"]))
        ]
        plan.workers.append(share)
        if len(frames) not in shapes and par.clip > 1:
            shapes[len(frames)] = _temporal_shapes(model, meta, job, len(frames), split.local_hw(0))
        plan.traffic.append(
            _worker_traffic(
                job, patch_bytes, split, clips, coords, share.calls, shapes.get(len(frames)), element, channels
            )
        )
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
    patch_bytes: Callable[[int, int, bool, int], dict[str, float]],
    split: PatchSplit,
    clips: list[range],
    coords: dict[str, int],
    calls: list[tuple[int, bool]],
    shapes: _TemporalShapes | None,
    element: int,
    latent_channels: int,
) -> dict[str, dict[str, float]]:
    par = job.parallel
    frames = len(clips[coords["clip"]])
    out: dict[str, dict[str, float]] = {}

    def add(axis: str, kinds: dict[str, float]) -> None:
        into = out.setdefault(axis, {})
        for kind, value in kinds.items():
            into[kind] = into.get(kind, 0.0) + value

    temporal_norms: list[int] = []  # groups of the temporal GroupNorms clip parallelism computes itself
    if par.clip > 1 and shapes is not None:
        temporal_norms = [g for *_, groups in shapes.convs for g in groups]
        if clip_config(job).exact_groupnorm:
            temporal_norms += [g for *_, g in shapes.transformers]
    for batch, synchronous in calls:
        if par.clip > 1 and shapes is not None:
            add("clip", _clip_call_bytes(shapes, job, clips, coords["clip"], batch, element))
        if par.patch > 1:
            kinds = dict(patch_bytes(batch, frames, synchronous, coords["patch"]))
            if temporal_norms:  # their band statistics travel as groupnorm_temporal, not as patch GroupNorms
                kinds["groupnorm"] -= sum(2 * batch * g * 8 for g in temporal_norms)
                kinds["groupnorm_temporal"] = sum(_norm_bytes(batch, g, par.patch - 1) for g in temporal_norms)
            add("patch", kinds)
    band_h, band_w = split.local_hw(0)
    if par.cfg == 2:  # the other branch's guided-output band, float32 like the latents, once per call
        add("cfg", {"output": len(calls) * latent_channels * frames * band_h * band_w * 4.0})
    if par.step > 1:
        h, w = split.latent_hw
        add("step", _step_bytes(job, latent_channels * frames * h * w * 4.0))
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
    elif plan.workers and plan.world_size > 1:
        lines.append("no communication in the denoising loop")
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
