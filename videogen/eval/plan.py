"""From an evaluation to its render jobs: one :class:`~videogen.config.JobConfig` per suite x prompt x seed.

A suite's render job is the packaged render defaults, then the evaluation's ``model`` section, then
``base``, then the suite's ``overrides`` (later wins), then the prompt as ``prompts.text`` and the seed
as ``noise.seed``. Each render-job key is merged on its own, so a wrong one is reported under the
name the evaluation file gives it (``base.video.width``, ``suites[1].overrides.parallel.clip``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from videogen.config import JobConfig, PromptsConfig, job_problems
from videogen.errors import ConfigError
from videogen.eval.schema import seed_list
from videogen.job_keys import Problem, first_line, nested, override_items

if TYPE_CHECKING:
    from videogen.eval.schema import EvalJob

REPEAT_SEED_STRIDE = 1_000_000
"""Pass ``k`` of a suite's ``repeat`` renders every seed ``s`` as ``s + k * REPEAT_SEED_STRIDE``."""

RESERVED = {
    "model": "the model is the evaluation's own model section, loaded once for every render",
    "prompts.text": "the prompts are each suite's prompts",
    "prompts.schedule": "a video is scored against one caption; list prompts in the suite instead",
    "noise.seed": "the seeds are the evaluation's seeds",
    "output.path": "the evaluator decides where frames go (set out, and videos: true to keep mp4s)",
}
"""Render-job keys that ``base`` and ``overrides`` may not set, and why."""


@dataclass(frozen=True)
class RenderPlan:
    """One render of an evaluation: suite ``suite`` (its ``index``-th video), ``prompt`` with ``seed``,
    on ``workers`` workers (clip x patch x cfg x step; 1 renders in this process)."""

    suite: str
    index: int
    prompt: str
    seed: int
    workers: int
    job: JobConfig


def _reserved(key: str) -> str | None:
    for name, why in RESERVED.items():
        if key == name or key.startswith(name + "."):
            return why
    return None


def _file_key(key: str, set_by: dict[str, str], fallback: str) -> str:
    """The file's name for a render-job problem at ``key``: the override that set it, a key inside it,
    or the section it lies in (the latest such override wins, as it does in the merge)."""
    for job_key, file_key in reversed(list(set_by.items())):
        if key == job_key or job_key.startswith(key + ".") or key.startswith(job_key + "."):
            return file_key
    if key == "model" or key.startswith("model."):
        return key  # the evaluation's own model section
    return f"{fallback}.{key}"


def suite_template(job: EvalJob, index: int) -> tuple[JobConfig | None, list[Problem]]:
    """Suite ``index``'s render job with its first prompt and seed, or None and what is wrong.

    The checks are those of ``videogen render`` (:func:`videogen.config.job_problems`), plus at least
    two frames (scoring measures motion).
    """
    suite = job.suites[index]
    where = f"suites[{index}]"
    items, problems = override_items(job.base, "base")
    more, more_problems = override_items(suite.overrides, f"{where}.overrides")
    items, problems = items + more, problems + more_problems
    for key, _, file_key in items:
        why = _reserved(key)
        if why:
            problems.append((file_key, f"{key} cannot be set here: {why}"))
    if problems:
        return None, problems
    first = suite.prompts[0] if suite.prompts else "a red circle moving right"
    try:
        config = OmegaConf.structured(JobConfig(model=copy.deepcopy(job.model), prompts=PromptsConfig(text=first)))
    except OmegaConfBaseException as error:
        return None, [("model", first_line(error))]
    set_by: dict[str, str] = {}
    for key, value, file_key in items:
        try:
            config = OmegaConf.merge(config, OmegaConf.create(nested(key, value)))
        except OmegaConfBaseException as error:
            return None, [(file_key, first_line(error))]
        set_by.pop(key, None)  # re-inserted last: the latest setting of a key is found first
        set_by[key] = file_key
    try:
        render: JobConfig = OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        full_key = getattr(error, "full_key", None) or "?"
        return None, [(_file_key(full_key, set_by, where + ".overrides"), first_line(error))]
    try:
        render.noise.seed = seed_list(job.seeds)[0]
    except ValueError:
        render.noise.seed = 0  # the seeds' own problem is reported under seeds
    found = job_problems(render)
    if render.video.num_frames < 2:
        found.append(("video.num_frames", f"{render.video.num_frames}: scoring motion needs at least two frames"))
    return render, [(_file_key(key, set_by, where + ".overrides"), message) for key, message in found]


def suite_seeds(job: EvalJob, index: int) -> list[int]:
    """Suite ``index``'s seeds: the evaluation's, then each further ``repeat`` pass's (``+ k * stride``)."""
    seeds = seed_list(job.seeds)
    return [seed + k * REPEAT_SEED_STRIDE for k in range(job.suites[index].repeat) for seed in seeds]


def plan_renders(job: EvalJob) -> list[RenderPlan]:
    """Every render of ``job``, suite by suite, each prompt with all its seeds in turn.

    Raises one :class:`~videogen.errors.ConfigError` (``key: what is wrong``) for an invalid job;
    :func:`~videogen.eval.schema.load_eval_job` has already checked a job read from a file.
    """
    from videogen.eval.schema import eval_problems

    problems = eval_problems(job)
    if problems:
        key, message = problems[0]
        raise ConfigError(f"{key}: {message}")
    plans = []
    for i, suite in enumerate(job.suites):
        template, _ = suite_template(job, i)
        assert template is not None  # eval_problems found nothing wrong
        index = 0
        for prompt in suite.prompts:
            for seed in suite_seeds(job, i):
                render = copy.deepcopy(template)
                render.prompts.text = prompt
                render.noise.seed = seed
                plans.append(RenderPlan(suite.name, index, prompt, seed, render.parallel.world_size, render))
                index += 1
    return plans
