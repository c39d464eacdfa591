"""Run an evaluation: render every suite x prompt x seed, score each video, summarise, write the report.

One-worker renders run in this process on one model bundle, loaded once
(:func:`videogen.pipeline.prepare_bundle`) before the first of them and reused
(:func:`videogen.pipeline.render_frames`); their ``seconds`` exclude loading. A suite whose
``parallel`` section asks for more than one worker renders through the parallel runner
(:func:`videogen.api.render_job`, as ``videogen render`` does) into a lossless PNG folder
that is read back and removed; its ``seconds`` include starting the workers and their model loads.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from videogen.config import JobConfig
from videogen.errors import ConfigError
from videogen.eval.plan import RenderPlan, plan_renders
from videogen.eval.schema import EvalJob
from videogen.eval.scoring import SuiteSummary, VideoRow, score_row, summarize, summarize_suites


@dataclass
class EvalReport:
    """What an evaluation measured.

    ``rows``: one per video, in render order; ``suites``: one summary per suite; ``overall``: the
    summary of every row (suite ``all``); ``seconds``: the whole evaluation's wall time, model
    loading and scoring included; ``sheets``: per suite, each video's contact-sheet frames (every
    ``sheet.every``-th frame, in row order); ``files``: what was written under ``out``.
    """

    job: EvalJob
    rows: list[VideoRow]
    suites: list[SuiteSummary]
    overall: SuiteSummary
    seconds: float
    sheets: dict[str, list[np.ndarray]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def progress_line(done: int, total: int, plan: RenderPlan, row: VideoRow) -> str:
    """``[3/24] adherence seed 0 'a red circle moving right': colour+ shape+ count+ direction- ... 1.2 s``."""
    flags = " ".join(
        f"{name}{'+' if getattr(row, flag) else '-'}"
        for name, flag in (
            ("colour", "colour_ok"),
            ("shape", "shape_ok"),
            ("count", "count_ok"),
            ("direction", "direction_ok"),
            ("speed", "speed_ok"),
            ("pan", "pan_ok"),
        )
    )
    width = len(str(total))
    return f"[{done:>{width}}/{total}] {plan.suite} seed {plan.seed} {plan.prompt!r}: {flags} ({row.seconds:.1f} s)"


def check_before_rendering(job: EvalJob, plans: list[RenderPlan]) -> None:
    """What can fail before any weights load: the model's component folders, each parallel suite's
    frame split. Raises :class:`~videogen.errors.VideogenError` naming the key."""
    from videogen.models.loader import component_dir, model_components

    for component in model_components(job.model):
        component_dir(job.model, component)
    checked: set[str] = set()
    for plan in plans:
        if plan.workers == 1 or plan.suite in checked:
            continue
        checked.add(plan.suite)
        from parallel.job_plan import job_clips

        index = next(i for i, s in enumerate(job.suites) if s.name == plan.suite)
        try:
            job_clips(plan.job)
        except ConfigError as error:
            raise ConfigError(f"suites[{index}].overrides.parallel.clip: {error}") from None


def render_in_parallel(job: JobConfig, folder: Path) -> np.ndarray:
    """Render ``job`` on its workers into a PNG folder under ``folder``; return its frames (F, H, W, 3)."""
    import imageio.v3 as iio

    from videogen.api import render_job

    target = folder / "frames"
    job.output.path = str(target)
    try:
        render_job(job, progress=False)
        return np.stack([np.asarray(iio.imread(p))[..., :3] for p in sorted(target.glob("frame_*.png"))])
    finally:
        shutil.rmtree(target, ignore_errors=True)


def write_video(path: Path, frames: np.ndarray, fps: int) -> Path:
    """``frames`` as an mp4 (libx264), written atomically."""
    from videogen.io.writer import open_sink

    path.parent.mkdir(parents=True, exist_ok=True)
    with open_sink(path, fps) as sink:
        sink.write(frames)
    return path


def run_eval(
    job: EvalJob,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_video: Callable[[RenderPlan, np.ndarray, VideoRow], None] | None = None,
) -> EvalReport:
    """Render and score every suite x prompt x seed of ``job``; write the report under ``job.out``.

    ``progress`` logs one line per render (to stderr unless ``log`` is given). ``on_video(plan,
    frames, row)`` is called after each render is scored, with its frames ``(F, H, W, 3)`` uint8, for
    measurements beyond the row's (the frames are not kept otherwise). Returns the rows and
    the summaries (:mod:`videogen.eval.scoring`); files are written by
    :func:`videogen.eval.report.write_report` when ``job.out`` is set.
    """
    from videogen.eval.report import write_report
    from videogen.pipeline import prepare_bundle, render_frames

    started = time.perf_counter()
    say = log or _stderr
    plans = plan_renders(job)
    check_before_rendering(job, plans)
    if job.threads:
        torch.set_num_threads(job.threads)
    out = Path(job.out) if job.out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    rows: list[VideoRow] = []
    sheets: dict[str, list[np.ndarray]] = {}
    files: list[Path] = []
    bundle = None
    with tempfile.TemporaryDirectory(prefix=".eval-renders-", dir=out) as scratch:
        for done, plan in enumerate(plans, 1):
            if plan.workers == 1 and bundle is None:
                bundle = prepare_bundle(plan.job)
            render_started = time.perf_counter()
            if plan.workers == 1:
                frames = render_frames(plan.job, bundle=bundle, progress=False)
            else:
                frames = render_in_parallel(plan.job, Path(scratch))
            seconds = time.perf_counter() - render_started
            row = score_row(
                frames,
                plan.prompt,
                suite=plan.suite,
                seed=plan.seed,
                seconds=seconds,
                workers=plan.workers,
                min_rate=job.scoring.min_rate,
                pan_reference=job.scoring.pan_reference,
            )
            rows.append(row)
            if on_video is not None:
                on_video(plan, frames, row)
            sheets.setdefault(plan.suite, []).append(frames[:: job.sheet.every].copy())
            if job.videos and out is not None:
                name = out / "videos" / plan.suite / f"{plan.index:03d}_seed{plan.seed}.mp4"
                files.append(write_video(name, frames, plan.job.video.fps))
            if progress:
                say(progress_line(done, len(plans), plan, row))
    report = EvalReport(
        job=job,
        rows=rows,
        suites=summarize_suites(rows),
        overall=summarize(rows, "all"),
        seconds=time.perf_counter() - started,
        sheets=sheets,
    )
    if out is not None:
        report.files = files + write_report(report, out)
    return report
