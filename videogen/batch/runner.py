"""Run a batch: check every job, skip the complete ones, render the rest, report each job's fate.

Before anything renders, every job's output location is checked as ``videogen render`` checks it
(writable, not a user's file: :func:`videogen.batch.records.foreign_output`) and its model's limits
are read from the model's config files; a problem is one line naming the job. A job whose output
is complete by its records (:func:`videogen.batch.records.output_state`) is skipped. The others
render with ``launcher: ray`` as replicas on a Ray cluster (:mod:`parallel.batch`), or with
``launcher: local`` one after another in this process (:func:`videogen.api.render_job`). A job that
fails is recorded with its one-line error and the rest go on. ``OUT/batch.json`` holds every job's
row when the batch ends, interrupted or not.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from videogen.batch.manifest import BatchPlan, PlannedJob
from videogen.batch.records import foreign_output, output_state
from videogen.errors import ConfigError, VideogenError
from videogen.io.atomic import write_text_atomic

Status = Literal["done", "skipped", "failed", "not run"]


@dataclass
class JobRow:
    """One job's fate. ``seconds``: the render's own time (model load included; None if skipped);
    ``note``: why it rendered or was skipped (what its records said); ``origin``: the manifest entries
    that made the job (``overrides[1] prompts[0] seeds[2]``, ``jobs[3]``); ``started``, ``finished``:
    Unix times when the render was started (on Ray: submitted) and when it ended (None if skipped)."""

    index: int
    name: str
    output: str
    status: Status
    seconds: float | None = None
    error: str | None = None
    seed: int | None = None
    frames: int | None = None
    workers: int = 1
    note: str = ""
    origin: str = ""
    started: float | None = None
    finished: float | None = None


@dataclass
class BatchReport:
    rows: list[JobRow]
    seconds: float
    summary: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(row.status == "failed" for row in self.rows)


def preflight(plan: BatchPlan) -> None:
    """What can be known wrong before anything renders: a relative ``out`` inside a submitted Ray job, a
    video its workers cannot split, an output that cannot be written or is a user's file, a model folder
    that is missing or a job its model cannot render (the checks of ``videogen render``). One line
    naming the job."""
    from videogen.api import SUBMITTED_JOB_ENV, check_submitted_job_paths
    from videogen.pipeline import check_model_limits, check_output

    if SUBMITTED_JOB_ENV in os.environ and not plan.out.expanduser().is_absolute():
        raise ConfigError(
            f"{plan.source}: out: {plan.out} is relative, and a submitted Ray job runs in Ray's temporary copy of "
            f"the working directory; give an absolute path on storage every node can reach, e.g. "
            f"out=/shared/{plan.out.name}"
        )
    checked_models: set[str] = set()
    for planned in plan.jobs:
        job = planned.job
        try:
            check_submitted_job_paths(job)
            problem = foreign_output(job)
            if problem:
                raise ConfigError(f"output.path: {problem}")
            if job.parallel.world_size > 1:
                from parallel.job_plan import job_clips

                try:
                    job_clips(job)
                except ConfigError as error:
                    raise ConfigError(f"parallel.clip: {error}") from None
            check_output(job)
            model_key = repr((job.model, job.sampler.steps, job.video, job.parallel.clip, job.sampler.guidance_scale))
            if model_key not in checked_models:
                check_model_limits(job)
                checked_models.add(model_key)
        except VideogenError as error:
            raise type(error)(f"{plan.source}: job {planned.index} ({planned.name}): {error}") from None


def _failure(error: BaseException, name: str) -> str:
    if isinstance(error, VideogenError):
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    from parallel.launch import write_failure_log

    log = write_failure_log(f"batch job {name}:\n{''.join(traceback.format_exception(error))}", "batch")
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else 'no message'}; traceback in {log}"


def _render_locally(plan: BatchPlan, todo: list[PlannedJob], finish: Callable[[PlannedJob, JobRow], None]) -> None:
    from videogen.api import render_job

    for planned in todo:
        row = JobRow(planned.index, planned.name, str(planned.output), "done", workers=planned.workers)
        row.started = time.time()
        try:
            result = render_job(planned.job, progress=False)
        except Exception as error:  # one job's failure is recorded; the batch goes on
            row.status, row.error = "failed", _failure(error, planned.name)
            row.seconds = time.time() - row.started
        else:
            row.seconds, row.seed, row.frames = result.seconds, result.seed, result.frames
        row.finished = time.time()
        finish(planned, row)


def _render_on_ray(plan: BatchPlan, todo: list[PlannedJob], finish: Callable[[PlannedJob, JobRow], None]) -> None:
    import ray

    from parallel.batch import connect, render_replicas

    started_ray = connect(todo[0].job)  # ray.address is the base's: no variant or listed job sets it
    try:

        def done(position: int, result) -> None:
            planned = todo[position]
            row = JobRow(planned.index, planned.name, str(planned.output), "done", workers=planned.workers)
            row.seconds, row.started, row.finished = result.seconds, result.started, result.finished
            if result.ok:
                row.seed, row.frames = result.seed, result.frames
            else:
                row.status, row.error = "failed", result.error
            finish(planned, row)

        render_replicas([(p.name, p.job) for p in todo], done, max_parallel=plan.manifest.max_parallel)
    finally:
        if started_ray:
            ray.shutdown()


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="batch", unit="job", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def write_summary(plan: BatchPlan, report: BatchReport) -> Path:
    """``OUT/batch.json``: the counts and every job's row, written atomically."""
    payload = {
        "manifest": plan.source,
        "out": str(plan.out),
        "launcher": plan.manifest.launcher,
        "seconds": round(report.seconds, 3),
        "counts": report.counts,
        "jobs": [asdict(row) for row in report.rows],
    }
    write_text_atomic(plan.summary, json.dumps(payload, indent=2) + "\n")
    return plan.summary


