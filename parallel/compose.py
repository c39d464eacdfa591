"""One worker of a clip x patch x cfg render: the mesh, every axis installed, the real pipeline.

The axes compose on one :class:`~torch.distributed.device_mesh.DeviceMesh`, each with its own
communicator (its own process group and accounting):

- ``clip`` (:mod:`parallel.clip`): this worker's frames; temporal layers exchange frames;
- ``patch`` (:mod:`parallel.patch`): this worker's latent band of those frames; spatial layers
  exchange rows; :class:`~parallel.patch.PatchDenoiser` gathers each step's output;
- ``cfg`` (:mod:`parallel.cfg`): this worker's guidance branch; one output exchange per step.

On the UNet, patch parallelism is installed before clip parallelism, which then owns the
temporal GroupNorms; their statistics must cover the frames of all clips *and* the rows of all
patches, so with both axes the clip statistics are first combined over the patch axis
(``band_comm`` of :func:`parallel.clip.apply_clip_parallel`). The denoiser is wrapped innermost-first: cfg, then patch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import nn

from parallel.cfg import CfgParallelDenoiser
from parallel.clip import ClipParallelConfig, min_clip_frames, split_frames
from parallel.comm import AxisComm, CommStats
from parallel.mesh import ParallelPlan, build_mesh
from parallel.patch import PatchDenoiser, PatchParallelConfig, PatchSplit, split_rows
from parallel.step import StepParallelConfig, make_step_loop
from videogen.config import JobConfig
from videogen.models.family import resolve_import
from videogen.models.loader import ModelBundle
from videogen.pipeline import WorkerSlot, denoise, latent_shape, needs_position_windows, prepare_bundle
from videogen.sampling import Denoiser, StepContext, StepHook, run_steps

__all__ = [
    "MeshWorker",
    "StepTraffic",
    "denoise_mesh",
    "mesh_slot",
    "setup_mesh_worker",
    "wrapping_loop",
]

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def wrapping_loop(wrap: Callable[[Denoiser], DenoiseFn], loop: Callable[..., torch.Tensor] = run_steps):
    """A ``WorkerSlot.loop`` that runs ``loop`` with ``wrap(denoiser)`` in place of the denoiser."""

    def run(denoiser: Denoiser, *args, **kwargs) -> torch.Tensor:
        return loop(wrap(denoiser), *args, **kwargs)

    return run


class StepTraffic(StepHook):
    """Per denoising step, the traffic of every axis: ``steps[i] = {axis: {kind: bytes/calls}}``."""

    def __init__(self, stats: CommStats):
        self.stats = stats
        self.steps: list[dict[str, dict[str, dict[str, int]]]] = []
        self._before = stats.snapshot()

    def on_step_end(self, ctx: StepContext, latents: torch.Tensor) -> None:
        now = self.stats.snapshot()
        step = {}
        for axis, kinds in now.items():
            step[axis] = {}
            for kind, t in kinds.items():
                before = self._before.get(axis, {}).get(kind)
                d = asdict(t) if before is None else {k: v - getattr(before, k) for k, v in asdict(t).items()}
                if d["calls"]:
                    step[axis][kind] = d
        self.steps.append(step)
        self._before = now


@dataclass
class MeshWorker:
    """One worker's place in the mesh, its communicators (one per axis) and its model."""

    plan: ParallelPlan
    comms: dict[str, AxisComm]
    stats: CommStats
    bundle: ModelBundle
    frames: range
    split: PatchSplit

    @property
    def coords(self) -> dict[str, int]:
        return {axis: comm.rank for axis, comm in self.comms.items()}


def setup_mesh_worker(
    world_size: int, job: JobConfig, plan: ParallelPlan, clip: ClipParallelConfig, patch: PatchParallelConfig
) -> MeshWorker:
    """Build the mesh of ``plan``, load the model, pick this worker's frames and latent band."""
    plan.check_world_size(world_size)
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    stats = CommStats()
    mesh = build_mesh(plan, device_type)
    comms = {axis: AxisComm.from_mesh(mesh, axis, stats) for axis in ("clip", "patch", "cfg", "step")}
    if device_type == "cuda":
        job.model.device = f"cuda:{torch.cuda.current_device()}"
    bundle = prepare_bundle(job)
    frames = split_frames(job.video.num_frames, plan.clip, min_clip_frames(clip))[comms["clip"].rank]
    _, height, width = latent_shape(job, bundle)
    split = split_rows((height, width), plan.patch, bundle.geometry.levels, patch.split)
    return MeshWorker(plan, comms, stats, bundle, frames, split)


def mesh_slot(
    worker: MeshWorker,
    job: JobConfig,
    clip: ClipParallelConfig,
    patch: PatchParallelConfig,
    hooks: list[StepHook] | None = None,
    step: StepParallelConfig | None = None,
    share: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> WorkerSlot:
    """The :class:`WorkerSlot` that runs this worker's share of the mesh through the real pipeline.

    Patch then clip parallelism are installed on the UNet, by the model family's parallelize functions on
    the modules the family names; the denoiser is wrapped cfg-first, then patch; with ``step`` (ParaStep)
    the loop is the step-parallel driver on the step axis.
    """
    comms = worker.comms
    family = worker.bundle.family

    def install(unet: nn.Module, denoiser: Denoiser) -> Callable[[], None]:
        undo: list[Callable[[], None]] = []
        if comms["patch"].size > 1:
            apply_patch = resolve_import(family.parallelize["patch"])
            modules = family.spatial_modules(unet)
            undo.append(apply_patch(unet, comms["patch"], worker.split, patch, modules=modules).remove)
        if comms["clip"].size > 1 or needs_position_windows(job):
            apply_clip = resolve_import(family.parallelize["clip"])
            band_comm = comms["patch"] if comms["patch"].size > 1 else None
            handle = apply_clip(
                unet,
                comms["clip"],
                worker.frames,
                job.video.num_frames,
                clip,
                band_comm=band_comm,
                modules=family.temporal_modules(unet),
            )
            undo.append(handle.remove)

        def remove() -> None:
            while undo:
                undo.pop()()

        return remove

    def wrap(denoiser: Denoiser) -> DenoiseFn:
        fn: DenoiseFn = denoiser
        if comms["cfg"].size > 1:
            fn = CfgParallelDenoiser(denoiser, comms["cfg"])
        if comms["patch"].size > 1:
            fn = PatchDenoiser(fn, comms["patch"], worker.split)
        return fn

    inner = make_step_loop(comms["step"], step) if step is not None and comms["step"].size > 1 else run_steps
    slot = WorkerSlot(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        frames=worker.frames,
        hooks=list(hooks or []),
        install=install,
        loop=wrapping_loop(wrap, inner),
    )
    if share is not None:
        slot.share = share
    return slot


def denoise_mesh(
    worker: MeshWorker,
    job: JobConfig,
    clip: ClipParallelConfig,
    patch: PatchParallelConfig,
    hooks: list[StepHook] | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, int]:
    """Run :func:`videogen.pipeline.denoise` on this worker's share; returns (latents of its frames, evaluations).

    The latents are the whole frames of this worker's clip, identical on its patch and cfg peers.
    """
    slot = mesh_slot(worker, job, clip, patch, hooks)
    latents, evaluations, _ = denoise(job, worker.bundle, job.noise.seed, slot, progress=progress)
    return latents, evaluations
