"""The Python entry point: render a job on as many workers as its plan asks for.

    from videogen.api import render_job
    result = render_job("configs/demo.yaml", ["parallel.patch=2", "noise.seed=7"])

The job's world size (``parallel.clip x patch x cfg x step``) alone picks the path: one worker
renders in this process (:func:`videogen.pipeline.render`); more start workers with the job's
launcher (:func:`parallel.runner.render_parallel`). ``videogen render``, ``python -m jobs.render``
and batches all come through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from videogen.config import JobConfig, load_job
from videogen.pipeline import RenderResult


def as_job(job: JobConfig | str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """``job`` itself, or the job file ``job`` with ``overrides`` merged over it, validated."""
    if isinstance(job, JobConfig):
        if overrides:
            raise TypeError("overrides apply to a job file; change a JobConfig's fields directly")
        return job
    return load_job(job, list(overrides)).config


def render_job(
    job: JobConfig | str | Path,
    overrides: Sequence[str] = (),
    *,
    resume: bool = False,
    progress: bool = True,
) -> RenderResult:
    """Render ``job`` (a :class:`JobConfig` or a job file plus ``key=value`` overrides) and write its output."""
    config = as_job(job, overrides)
    if config.parallel.world_size > 1:
        from parallel.runner import render_parallel

        return render_parallel(config, resume=resume, progress=progress)
    from videogen.pipeline import render

    return render(config, resume=resume, progress=progress)
