"""The clip-parallel render, as run by every worker, and the segment join on rank 0.

Each worker runs the single-worker pipeline (:func:`videogen.pipeline.denoise`) on its own clip
of frames with clip parallelism installed on its UNet, decodes its frames into its own mp4
segment, and rank 0 joins the segments without re-encoding (ARCHITECTURE.md, principle 4).
The launcher (local processes or Ray actors) has formed the default process group before
:func:`render_worker` runs.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from parallel.clip import ClipParallelConfig, apply_clip_parallel, min_clip_frames, split_frames
from parallel.comm import AxisComm, CommStats
from parallel.dual_scope import DualScopeConfig
from parallel.mesh import ParallelPlan, build_mesh
from videogen.checkpoint import checkpoint_dir, checkpoint_steps
from videogen.config import JobConfig
from videogen.errors import VideogenError
from videogen.io.atomic import commit, discard, partial_path
from videogen.io.concat import concat_segments
from videogen.models.loader import ModelBundle
from videogen.pipeline import WorkerSlot, decode_to, denoise, package_versions, prepare_bundle, write_job_record


@dataclass
class WorkerReport:
    """What one worker did; rank 0's also carries the output path."""

    rank: int
    frames: tuple[int, int]
    model_evaluations: int
    seconds: float
    device: str
    resumed_from_step: int | None
    traffic: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> calls, bytes sent/received
    output: str | None = None


def plan_of(job: JobConfig) -> ParallelPlan:
    return ParallelPlan(clip=job.parallel.clip)


def clip_config(job: JobConfig) -> ClipParallelConfig:
    ds = job.parallel.dual_scope
    return ClipParallelConfig(
        mode=job.parallel.clip_mode,
        groupnorm=job.parallel.groupnorm,
        dual_scope=DualScopeConfig(ds.local_radius, ds.global_frames, ds.switch_timestep, ds.scope_bias),
    )


def job_clips(job: JobConfig) -> list[range]:
    """Every worker's frames; a clear error when the video cannot be split that way."""
    return split_frames(job.video.num_frames, job.parallel.clip, min_clip_frames(clip_config(job)))


def segments_dir(job: JobConfig) -> Path:
    target = Path(job.output.path)
    return target.with_name(f".{target.name}.segments")


def agree_resume_step(comm: AxisComm, job: JobConfig, frames: range) -> int:
    """The newest checkpoint step that every worker has (each keeps its two newest)."""
    mine = checkpoint_steps(checkpoint_dir(job), frames)
    have = torch.zeros(job.sampler.steps + 1, dtype=torch.int64, device=comm.device)
    have[[s + 1 for s in mine]] = 1
    have[0] = 1  # index 0 stands for "no checkpoint", which every worker has
    total = comm.all_reduce(have, kind="resume")
    shared = [i - 1 for i in range(1, len(total)) if total[i] == comm.size]
    if not shared:
        raise VideogenError(f"--resume: the workers share no checkpoint in {checkpoint_dir(job)}")
    return shared[-1]


def _write_segment(job: JobConfig, bundle, latents: torch.Tensor, rank: int) -> None:
    """This worker's frames as ``seg_<rank>.mp4`` (or a ``seg_<rank>`` PNG folder)."""
    directory = segments_dir(job)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".mp4" if Path(job.output.path).suffix else ""
    decode_to(job, bundle, latents, directory / f"seg_{rank:05d}{suffix}")


def _join_png_segments(directory: Path, clips: list[range], target: Path) -> int:
    partial = partial_path(target)
    discard(partial)
    partial.mkdir(parents=True)
    for rank, frames in enumerate(clips):
        for local, name in enumerate(sorted((directory / f"seg_{rank:05d}").iterdir())):
            name.rename(partial / f"frame_{frames.start + local:06d}.png")
    commit(partial, target)
    return sum(len(c) for c in clips)


