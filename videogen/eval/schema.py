"""The evaluation job schema (``videogen eval EVAL.yaml``), loaded in layers like a render job.

Built-in defaults, the YAML file, then ``key=value`` overrides (:func:`videogen.config.load_layers`).
A wrong key, type or value, in the evaluation's own keys or in the render-job keys of ``base`` and
of a suite's ``overrides``, is one :class:`~videogen.errors.ConfigError` naming the key as the file
spells it (``suites[2].overrides.parallel.clip``) and where it came from, before any weights load.

An evaluation is::

    model:   {path: shapes}                     # the render job's model section, loaded once
    base:    {video.width: 64, sampler.steps: 25}   # render-job keys for every render
    seeds:   2                                  # a count (seeds 0, 1) or a list [0, 7, 11]
    out:     out/eval                           # CSV, JSON and contact sheets; null writes nothing
    suites:
      - name: adherence
        prompts: ["a red circle moving right", ...]
        overrides: {parallel.clip: 2}           # or nested {parallel: {clip: 2}}, or ["parallel.clip=2"]
        repeat: 1                               # r: each prompt gets r times as many seeds

Every suite x prompt x seed is one render; prompts are captions of the shapes world's grammar
(:func:`videogen.data.measure.parse_caption`), since they are scored against it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import MISSING

from videogen.config import LoadedJob, ModelConfig, load_layers
from videogen.data.measure import parse_caption
from videogen.job_keys import Problem, mapping_items, plain, seed_problem

SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""A suite's name: it names its contact sheet ``sheets/<name>.png``."""


@dataclass
class SuiteSection:
    """One group of renders sharing render-job ``overrides`` (merged over the evaluation's ``base``).

    ``overrides``: a mapping of render-job keys, dotted (``{parallel.clip: 2}``) or nested
    (``{parallel: {clip: 2}}``), or a list of ``"parallel.clip=2"`` (``null``, the default: none).
    ``repeat`` r renders each prompt with r times as many seeds: pass ``k = 0 .. r-1`` adds
    ``k * REPEAT_SEED_STRIDE`` to every seed.
    """

    name: str = MISSING
    prompts: list[str] = field(default_factory=list)
    overrides: Any = None
    repeat: int = 1


@dataclass
class SheetSection:
    """Contact sheets: one row per video, every ``every``-th frame, upscaled ``scale`` times."""

    every: int = 4
    scale: int = 2


@dataclass
class ScoringSection:
    """Options of :func:`videogen.data.measure.score_video`.

    ``min_rate``: the fraction of frames a per-frame check (colour, shape, count) must pass for its
    flag to hold. ``pan_reference``: object motion is judged relative to the background's measured
    motion (``measured``) or to the pan the caption asks for (``caption``).
    """

    min_rate: float = 0.5
    pan_reference: Literal["measured", "caption"] = "measured"


@dataclass
class EvalJob:
    """An evaluation: ``model`` is a render job's model section (loaded once for every in-process
    render); ``base`` render-job keys for every render (``null``, the default: none; same forms as a
    suite's ``overrides``); ``seeds`` a count ``n`` (seeds ``0 .. n-1``)
    or a list; ``out`` the report folder (``null``: nothing is written); ``videos`` also writes each
    render as ``out/videos/<suite>/<index>_seed<seed>.mp4``; ``threads`` torch CPU threads (0 =
    torch's default)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    base: Any = None
    seeds: Any = 1
    suites: list[SuiteSection] = field(default_factory=list)
    out: str | None = "out/eval"
    videos: bool = False
    threads: int = 0
    sheet: SheetSection = field(default_factory=SheetSection)
    scoring: ScoringSection = field(default_factory=ScoringSection)


def resolved_keys(value: Any) -> Any:
    """``base`` or a suite's ``overrides`` as plain values; a mapping as one dotted key per render-job
    key, holding the value that wins the merge (:func:`videogen.eval.plan.mapping_items`), so the
    resolved evaluation names each key once."""

    value = plain(value)
    return dict(mapping_items(value)) if isinstance(value, dict) else value


def seed_list(seeds: Any) -> list[int]:
    """The seeds of ``seeds``: ``[0, ..., n-1]`` for a count ``n``, the list itself otherwise."""
    problem = seed_problem(seeds)
    if problem is not None:
        raise ValueError(f"seeds: {problem}")
    return list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]


def prompt_problem(prompt: str) -> str | None:
    """Why ``prompt`` cannot be scored (outside the world's grammar, two objects of one colour), or None."""
    try:
        spec = parse_caption(prompt)
    except ValueError as error:
        return str(error)
    colours = [o.colour for o in spec.objects]
    if len(set(colours)) != len(colours):
        return f"{prompt!r}: two objects of one colour cannot be told apart when scored"
    return None


def eval_problems(job: EvalJob) -> list[Problem]:
    """(key, what is wrong) for every impossible value, the render jobs of every suite included."""
    from videogen.eval.plan import suite_template  # the render jobs; plan imports this module

    out: list[Problem] = []
    path = job.model.path
    if path == MISSING:  # only an EvalJob built in code can get here; a file's is caught on loading
        out.append(("model.path", "a value is required: a model folder, or tiny or shapes"))
    problem = seed_problem(job.seeds)
    if problem:
        out.append(("seeds", problem))
    if job.out is not None and not str(job.out).strip():
        out.append(("out", "a folder, or null to write nothing"))
    for key in ("every", "scale"):
        if getattr(job.sheet, key) < 1:
            out.append((f"sheet.{key}", f"must be >= 1, got {getattr(job.sheet, key)}"))
    if not 0.0 <= job.scoring.min_rate <= 1.0 or math.isnan(job.scoring.min_rate):
        out.append(("scoring.min_rate", f"a fraction of frames in [0, 1], got {job.scoring.min_rate}"))
    if job.threads < 0:
        out.append(("threads", f"must be >= 0 (0 = torch's default), got {job.threads}"))
    if not job.suites:
        out.append(("suites", "list at least one suite ({name, prompts: [...]})"))
    names: set[str] = set()
    for i, suite in enumerate(job.suites):
        key = f"suites[{i}]"
        if not isinstance(suite.name, str) or not SUITE_NAME.fullmatch(suite.name):
            out.append((f"{key}.name", f"{suite.name!r}: use letters, digits, '_', '-', '.' (it names a file)"))
        elif suite.name in names:
            out.append((f"{key}.name", f"{suite.name!r} names two suites"))
        names.add(suite.name)
        if not suite.prompts:
            out.append((f"{key}.prompts", "list at least one prompt (a caption of the shapes world)"))
        for j, prompt in enumerate(suite.prompts):
            problem = prompt_problem(prompt)
            if problem:
                out.append((f"{key}.prompts[{j}]", problem))
        if suite.repeat < 1:
            out.append((f"{key}.repeat", f"must be >= 1, got {suite.repeat}"))
        out.extend(suite_template(job, i)[1])
    return out


def load_eval_job(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> LoadedJob:
    """Merge defaults, the evaluation YAML and overrides; validate; ``.config`` is an :class:`EvalJob`."""
    loaded = load_layers(EvalJob, path, overrides)
    job: EvalJob = loaded.config
    job.base = resolved_keys(job.base)
    job.seeds = plain(job.seeds)
    for suite in job.suites:
        suite.overrides = resolved_keys(suite.overrides)
    loaded.fail_on(eval_problems(job))
    return loaded
