"""Driver side of a multi-worker render: check the job, launch the workers, report.

Everything that can be checked before a worker starts is (the frame split, the model folder,
the output format), so a bad job fails in a second with one line instead of after the cluster
has come up. Segments of a failed render are removed; checkpoints are kept for ``--resume``.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from parallel.job_plan import plan_of
from parallel.launch import WorkerError, run_local, write_failure_log
from parallel.plan import preflight_errors
from parallel.render import render_worker, segments_dir
from videogen.config import JobConfig, resolve_seed
from videogen.errors import VideogenError
from videogen.pipeline import RenderResult

LOCAL_TIMEOUT_S = 7 * 24 * 3600.0  # a render may take days; dead workers are detected at once


def _preflight(job: JobConfig, resume: bool) -> None:
    errors = preflight_errors(job, resume)
    if errors:
        raise errors[0]


def worker_failure(error: WorkerError, job: JobConfig) -> VideogenError:
    """One line for a failed local render: the root-cause rank and what it raised, and the log file
    that holds every failed worker's report and traceback."""
    report = "\n\n".join(error.failures[rank] for rank in sorted(error.failures))
    log = write_failure_log(report, Path(job.output.path).name or "render")
    headline = str(error).strip().splitlines()[0] if str(error).strip() else "a worker failed"
    return VideogenError(f"{headline}; no video was written, latent checkpoints are kept; tracebacks in {log}")


def render_parallel(job: JobConfig, resume: bool = False, progress: bool = True) -> RenderResult:
    """Render ``job`` on ``job.parallel`` workers with the configured launcher."""
    started, started_at = time.perf_counter(), time.time()
    seed = resolve_seed(job)
    _preflight(job, resume)
    world_size = plan_of(job).world_size
    shutil.rmtree(segments_dir(job), ignore_errors=True)
    try:
        if job.parallel.launcher == "local":
            threads = job.parallel.threads_per_worker or None
            try:
                reports = run_local(
                    render_worker,
                    world_size,
                    job,
                    resume,
                    progress,
                    started_at,
                    num_threads=threads,
                    timeout_s=LOCAL_TIMEOUT_S,
                )
            except WorkerError as error:
                cause = error.__cause__
                if isinstance(cause, VideogenError):
                    raise type(cause)(str(cause)) from None
                raise worker_failure(error, job) from None
        else:
            from parallel.ray_runtime import render_on_ray

            reports = render_on_ray(job, world_size, resume, progress, started_at=started_at)
    finally:
        shutil.rmtree(segments_dir(job), ignore_errors=True)
    main = reports[0]
    return RenderResult(
        Path(job.output.path),
        seed,
        job.video.num_frames,
        time.perf_counter() - started,
        main.model_evaluations,
        main.resumed_from_step,
        main.timings,
        main.host if main.host != socket.gethostname() else None,
    )
