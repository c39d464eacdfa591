"""The clip-parallel render, as run by every worker, and the segment join on rank 0.

Each worker runs the single-worker pipeline (:func:`videogen.pipeline.denoise`) on its own clip
of frames with clip parallelism installed on its UNet, decodes its frames into its own mp4
segment, and rank 0 joins the segments without re-encoding (docs/architecture.md, principle 4).
The launcher (local processes or Ray actors) has formed the default process group before
:func:`render_worker` runs.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from parallel.comm import AxisComm
from parallel.compose import MeshWorker, mesh_slot, setup_mesh_worker
from parallel.job_plan import clip_config, job_clips, patch_config, plan_of, step_config
from parallel.patch_vae import decode_method, frame_share
from parallel.svd_decode import decode_context, segment_window
from videogen.checkpoint import checkpoint_dir, checkpoint_steps
from videogen.config import JobConfig
from videogen.errors import VideogenError
from videogen.io.atomic import commit, discard, partial_path
from videogen.io.concat import concat_segments
from videogen.pipeline import (
    StageClock,
    WorkerSlot,
    decode_to,
    denoise,
    image_record,
    layout_record,
    package_versions,
    write_job_record,
)
from videogen.sampling import StepContext, StepHook


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
    coords: dict[str, int] = field(default_factory=dict)  # the worker's index along each mesh axis
    rows: tuple[int, int] | None = None  # the latent rows (columns with patch_options.split: w) it denoises
    decoded: tuple[int, int] | None = None  # the frames it decoded and wrote, if any
    host: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage: startup, load, denoise, decode, ...


def segments_dir(job: JobConfig) -> Path:
    target = Path(job.output.path)
    return target.with_name(f".{target.name}.segments")


def agree_resume_step(comm: AxisComm, job: JobConfig, frames: range) -> int:
    """The newest checkpoint step that every worker has (each keeps its two newest)."""
    mine = checkpoint_steps(checkpoint_dir(job), frames)  # peers of a clip read its writer's files
    have = torch.zeros(job.sampler.steps + 1, dtype=torch.int64, device=comm.device)
    have[[s + 1 for s in mine]] = 1
    have[0] = 1  # index 0 stands for "no checkpoint", which every worker has
    total = comm.all_reduce(have, kind="resume")
    shared = [i - 1 for i in range(1, len(total)) if total[i] == comm.size]
    if not shared:
        raise VideogenError(f"--resume: the workers share no checkpoint in {checkpoint_dir(job)}")
    return shared[-1]


def decode_share(worker: MeshWorker, job: JobConfig) -> range | None:
    """The global frames this worker decodes and writes as a segment, or None.

    Per clip, the cfg- and step-rank-0 workers decode; with patch parallelism and
    ``patch_options.decode`` resolving to ``frames``, its patch workers split the clip's frames
    (frame-parallel decoding, no communication), otherwise patch rank 0 decodes them all.
    """
    if worker.comms["cfg"].rank or worker.comms["step"].rank:
        return None
    patch = worker.comms["patch"]
    if patch.size > 1 and decode_method(patch_config(job), len(worker.frames), patch.size) == "frames":
        return frame_share(worker.frames, patch.size, patch.rank)
    return worker.frames if patch.rank == 0 else None


def _write_segment(job: JobConfig, worker: MeshWorker, latents: torch.Tensor, share: range) -> None:
    """Frames ``share`` (global indices, within the worker's clip) as ``seg_<first frame>.mp4`` or a PNG
    folder. A temporal decoder gets its family's ``decode_halo`` latent frames of context on each side,
    from the neighbouring clips where the share meets one (:mod:`parallel.svd_decode`)."""
    directory = segments_dir(job)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".mp4" if Path(job.output.path).suffix else ""
    halo = worker.bundle.family.decode_halo(job) or 0
    latents, context = decode_context(worker.comms["clip"], latents, halo)
    window, keep = segment_window(worker.frames, context, share, halo)
    decode_to(job, worker.bundle, latents[:, :, window], directory / f"seg_{share.start:06d}{suffix}", keep)


def _join_png_segments(segments: list[Path], target: Path) -> int:
    partial = partial_path(target)
    discard(partial)
    partial.mkdir(parents=True)
    written = 0
    try:
        for segment in segments:
            for name in sorted(segment.iterdir()):
                name.rename(partial / f"frame_{written:06d}.png")
                written += 1
        commit(partial, target)
    except BaseException:
        discard(partial)
        raise
    return written


def join_segments(job: JobConfig) -> int:
    """Rank 0: join the segments, in frame order, into the final output (atomically)."""
    directory = segments_dir(job)
    target = Path(job.output.path)
    segments = sorted(directory.glob("seg_*"))
    if target.suffix:
        frames = concat_segments(segments, target)
    else:
        frames = _join_png_segments(segments, target)
    shutil.rmtree(directory, ignore_errors=True)
    return frames


def is_writer(worker: MeshWorker) -> bool:
    """One worker per clip checkpoints: patch, cfg and step rank 0."""
    return all(worker.comms[axis].rank == 0 for axis in ("patch", "cfg", "step"))


def setup_worker(world_size: int, job: JobConfig) -> MeshWorker:
    return setup_mesh_worker(world_size, job, plan_of(job), clip_config(job), patch_config(job))


def worker_slot(worker: MeshWorker, job: JobConfig, world: AxisComm) -> WorkerSlot:
    slot = mesh_slot(
        worker,
        job,
        clip_config(job),
        patch_config(job),
        step=step_config(job),
        share=lambda tensor: world.broadcast(tensor, "image_latent"),
    )
    slot.saves_checkpoints = is_writer(worker)
    return slot


class _StepProgress(StepHook):
    def __init__(self, report: Callable[[str, int], None]):
        self.report = report

    def on_step_end(self, ctx: StepContext, latents: torch.Tensor) -> None:
        self.report("denoise", ctx.index + 1)


def render_worker(
    rank: int,
    world_size: int,
    job: JobConfig,
    resume: bool,
    progress: bool = True,
    started_at: float | None = None,
    on_progress: Callable[[str, int], None] | None = None,
    record: dict | None = None,
    asked: JobConfig | None = None,
) -> WorkerReport:
    """Render this worker's share and, on rank 0, the joined video. ``job.noise.seed`` is resolved.

    ``started_at``: when the driver started the render (``time.time()``), so the record's ``startup``
    and ``seconds`` cover starting the workers too. ``on_progress(phase, steps done)`` is told each
    phase (``load``, ``denoise``, ``decode``, ``join``) as it starts and each denoising step as it
    ends (a driver's watchdog). ``record``: more entries for rank 0's ``.meta.json``. ``asked``: the
    job as the user gave it, for ``.job.yaml``, when the driver changed what does not change the video
    (checkpoints switched on for recovery).
    """
    note = on_progress or (lambda phase, step: None)
    clock = StageClock()
    if started_at is not None:
        clock.stages["startup"] = max(0.0, time.time() - started_at)
    note("load", 0)
    worker = setup_worker(world_size, job)
    clock.lap("load")
    world = AxisComm(dist.group.WORLD, "world", worker.stats)
    clips = job_clips(job)
    start = agree_resume_step(world, job, worker.frames) if resume else None
    slot = worker_slot(worker, job, world)
    slot.hooks.append(_StepProgress(note))
    note("denoise", 0 if start is None else start + 1)
    latents, evaluations, resumed = denoise(
        job, worker.bundle, job.noise.seed, slot, resume_from=start, progress=progress and rank == 0
    )
    clock.lap("denoise")
    note("decode", job.sampler.steps)
    share = decode_share(worker, job)
    if share is not None:
        _write_segment(job, worker, latents, share)
    clock.lap("decode")
    traffic = {
        f"{axis}.{kind}": asdict(t)
        for axis in ("clip", "patch", "cfg", "step")
        for kind, t in worker.stats.by_kind(axis).items()
    }
    frames = worker.frames
    band = worker.split.band(worker.comms["patch"].rank)
    report = WorkerReport(
        rank,
        (frames.start, frames.stop),
        evaluations,
        round(clock.total(), 3),
        str(worker.bundle.device),
        resumed,
        traffic,
        coords=worker.coords,
        rows=(band.start, band.stop),
        decoded=(share.start, share.stop) if share is not None else None,
        host=socket.gethostname(),
        timings=clock.rounded(),
    )
    reports = world.gather_objects(asdict(report), "report")  # after every segment is written
    clock.lap("wait")
    if rank == 0:
        note("join", job.sampler.steps)
        written = join_segments(job)
        clock.lap("join")
        report.output = job.output.path
        report.timings = clock.rounded()
        seconds = time.time() - started_at if started_at is not None else clock.total()
        write_job_record(
            asked or job,
            {
                "seed": job.noise.seed,
                "frames": written,
                "workers": world_size,
                "mesh": job.parallel.mesh(),
                "clips": [[c.start, c.stop] for c in clips],
                "seconds": round(seconds, 3),
                "timings": report.timings,
                "model_evaluations_rank0": evaluations,
                "resumed_from_step": resumed,
                "device": str(worker.bundle.device),
                "host": report.host,
                "image": image_record(job),
                "layout": layout_record(job),
                "versions": package_versions(),
                "worker_reports": [_record_of(r) for r in reports],
                **(record or {}),
            },
            Path(job.output.path),
        )
    report.seconds = clock.total()
    return report


def _record_of(report: dict) -> dict:
    """A worker's entry in ``.meta.json``: its place, its share and what it did, traffic by axis and kind."""
    out = {key: value for key, value in report.items() if key not in ("traffic", "output")}
    traffic: dict[str, dict[str, dict[str, int]]] = {}
    for name, t in report["traffic"].items():
        axis, kind = name.split(".", 1)
        traffic.setdefault(axis, {})[kind] = t
    out["traffic"] = traffic
    return out
