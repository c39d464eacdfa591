"""The batch manifest (``videogen batch MANIFEST.yaml``): its schema, and its expansion into render jobs.

A manifest is loaded in layers like a render job (built-in defaults, the YAML file, ``key=value``
overrides; :func:`videogen.config.load_layers`). It names a base job and the jobs built from it::

    job:  configs/demo.yaml                  # a render-job file (optional)
    base: {video.width: 64, sampler.steps: 10}   # render-job keys over it (optional)
    prompts: ["a red circle moving right", "a blue square moving left"]
    seeds: 2                                 # a count (seeds 0, 1) or a list [0, 7, 11]
    overrides:                               # variants: render-job keys over base, one variant each
      - {}
      - {sampler.guidance_scale: 4.0}
    grid: {sampler.steps: [10, 20]}          # every combination of these values, crossed with overrides
    jobs:                                    # more jobs, listed one by one after the product
      - {overrides: {prompts.text: "a green triangle moving up", noise.seed: 5}, name: hero.mp4}
    out: out/batch
    name: "{index:03d}_{prompt_slug}_s{seed}.mp4"

The product is variants (``overrides`` x ``grid``) x ``prompts`` x ``seeds``, numbered in that order
(each variant's prompts in turn, each prompt with every seed); listed ``jobs`` follow it. Every job
is a whole render job, checked as ``videogen render`` checks one, and a mistake is one
:class:`~videogen.errors.ConfigError` naming the job's number and the key as the manifest spells it
(``job 7: overrides[1].sampler.stepz: ...``), before anything renders. Two jobs that would write the
same file are refused the same way.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from videogen.config import JobConfig, LoadedJob, job_problems, load_layers
from videogen.errors import ConfigError
from videogen.job_keys import Problem, first_line, mapping_items, nested, override_items, plain, seed_problem

DEFAULT_NAME = "{index:03d}_{prompt_slug}_s{seed}.mp4"
NAME_FIELDS = ("index", "variant", "seed", "prompt_slug")
JOB_SECTIONS = ("model", "prompts", "video", "sampler", "noise", "image", "layout", "svd", "parallel", "ray", "output")
SUMMARY_FILE = "batch.json"


@dataclass
class ListedJob:
    """One job listed by hand: render-job keys over the base (a mapping, dotted or nested, or a list of
    ``"section.key=value"``) and, optionally, its own name template in place of the manifest's ``name``."""

    overrides: Any = None
    name: str | None = None


@dataclass
class BatchManifest:
    """A batch. ``job``: a render-job file; ``base``: render-job keys over it (the base job);
    ``prompts``, ``seeds``, ``overrides``, ``grid``: the product's axes (an axis left empty keeps the
    base job's value); ``jobs``: listed jobs; ``out``: the folder for outputs and ``batch.json``;
    ``name``: the output name template; ``launcher``: ``ray`` (replicas on a Ray cluster) or
    ``local`` (one after another in this process); ``max_parallel``: at most this many replicas at
    once (0: as many as the cluster holds)."""

    job: str | None = None
    base: Any = None
    prompts: list[str] = field(default_factory=list)
    seeds: Any = None
    overrides: list[Any] = field(default_factory=list)
    grid: Any = None
    jobs: list[ListedJob] = field(default_factory=list)
    out: str = "out/batch"
    name: str = DEFAULT_NAME
    launcher: Literal["ray", "local"] = "ray"
    max_parallel: int = 0


RESERVED = {
    "output.path": "each job's output is out/<name>; set out and name",
}
"""Render-job keys no layer of a manifest may set, and why."""

RESERVED_PER_JOB = {
    "ray.address": "every job of a batch runs on the batch's cluster; set ray.address in base",
}
"""Keys that only the base may set (not a variant or a listed job), and why."""


@dataclass
class PlannedJob:
    """Job ``index`` of a batch: its output ``name`` (relative to ``out``), the render job with
    ``output.path`` set, and where it came from (``variant``: its variant's or listed entry's number)."""

    index: int
    name: str
    job: JobConfig
    variant: int
    origin: str

    @property
    def output(self) -> Path:
        return Path(self.job.output.path)

    @property
    def workers(self) -> int:
        return self.job.parallel.world_size


