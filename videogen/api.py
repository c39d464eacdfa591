"""The Python entry point: render a job on as many workers as its plan asks for.

    from videogen.api import render_job
    result = render_job("configs/demo.yaml", ["parallel.patch=2", "noise.seed=7"])

The job's world size (``parallel.clip x patch x cfg x step``) alone picks the path: one worker
renders in this process (:func:`videogen.pipeline.render`); more start workers with the job's
launcher (:func:`parallel.runner.render_parallel`). ``videogen render``, ``python -m jobs.render``
and batches all come through here. Inside a job submitted with ``ray job submit`` the output must
be an absolute path (:func:`check_submitted_job_paths`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from videogen.config import JobConfig, load_job
from videogen.errors import ConfigError
from videogen.pipeline import RenderResult

SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in the entrypoint of a job submitted with ``ray job submit``."""


def check_submitted_job_paths(job: JobConfig) -> None:
    """Inside a submitted Ray job, refuse relative output locations.

    The entrypoint runs in Ray's temporary copy of the working directory, which Ray removes later,
    so a relative ``output.path`` would land there, out of the user's sight.
    """
    if SUBMITTED_JOB_ENV not in os.environ:
        return
    for key, value in (("output.path", job.output.path), ("output.checkpoint_dir", job.output.checkpoint_dir)):
        if value and not Path(value).expanduser().is_absolute():
            raise ConfigError(
                f"{key}: {value} is relative, and a submitted Ray job runs in Ray's temporary copy of the "
                f"working directory; give an absolute path on storage the writing worker's node can reach, "
                f"e.g. {key}=/shared/videos/{Path(value).name}"
            )


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
    check_submitted_job_paths(config)
    from videogen.pipeline import needs_position_windows, render

    if config.parallel.world_size > 1 or needs_position_windows(config):
        from parallel.runner import render_parallel

        return render_parallel(config, resume=resume, progress=progress)
    return render(config, resume=resume, progress=progress)
