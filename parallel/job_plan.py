"""A render job's parallel settings as the methods' own configs: the one place ``parallel.*`` keys
become a :class:`~parallel.mesh.ParallelPlan`, the clip split and each method's config.

It imports the method modules and nothing that composes them, so the worker (:mod:`parallel.render`),
the step driver (:mod:`parallel.step`), the planner (:mod:`parallel.plan`) and the batch and
evaluation runners all read the job the same way without an import cycle.
"""

from __future__ import annotations

from parallel.clip import CONV_HALO, ClipParallelConfig, min_clip_frames, split_frames
from parallel.dual_scope import DualScopeConfig
from parallel.mesh import ParallelPlan
from parallel.patch import PatchParallelConfig
from parallel.step import StepParallelConfig
from videogen.config import JobConfig
from videogen.errors import ModelLoadError
from videogen.models.loader import model_family


def plan_of(job: JobConfig) -> ParallelPlan:
    """Workers along each mesh axis."""
    par = job.parallel
    return ParallelPlan(clip=par.clip, patch=par.patch, step=par.step, cfg=par.cfg)


def clip_config(job: JobConfig) -> ClipParallelConfig:
    """The clip axis' config, with what the model's family says of it: the halo of its temporal convolutions
    (:attr:`~videogen.models.family.ModelFamily.temporal_halo`, so the shortest clip is the model's own), and
    the dual-scope switch timestep in the units its UNet is called with
    (:meth:`~videogen.models.family.ModelFamily.scope_timestep`)."""
    ds = job.parallel.dual_scope
    switch, halo = ds.switch_timestep, CONV_HALO
    try:
        family = model_family(job.model)
        halo = family.temporal_halo
        if job.parallel.clip_mode == "dual_scope":
            switch = family.scope_timestep(switch, job.model)
    except ModelLoadError:
        pass  # the loader and the preflight report the model's problem
    return ClipParallelConfig(
        mode=job.parallel.clip_mode,
        groupnorm=job.parallel.groupnorm,
        dual_scope=DualScopeConfig(ds.local_radius, ds.global_frames, switch, ds.scope_bias),
        conv_halo=halo,
    )


def job_clips(job: JobConfig) -> list[range]:
    """Every worker's frames; a clear error when the video cannot be split that way."""
    return split_frames(job.video.num_frames, job.parallel.clip, min_clip_frames(clip_config(job)))


def patch_config(job: JobConfig) -> PatchParallelConfig:
    opts = job.parallel.patch_options
    portion = "all" if opts.portion == "all" else float(opts.portion)
    return PatchParallelConfig(opts.mode, portion, opts.warmup_steps, opts.groupnorm, opts.split, opts.decode)


def step_config(job: JobConfig) -> StepParallelConfig:
    par = job.parallel
    return StepParallelConfig(warmup=par.step_warmup, reuse=par.step_reuse, warmup_split=par.step_warmup_split)