@dataclass
class BatchPlan:
    """Every job of a manifest, in order, and where the batch writes (``out``, ``summary``)."""

    manifest: BatchManifest
    source: str
    jobs: list[PlannedJob]

    @property
    def out(self) -> Path:
        return Path(self.manifest.out)

    @property
    def summary(self) -> Path:
        return self.out / SUMMARY_FILE


def _under(key: str, name: str) -> bool:
    return key == name or key.startswith(name + ".")


def seed_list(seeds: Any) -> list[int] | None:
    """The seeds of ``seeds``: None (keep the job's), ``[0 .. n-1]`` for a count ``n``, or the list."""
    if seeds is None:
        return None
    return list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]


def prompt_slug(text: str, limit: int = 40) -> str:
    """``"A red circle, moving right!"`` -> ``"a-red-circle-moving-right"`` (at most ``limit`` characters)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "untitled"


def _job_prompt(job: JobConfig) -> str:
    if job.prompts.text:
        return job.prompts.text
    return job.prompts.schedule[0].text if job.prompts.schedule else ""


class _Layers:
    """A render job being merged key by key, remembering which manifest key set each render-job key."""

    def __init__(self) -> None:
        self.config: DictConfig = OmegaConf.structured(JobConfig)
        self.set_by: dict[str, str] = {}

    def copy(self) -> _Layers:
        other = _Layers.__new__(_Layers)
        other.config, other.set_by = copy.deepcopy(self.config), dict(self.set_by)
        return other

    def relabelled(self, labels: dict[str, str]) -> _Layers:
        """These layers (shared, not copied) with ``labels`` naming keys set after them."""
        other = _Layers.__new__(_Layers)
        other.config, other.set_by = self.config, dict(self.set_by)
        for key, label in labels.items():
            other.set_by.pop(key, None)
            other.set_by[key] = label
        return other

    def merge(self, key: str, value: Any, label: str) -> Problem | None:
        try:
            self.config = OmegaConf.merge(self.config, OmegaConf.create(nested(key, value)))
        except (OmegaConfBaseException, TypeError, ValueError) as error:
            return label, first_line(error)
        self.set_by.pop(key, None)  # re-inserted last: the latest setting of a key is found first
        self.set_by[key] = label
        return None

    def merge_file(self, path: str) -> Problem | None:
        """The render-job file ``path`` as one layer; its keys are named ``path: key``."""
        from videogen.config import _leaf_keys, _read_yaml

        try:
            layer = _read_yaml(Path(path))
        except ConfigError as error:
            return "job", str(error)
        try:
            self.config = OmegaConf.merge(self.config, layer)
        except (OmegaConfBaseException, TypeError, ValueError) as error:
            key = getattr(error, "full_key", None) or "?"
            return f"{path}: {key}", first_line(error)
        for key in sorted(_leaf_keys(layer)):
            self.set_by[key] = f"{path}: {key}"
        return None

    def label(self, key: str) -> str:
        """The manifest's name for a problem at render-job key ``key``: the layer that set it, a key
        inside it, or the section it lies in (the latest such layer wins, as it does in the merge)."""
        for job_key, label in reversed(list(self.set_by.items())):
            if key == job_key or job_key.startswith(key + ".") or key.startswith(job_key + "."):
                if label.endswith(job_key) and key.startswith(job_key + "."):
                    return label + key[len(job_key) :]
                return label
        return f"{key} (default)"

    def build(self) -> tuple[JobConfig | None, list[Problem]]:
        try:
            job: JobConfig = OmegaConf.to_object(self.config)
        except MissingMandatoryValue as error:
            key = getattr(error, "full_key", None) or "?"
            return None, [(key, "a value is required (set it in the job file or in base)")]
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", None) or "?"
            return None, [(self.label(key), first_line(error))]
        job.prompts.text = job.prompts.text or ""  # null is the empty prompt, as videogen render reads it
        job.prompts.negative = job.prompts.negative or ""
        return job, []


@dataclass
class _Variant:
    """One variant of the product (or one listed job): its merged layers and how to name it."""

    number: int
    label: str
    layers: _Layers | None
    problems: list[Problem]
    name: str


def _reserved(items: list[tuple[str, Any, str]], layer: str, manifest: BatchManifest) -> list[Problem]:
    """Problems of keys that ``layer`` (``base``, ``variant`` or ``listed``) may not set."""
    reasons = dict(RESERVED)
    if layer != "base":
        reasons.update(RESERVED_PER_JOB)
    if layer == "variant":
        if manifest.prompts:
            reasons["prompts.text"] = "the batch's prompts set it; list the prompt under prompts"
        if manifest.seeds is not None:
            reasons["noise.seed"] = "the batch's seeds set it; list the seed under seeds"
    problems = []
    for key, _, label in items:
        for name, why in reasons.items():
            if _under(key, name):
                problems.append((label, f"{key} cannot be set here: {why}"))
    return problems


def _apply(layers: _Layers, items: list[tuple[str, Any, str]]) -> list[Problem]:
    for key, value, label in items:
        problem = layers.merge(key, value, label)
        if problem:
            return [problem]
    return []


def _grid_combinations(grid: Any) -> tuple[list[list[tuple[str, Any, str]]], list[Problem]]:
    """Every combination of the grid's values as override items (one empty combination for no grid)."""
    grid = plain(grid)
    if grid is None:
        return [[]], []
    if not isinstance(grid, dict) or not grid:
        return [[]], [("grid", "a mapping {section.key: [value, ...]} of render-job keys to lists of values")]
    axes, problems = [], []
    for key, values in mapping_items(grid):
        if not isinstance(values, list) or not values:
            problems.append((f"grid.{key}", f"{values!r}: a list of values (at least one)"))
            continue
        axes.append([(key, value, f"grid.{key}[{i}]") for i, value in enumerate(values)])
    return [list(combo) for combo in itertools.product(*axes)], problems