def join_segments(job: JobConfig, clips: list[range]) -> int:
    """Rank 0: join every worker's segment into the final output (atomically)."""
    directory = segments_dir(job)
    target = Path(job.output.path)
    if target.suffix:
        frames = concat_segments([directory / f"seg_{r:05d}.mp4" for r in range(len(clips))], target)
    else:
        frames = _join_png_segments(directory, clips, target)
    shutil.rmtree(directory, ignore_errors=True)
    return frames


@dataclass
class ClipWorker:
    """One worker's share of a clip-parallel render, set up on a formed process group."""

    comm: AxisComm
    stats: CommStats
    clips: list[range]
    bundle: ModelBundle

    @property
    def frames(self) -> range:
        return self.clips[self.comm.rank]


def setup_clip_worker(world_size: int, job: JobConfig) -> ClipWorker:
    """Build the mesh, pick this worker's clip and load the model on this worker's device."""
    plan = plan_of(job)
    plan.check_world_size(world_size)
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    stats = CommStats()
    comm = AxisComm.from_mesh(build_mesh(plan, device_type), "clip", stats)
    if device_type == "cuda":
        job.model.device = f"cuda:{torch.cuda.current_device()}"
    return ClipWorker(comm, stats, job_clips(job), prepare_bundle(job))


def denoise_clip(
    worker: ClipWorker, job: JobConfig, resume: bool, progress: bool
) -> tuple[torch.Tensor, int, int | None]:
    """Run the single-worker sampler on this clip with clip parallelism installed."""
    config = clip_config(job)

    def install(unet, denoiser):
        return apply_clip_parallel(unet, worker.comm, worker.frames, job.video.num_frames, config).remove

    start = agree_resume_step(worker.comm, job, worker.frames) if resume else None
    slot = WorkerSlot(
        rank=worker.comm.rank,
        world_size=worker.comm.size,
        frames=worker.frames,
        install=install,
        share=lambda tensor: worker.comm.broadcast(tensor, "image_latent"),
    )
    return denoise(job, worker.bundle, job.noise.seed, slot, resume_from=start, progress=progress)


def clip_latents_worker(rank: int, world_size: int, job: JobConfig) -> dict:
    """This worker's final latents (CPU) and communication, without decoding (oracles, benchmarks)."""
    worker = setup_clip_worker(world_size, job)
    worker.stats.reset()
    latents, evaluations, _ = denoise_clip(worker, job, resume=False, progress=False)
    traffic = {kind: asdict(t) for kind, t in worker.stats.by_kind("clip").items()}
    return {"latents": latents.cpu(), "frames": worker.frames, "evaluations": evaluations, "traffic": traffic}


def render_worker(rank: int, world_size: int, job: JobConfig, resume: bool, progress: bool = True) -> WorkerReport:
    """Render this worker's clip and, on rank 0, the joined video. ``job.noise.seed`` is resolved."""
    started = time.perf_counter()
    worker = setup_clip_worker(world_size, job)
    latents, evaluations, resumed = denoise_clip(worker, job, resume, progress and rank == 0)
    _write_segment(job, worker.bundle, latents, worker.comm.rank)
    traffic = {kind: asdict(t) for kind, t in worker.stats.by_kind("clip").items()}
    dist.barrier()
    frames = worker.frames
    report = WorkerReport(
        rank, (frames.start, frames.stop), evaluations, 0.0, str(worker.bundle.device), resumed, traffic
    )
    if rank == 0:
        written = join_segments(job, worker.clips)
        report.output = job.output.path
        write_job_record(
            job,
            {
                "seed": job.noise.seed,
                "frames": written,
                "workers": world_size,
                "clips": [[c.start, c.stop] for c in worker.clips],
                "seconds": round(time.perf_counter() - started, 3),
                "model_evaluations_per_worker": evaluations,
                "resumed_from_step": resumed,
                "device": str(worker.bundle.device),
                "versions": package_versions(),
            },
            Path(job.output.path),
        )
    report.seconds = time.perf_counter() - started
    return report