def run_batch(plan: BatchPlan, *, progress: bool = True) -> BatchReport:
    """Render every job of ``plan`` that is not complete; return (and write to ``OUT/batch.json``) every
    job's row. Raises :class:`~videogen.errors.VideogenError` only for what stops the whole batch
    before any job renders (:func:`preflight`, a cluster that cannot be joined)."""
    started = time.perf_counter()
    preflight(plan)
    rows: dict[int, JobRow] = {}
    todo: list[PlannedJob] = []
    for planned in plan.jobs:
        state = output_state(planned.job)
        if state.complete:
            rows[planned.index] = JobRow(
                planned.index,
                planned.name,
                str(planned.output),
                "skipped",
                seed=state.seed,
                frames=state.frames,
                workers=planned.workers,
                note=state.note,
                origin=planned.origin,
            )
        else:
            todo.append(planned)
            rows[planned.index] = JobRow(
                planned.index,
                planned.name,
                str(planned.output),
                "not run",
                workers=planned.workers,
                note=state.note,
                origin=planned.origin,
            )
    bar = _progress_bar(len(plan.jobs), progress)
    bar.update(len(plan.jobs) - len(todo))

    def finish(planned: PlannedJob, row: JobRow) -> None:
        row.note, row.origin = rows[planned.index].note, planned.origin  # why it rendered
        rows[planned.index] = row
        bar.update(1)
        bar.set_postfix(failed=sum(r.status == "failed" for r in rows.values()), refresh=False)

    report = BatchReport([], 0.0)
    try:
        if todo:
            if plan.manifest.launcher == "local":
                _render_locally(plan, todo, finish)
            else:
                _render_on_ray(plan, todo, finish)
    finally:
        bar.close()
        report.rows = [rows[i] for i in sorted(rows)]
        report.seconds = time.perf_counter() - started
        report.counts = {s: sum(r.status == s for r in report.rows) for s in ("done", "skipped", "failed", "not run")}
        report.summary = write_summary(plan, report)
    return report


def _cell(row: JobRow) -> str:
    if row.status == "failed":
        return row.error or ""
    return row.output


def summary_table(report: BatchReport) -> str:
    """One line per job: number, name, status, seconds, the output (or the error)."""
    header = ("job", "name", "status", "seconds", "output / error")
    lines = [
        (str(r.index), r.name, r.status, "-" if r.seconds is None else f"{r.seconds:.1f}", _cell(r))
        for r in report.rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header[:-1])]
    out = ["  ".join(h.ljust(w) for h, w in zip(header[:-1], widths, strict=True)) + "  " + header[-1]]
    out.append("  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))
    for line in lines:
        out.append("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1])
    return "\n".join(out)