def _variants(manifest: BatchManifest, base: _Layers) -> list[_Variant]:
    """The product's variants: every ``overrides`` entry (or none) crossed with every grid combination."""
    combos, grid_problems = _grid_combinations(manifest.grid)
    entries = list(manifest.overrides) or [None]
    variants = []
    for i, (entry, combo) in enumerate(itertools.product(entries, combos)):
        where = f"overrides[{i // len(combos)}]"
        items, problems = override_items(entry, where)
        items = items + combo
        problems = grid_problems + problems + _reserved(items, "variant", manifest)
        layers = None
        if not problems:
            layers = base.copy()
            problems = _apply(layers, items)
        label = " ".join(filter(None, [where if manifest.overrides else "", *(lab for _, _, lab in combo)]))
        variants.append(_Variant(i, label or "base", layers, problems, manifest.name))
    return variants


def _listed(manifest: BatchManifest, base: _Layers) -> list[_Variant]:
    variants = []
    for i, entry in enumerate(manifest.jobs):
        where = f"jobs[{i}]"
        items, problems = override_items(entry.overrides, f"{where}.overrides")
        problems = problems + _reserved(items, "listed", manifest)
        layers = None
        if not problems:
            layers = base.copy()
            problems = _apply(layers, items)
        name = entry.name if entry.name is not None else manifest.name
        variants.append(_Variant(i, where, layers, problems, name))
    return variants


class _Fields(dict):
    def __missing__(self, key: str) -> Any:
        raise KeyError(key)


def _format_name(template: str, fields: dict[str, Any]) -> tuple[str | None, str | None]:
    """(name, None) or (None, what is wrong with the template)."""
    try:
        text = string.Formatter().vformat(template, (), _Fields(fields))
    except KeyError as error:
        known = ", ".join(NAME_FIELDS)
        return None, (
            f"{template!r}: {{{error.args[0]}}} is not a field; use {known}, or a render-job key such as "
            "{video.width} or {sampler.guidance_scale}"
        )
    except (AttributeError, IndexError, ValueError, TypeError) as error:
        return None, f"{template!r}: {first_line(error)}"
    path = Path(text)
    if not text.strip() or path.is_absolute() or ".." in path.parts or path.name in ("", "."):
        return None, f"{template!r} gives {text!r}; a name is a relative file or folder name inside out"
    if path.suffix.lower() not in (".mp4", ".gif", ""):
        return None, f"{template!r} gives {text!r}; end it in .mp4 or .gif, or no suffix for a folder of PNG frames"
    return text, None


