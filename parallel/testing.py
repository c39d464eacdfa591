"""Test and benchmark harnesses: run a share of a render on gloo/NCCL workers and return its latents.

The renderer's own workers (:mod:`parallel.render`) decode and write a video; these stop at the final
latents and return them with the worker's coordinates, frames, model evaluations and traffic, so a test
can hold the parallel render against the single-process one (the oracles of docs/architecture.md) and a
benchmark can time the sampling alone. Each function is a ``run_local`` target
(``fn(rank, world_size, *args)``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict

import torch
import torch.distributed as dist

from parallel.clip import ClipParallelConfig
from parallel.comm import AxisComm, CommStats
from parallel.compose import StepTraffic, denoise_mesh, setup_mesh_worker
from parallel.job_plan import clip_config, job_clips
from parallel.mesh import ParallelPlan, build_mesh
from parallel.patch import PatchParallelConfig
from parallel.render import setup_worker, worker_slot
from parallel.step import StepParallelConfig, check_sampler, make_step_loop
from videogen.config import JobConfig
from videogen.models.family import resolve_import
from videogen.pipeline import WorkerSlot, denoise, prepare_bundle
from videogen.sampling import StepContext, StepHook

__all__ = ["LatentDigests", "clip_latents_worker", "latent_digest", "mesh_latents_worker", "step_latents_worker"]


def mesh_latents_worker(
    rank: int,
    world_size: int,
    job: JobConfig,
    plan: ParallelPlan,
    patch: PatchParallelConfig | None = None,
    clip: ClipParallelConfig | None = None,
) -> dict:
    """This worker's final latents (CPU) and traffic by axis and step, without decoding (oracles, benchmarks).

    ``patch`` and ``clip`` default to the default configs.
    """
    patch = patch if patch is not None else PatchParallelConfig()
    clip = clip if clip is not None else ClipParallelConfig()
    worker = setup_mesh_worker(world_size, job, plan, clip, patch)
    worker.stats.reset()
    traffic = StepTraffic(worker.stats)
    latents, evaluations = denoise_mesh(worker, job, clip, patch, hooks=[traffic])
    totals = {
        axis: {kind: asdict(t) for kind, t in worker.stats.by_kind(axis).items()}
        for axis in ("clip", "patch", "cfg", "step")
    }
    return {
        "latents": latents.cpu(),
        "frames": worker.frames,
        "coords": worker.coords,
        "split": worker.split,
        "evaluations": evaluations,
        "traffic": totals,
        "steps": traffic.steps,
    }


def clip_latents_worker(rank: int, world_size: int, job: JobConfig) -> dict:
    """This worker's final latents (CPU) and communication, without decoding (oracles, benchmarks)."""
    worker = setup_worker(world_size, job)
    worker.stats.reset()
    world = AxisComm(dist.group.WORLD, "world", worker.stats)
    latents, evaluations, _ = denoise(
        job, worker.bundle, job.noise.seed, worker_slot(worker, job, world), progress=False
    )
    traffic = {kind: asdict(t) for kind, t in worker.stats.by_kind("clip").items()}
    traffic.update({kind: asdict(t) for kind, t in worker.stats.by_kind("world").items()})
    return {"latents": latents.cpu(), "frames": worker.frames, "evaluations": evaluations, "traffic": traffic}


def latent_digest(latents: torch.Tensor) -> str:
    """A hash of the exact bytes of ``latents``."""
    data = latents.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class LatentDigests(StepHook):
    """Records :func:`latent_digest` of the latents after every step (compare ranks byte for byte)."""

    def __init__(self) -> None:
        self.by_step: dict[int, str] = {}

    def on_step_end(self, ctx: StepContext, latents: torch.Tensor) -> None:
        self.by_step[ctx.index] = latent_digest(latents)


def step_latents_worker(rank: int, world_size: int, job: JobConfig, step: int, config: StepParallelConfig) -> dict:
    """One worker of a ``ParallelPlan(step=step, clip=job.parallel.clip)`` render, without decoding.

    Clip peers share a step-rank, so they call the (clip-parallel) UNet the same number of times
    in the same order. Returns this worker's final latents (CPU), its frames, its step and clip
    coordinates, its model evaluations, the wall and CPU seconds of the sampling call, the digest
    of the master latents after every step and its traffic per axis and kind.
    """
    check_sampler(job.sampler.name, job.model)
    plan = ParallelPlan(step=step, clip=job.parallel.clip)
    plan.check_world_size(world_size)
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = build_mesh(plan, device_type)
    stats = CommStats()
    step_comm = AxisComm.from_mesh(mesh, "step", stats)
    clip_comm = AxisComm.from_mesh(mesh, "clip", stats)
    if device_type == "cuda":
        job.model.device = f"cuda:{torch.cuda.current_device()}"
    bundle = prepare_bundle(job)
    frames = job_clips(job)[clip_comm.rank]

    def install(unet, denoiser):
        family = bundle.family
        apply_clip = resolve_import(family.parallelize["clip"])
        modules = family.temporal_modules(unet)
        return apply_clip(unet, clip_comm, frames, job.video.num_frames, clip_config(job), modules=modules).remove

    digests = LatentDigests()
    slot = WorkerSlot(
        rank=rank,
        world_size=world_size,
        frames=frames,
        hooks=[digests],
        install=install if clip_comm.size > 1 else None,
        loop=make_step_loop(step_comm, config),
    )
    dist.barrier()
    started, cpu_started = time.perf_counter(), time.process_time()
    latents, evaluations, _ = denoise(job, bundle, job.noise.seed, slot, progress=False)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    traffic = {axis: {kind: asdict(t) for kind, t in kinds.items()} for axis, kinds in stats.snapshot().items()}
    return {
        "latents": latents.cpu(),
        "frames": frames,
        "step_rank": step_comm.rank,
        "clip_rank": clip_comm.rank,
        "evaluations": evaluations,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "digests": digests.by_step,
        "traffic": traffic,
    }