def _name_fields(index: int, variant: _Variant, job: JobConfig) -> dict[str, Any]:
    fields: dict[str, Any] = {section: getattr(job, section) for section in JOB_SECTIONS}
    fields.update(index=index, variant=variant.number, seed=job.noise.seed, prompt_slug=prompt_slug(_job_prompt(job)))
    return fields


def _check_job(plan: PlannedJob, layers: _Layers, launcher: str) -> list[Problem]:
    """What ``videogen render`` would refuse in this job, named as the manifest spells it."""
    problems = [(layers.label(key), message) for key, message in job_problems(plan.job)]
    if launcher == "ray" and plan.workers > 1 and plan.job.parallel.launcher == "local":
        problems.append(
            (
                layers.label("parallel.launcher"),
                "local starts worker processes outside the Ray cluster's accounting; in a batch on Ray "
                "(launcher: ray) a multi-worker job runs with parallel.launcher: ray (or run the batch with "
                "launcher: local)",
            )
        )
    return problems


def _fail(loaded: LoadedJob, index: int | None, problem: Problem) -> ConfigError:
    """One line: where the key came from (the manifest, or the command line), the job's number, the key."""
    key, message = problem
    origin = loaded.origin(key)
    source = origin if origin != "defaults" else loaded.source
    job = f"job {index}: " if index is not None else ""
    return ConfigError(f"{source}: {job}{key}: {message}")


def _manifest_problems(manifest: BatchManifest) -> list[Problem]:
    out: list[Problem] = []
    problem = None if manifest.seeds is None else seed_problem(manifest.seeds)
    if problem:
        out.append(("seeds", problem))
    if not str(manifest.out).strip():
        out.append(("out", "a folder for the outputs and batch.json"))
    if manifest.max_parallel < 0:
        out.append(("max_parallel", f"{manifest.max_parallel}: must be >= 0 (0: as many as the cluster holds)"))
    product = manifest.prompts or manifest.seeds is not None or manifest.overrides or manifest.grid is not None
    if not product and not manifest.jobs:
        out.append(("jobs", "list jobs, or give prompts, seeds, overrides or grid to multiply the base job"))
    if len(set(manifest.prompts)) != len(manifest.prompts):
        out.append(("prompts", "a prompt is listed twice (two jobs would render the same video)"))
    for i, text in enumerate(manifest.prompts):
        if not text or not text.strip():
            out.append((f"prompts[{i}]", "an empty prompt"))
    return out


def load_manifest(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> LoadedJob:
    """Merge defaults, the manifest YAML and ``key=value`` overrides; check the manifest's own keys.

    ``.config`` is a :class:`BatchManifest`; :func:`plan_batch` expands and checks its jobs."""
    loaded = load_layers(BatchManifest, path, overrides)
    manifest: BatchManifest = loaded.config
    manifest.base, manifest.seeds, manifest.grid = plain(manifest.base), plain(manifest.seeds), plain(manifest.grid)
    manifest.overrides = [plain(entry) for entry in manifest.overrides]
    for entry in manifest.jobs:
        entry.overrides = plain(entry.overrides)
    problems = _manifest_problems(manifest)
    if problems:
        raise _fail(loaded, None, problems[0])
    return loaded


def _base_layers(manifest: BatchManifest, loaded: LoadedJob) -> _Layers:
    layers = _Layers()
    if manifest.job is not None:
        problem = layers.merge_file(manifest.job)
        if problem:
            raise _fail(loaded, None, problem)
    items, problems = override_items(manifest.base, "base")
    problems = problems + _reserved(items, "base", manifest) + _apply(layers, items)
    if problems:
        raise _fail(loaded, None, problems[0])
    return layers


def _collisions(jobs: list[PlannedJob], out: Path, loaded: LoadedJob) -> None:
    """Refuse two jobs writing one path (or one inside the other's PNG folder), or a job writing batch.json."""

    def key(path: Path) -> str:
        return os.path.normcase(os.path.abspath(path))

    owners: dict[str, tuple[int, str]] = {key(out / SUMMARY_FILE): (-1, "the batch's summary")}
    for planned in jobs:
        paths = [(planned.output, "output")]
        if planned.job.sampler.checkpoint_every > 0:
            from videogen.checkpoint import checkpoint_dir  # imports torch: only when checkpoints are asked for

            paths.append((checkpoint_dir(planned.job), "checkpoints"))
        for path, what in paths:
            k = key(path)
            other = owners.get(k)
            if other is None:
                nested = [o for p, o in owners.items() if k.startswith(p + os.sep) or p.startswith(k + os.sep)]
                other = nested[0] if nested else None
            if other is not None:
                whose = other[1] if other[0] < 0 else f"job {other[0]}'s {other[1]}"
                raise _fail(
                    loaded,
                    planned.index,
                    (
                        "name",
                        f"its {what} {path} collides with {whose}; put fields in name that tell the jobs apart "
                        "(e.g. {index}, {variant}, {seed}, {prompt_slug})",
                    ),
                )
            owners[k] = (planned.index, what)


def plan_batch(loaded: LoadedJob) -> BatchPlan:
    """Every job of the manifest ``loaded`` (:func:`load_manifest`), each checked as ``videogen render``
    checks a job, names checked for collisions. Raises one :class:`ConfigError` for the first mistake,
    naming the job's number and the key, before anything renders."""
    manifest: BatchManifest = loaded.config
    base = _base_layers(manifest, loaded)
    seeds = seed_list(manifest.seeds)
    prompts: list[str | None] = list(manifest.prompts) or [None]
    jobs: list[PlannedJob] = []
    out = Path(manifest.out)

    def add(variant: _Variant, layers: _Layers, job: JobConfig, origin: str) -> None:
        index = len(jobs)
        where = "name" if variant.name == manifest.name else f"{variant.label}.name"
        name, problem = _format_name(variant.name, _name_fields(index, variant, job))
        if problem:
            raise _fail(loaded, index, (where, problem))
        job.output.path = str(out / name)
        layers = layers.relabelled({"output.path": where})
        planned = PlannedJob(index, name, job, variant.number, origin)
        problems = _check_job(planned, layers, manifest.launcher)
        if problems:
            raise _fail(loaded, index, problems[0])
        jobs.append(planned)

    for variant in _variants(manifest, base):
        if variant.problems:
            raise _fail(loaded, len(jobs), variant.problems[0])
        assert variant.layers is not None
        template, problems = variant.layers.build()
        if problems:
            raise _fail(loaded, len(jobs), problems[0])
        assert template is not None
        for p, prompt in enumerate(prompts):
            for s, seed in enumerate(seeds or [None]):
                job = copy.deepcopy(template)
                labels, origin = {}, [variant.label] if variant.label != "base" else []
                if prompt is not None:
                    job.prompts.text = prompt
                    labels["prompts.text"] = f"prompts[{p}]"
                    origin.append(f"prompts[{p}]")
                if seed is not None:
                    job.noise.seed = seed
                    labels["noise.seed"] = "seeds"
                    origin.append(f"seeds[{s}]")
                add(variant, variant.layers.relabelled(labels), job, " ".join(origin) or "base")
    for variant in _listed(manifest, base):
        if variant.problems:
            raise _fail(loaded, len(jobs), variant.problems[0])
        assert variant.layers is not None
        job, problems = variant.layers.build()
        if problems:
            raise _fail(loaded, len(jobs), problems[0])
        assert job is not None
        add(variant, variant.layers, job, variant.label)
    _collisions(jobs, out, loaded)
    return BatchPlan(manifest, loaded.source, jobs)
