"""Quality benchmark: what the renderer's methods do to the video, measured against the shapes world's ground truth.

Every figure comes from renders of one model (``--model``, default the bundled ``shapes``) scored with
``videogen.eval`` (docs/quality.md has each formula), never by eye. Four groups of rows:

1. **Prompt adherence**: single-object captions cycling colours, shapes and the eight directions
   (``videogen.eval.single_object_prompts``, seed 1000): the share of videos showing the prompted
   colour and shape, and moving in the prompted direction (within 22.5 degrees).
2. **Motion control** (Go-with-the-Flow warped noise, docs/warped_noise.md): a drag moving the object
   right along ``configs/motion_drag.yaml``'s path, and a camera panning right at the world's pan speed
   (1 px/frame at 64 px), each rendered with warped noise, with Gaussian noise and the same prompt (the
   baseline), and with warped noise under a prompt that contradicts the motion. Figures: the object's
   end-point and mean trajectory error against the requested track, in pixels
   (``videogen.eval.motion_errors``: a drag's grab point; a camera's move carrying the object's first
   seen position).
3. **Image-to-video** (TRIP's image noise prior, docs/i2v.md): first frames drawn from the shapes world
   (one object of the prompted colour and shape, ``videogen.data.shapes``), animated with the trained
   fusion module (``image.fusion: auto``), with TRIP's training-free linear fusion (``image.fusion:
   none``) and with the image as the noised start alone (no prior on any step). Figures: first-frame
   PSNR against the image and against its VAE reconstruction (the ceiling), SSIM, and the share of
   frames keeping the prompted object (``videogen.eval.identity_rate``).
4. **Approximation costs**, each against the exact single-worker render of the same prompts and seeds:
   PCPP (``parallel.patch: 2``, displaced patches, portion 0.25) and ParaStep (``parallel.step: 2``) on
   the adherence prompts, and dual-scope attention on 4 clip workers for a 128-frame video (2 workers,
   32 frames with ``--quick``). Figures: per-frame adherence (the prompted colour and shape in a frame),
   track continuity (``videogen.eval.track_continuity``) and the frames' PSNR against the exact render.

Every render runs on one CPU thread per process (multi-worker renders: ``parallel.launcher: local``).

    python tools/bench_quality.py [--quick] [--json bench_quality.json] [--model shapes] [--renders N]
        [--rows adherence,long,motion,i2v] [--long-renders 3] [--degradation 0.5] [--guidance 6] [--layout auto]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from benchlib import print_table, target, write_json  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from parallel.clip import split_frames  # noqa: E402
from videogen.config import JobConfig, ModelConfig  # noqa: E402
from videogen.data.measure import parse_caption, score_video  # noqa: E402
from videogen.data.shapes import DIRECTIONS, PALETTE, SHAPES, ObjectSpec, Scene, render_scene  # noqa: E402
from videogen.eval import (  # noqa: E402
    EvalJob,
    RenderPlan,
    SuiteSection,
    VideoRow,
    identity_rate,
    motion_errors,
    psnr,
    run_eval,
    single_object_prompts,
    ssim,
    track_continuity,
    vae_round_trip,
)
from videogen.eval.seams import boundary_jumps, switch_frame  # noqa: E402
from videogen.models.loader import load_bundle  # noqa: E402
from videogen.noise.warp_spec import CameraMoveSpec, CameraSpec, DragSpec, PointSpec, WarpedNoiseSpec  # noqa: E402
from videogen.pipeline import render_frames  # noqa: E402

SIZE = 64
SEED = 1000

DRAG = {
    # configs/motion_drag.yaml's drag: a region on the left grabbed at (0.25, 0.5) and dragged right
    # along a gentle curve to (0.75, 0.5), 32 px at 64 px wide
    "polygon": [{"x": 0.1, "y": 0.35}, {"x": 0.4, "y": 0.35}, {"x": 0.4, "y": 0.65}, {"x": 0.1, "y": 0.65}],
    "path": [{"x": 0.25, "y": 0.5}, {"x": 0.5, "y": 0.42}, {"x": 0.75, "y": 0.5}],
}
PAN = 1.0 / 64.0
"""The camera turns right by 1/64 of the width per frame: the scene slides left 1 px/frame at 64 px, the
shapes world's own pan speed (``WorldSpec.pan_speed``), so the caption ``camera panning right`` names
exactly this motion."""


@dataclass(frozen=True)
class Settings:
    """How much to render: ``renders`` per row, ``frames`` and ``steps`` per render, the long video
    (``long_frames`` on ``long_workers`` clip workers, ``long_renders`` of them), and warped noise's
    ``degradation`` in the motion rows; the prompt schedule's ``blend`` frames; the settings sweeps'
    ``sweep_renders`` per setting, and their long videos (``sweep_long_frames`` frames, ``sweep_long_renders``);
    ``layout``: every render's ``layout.prior`` (``auto``: text-to-video renders start from the model's
    text-to-layout prior as a user's do, docs/layout.md; ``off``: the UNet alone)."""

    quick: bool
    renders: int
    frames: int
    steps: int
    guidance: float
    long_frames: int
    long_workers: int
    long_renders: int
    degradation: float = 0.5
    blend: int = 4
    sweep_renders: int = 8
    sweep_long_frames: int = 64
    sweep_long_renders: int = 2
    layout: str = "auto"


@dataclass
class Video:
    """One scored render: its plan, row and frames."""

    plan: RenderPlan
    row: VideoRow
    frames: np.ndarray


def render_suites(
    model: str, settings: Settings, suites: list[SuiteSection], seeds: list[int], base: dict | None = None
) -> tuple[dict[str, list[Video]], float]:
    """Render ``suites`` (every prompt x seed) through ``videogen.eval.run_eval``; the videos per
    suite, in plan order, and the wall time."""
    job = EvalJob(
        model=ModelConfig(path=model),
        base={
            "video.width": SIZE,
            "video.height": SIZE,
            "video.num_frames": settings.frames,
            "sampler.steps": settings.steps,
            "sampler.guidance_scale": settings.guidance,
            "parallel.launcher": "local",
            "parallel.threads_per_worker": 1,
            "layout.prior": settings.layout,
            **(base or {}),
        },
        seeds=seeds,
        suites=suites,
        out=None,
        threads=1,
    )
    videos: dict[str, list[Video]] = {}

    def keep(plan: RenderPlan, frames: np.ndarray, row: VideoRow) -> None:
        videos.setdefault(plan.suite, []).append(Video(plan, row, frames))

    started = time.perf_counter()
    run_eval(job, progress=True, on_video=keep)
    return videos, time.perf_counter() - started


def split_counts(renders: int) -> tuple[int, list[int]]:
    """``renders`` as prompts x seeds: one seed up to 18 renders (the distinct colour x shape pairs),
    else two."""
    seeds = [SEED] if renders <= 18 else [SEED, SEED + 1]
    return math.ceil(renders / len(seeds)), seeds


def colour_shape(index: int) -> tuple[str, str]:
    """Pair ``index`` of the 18 colour x shape pairs, colours first."""
    colours = list(PALETTE)
    return colours[index % len(colours)], SHAPES[(index // len(colours)) % len(SHAPES)]


def article(colour: str) -> str:
    return "an" if colour[0] in "aeiou" else "a"


def mean(values) -> float:
    kept = [float(v) for v in values if math.isfinite(float(v))]
    return statistics.fmean(kept) if kept else math.nan


def pct(flags) -> float:
    flags = list(flags)
    return 100.0 * sum(bool(f) for f in flags) / len(flags) if flags else math.nan


def object_identity(video: Video) -> float:
    """The share of frames showing the first prompted object's colour and shape."""
    obj = parse_caption(video.plan.prompt).objects[0]
    return identity_rate(video.frames, obj.colour, obj.shape)


def main_track(video: Video) -> np.ndarray:
    """The first prompted object's track (F, 2), NaN where it is not seen."""
    return score_video(video.frames, video.plan.prompt).objects[0].track.centres


def record(video: Video, **figures) -> dict:
    """One render in the JSON: what it was and what it measured."""
    row = video.row
    return {
        "suite": video.plan.suite,
        "prompt": video.plan.prompt,
        "seed": video.plan.seed,
        "workers": row.workers,
        "colour_ok": row.colour_ok,
        "shape_ok": row.shape_ok,
        "direction_ok": row.direction_ok,
        "colour_hit_rate": row.colour_hit_rate,
        "shape_hit_rate": row.shape_hit_rate,
        "velocity": [row.velocity_x, row.velocity_y],
        "seconds": row.seconds,
        **figures,
    }


@dataclass
class Section:
    """A group of benchmark rows: ``rows`` (the printed table), ``records`` (one per render) and the wall time."""

    rows: list[dict]
    records: list[dict]
    seconds: float


# -- 1 and 4: adherence, and what PCPP and ParaStep cost it ----------------------------------------


def adherence_and_approximations(model: str, settings: Settings) -> tuple[Section, Section]:
    prompts = single_object_prompts(settings.renders)
    suites = [
        SuiteSection(name="exact", prompts=prompts),
        SuiteSection(name="pcpp", prompts=prompts, overrides={"parallel.patch": 2}),
        SuiteSection(name="parastep", prompts=prompts, overrides={"parallel.step": 2}),
    ]
    videos, seconds = render_suites(model, settings, suites, [SEED])
    exact = videos["exact"]
    adherence = {
        "renders": len(exact),
        "colour_shape_pct": pct(v.row.colour_ok and v.row.shape_ok for v in exact),
        "colour_pct": pct(v.row.colour_ok for v in exact),
        "direction_pct": pct(v.row.direction_ok for v in exact),
        "direction_45_pct": pct(v.row.direction_near for v in exact),
        "s_per_render": mean(v.row.seconds for v in exact),
    }
    records: list[dict] = []
    rows = [compare("exact (1 worker)", exact, exact, records)]
    for name, label in (("pcpp", "PCPP patch=2"), ("parastep", "ParaStep step=2")):
        rows.append(compare(label, videos[name], exact, records))
    return Section([adherence], [], seconds), Section(rows, records, 0.0)


def compare(label: str, videos: list[Video], exact: list[Video], records: list[dict]) -> dict:
    """One approximation row: the mode's videos against the exact ones of the same prompts and seeds
    (each render's figures are appended to ``records``)."""
    pairs = list(zip(videos, exact, strict=True))
    for mode, reference in pairs:
        assert (mode.plan.prompt, mode.plan.seed) == (reference.plan.prompt, reference.plan.seed)
    identity = [object_identity(v) for v in videos]
    continuity = [track_continuity(main_track(v), SIZE) for v in videos]
    psnrs = [psnr(m.frames, r.frames) for m, r in pairs]
    for video, i, c, p in zip(videos, identity, continuity, psnrs, strict=True):
        records.append(record(video, mode=label, identity=i, continuity=c, psnr_vs_exact_db=p))
    finite = [p for p in psnrs if math.isfinite(p)]
    return {
        "mode": label,
        "renders": len(videos),
        "frames": videos[0].row.frames,
        "workers": videos[0].row.workers,
        "colour_shape_pct": pct(v.row.colour_ok and v.row.shape_ok for v in videos),
        "identity_frames_pct": 100.0 * mean(identity),
        "continuity_pct": 100.0 * mean(continuity),
        "jump_ratio": mean(v.row.jump_ratio for v in videos),
        "psnr_vs_exact_db": mean(finite) if finite else math.inf,
        "min_psnr_db": min(psnrs),
        "s_per_render": mean(v.row.seconds for v in videos),
    }


def long_video(model: str, settings: Settings) -> Section:
    """Dual-scope on ``long_workers`` clip workers against the exact single-worker render, ``long_frames`` frames."""
    prompts = single_object_prompts(settings.long_renders)
    dual = {"parallel.clip": settings.long_workers, "parallel.clip_mode": "dual_scope"}
    suites = [
        SuiteSection(name="exact_long", prompts=prompts),
        SuiteSection(name="dual", prompts=prompts, overrides=dual),
    ]
    videos, seconds = render_suites(model, settings, suites, [SEED], base={"video.num_frames": settings.long_frames})
    exact = videos["exact_long"]
    clips = split_frames(settings.long_frames, settings.long_workers)
    records: list[dict] = []
    rows = [
        with_seams(compare("exact (1 worker)", exact, exact, records), exact, clips),
        with_seams(
            compare(f"dual-scope clip={settings.long_workers}", videos["dual"], exact, records), videos["dual"], clips
        ),
    ]
    return Section(rows, records, seconds)


def with_seams(row: dict, videos: list[Video], clips: list[range]) -> dict:
    """``row`` with the change across the clip boundaries against inside the clips
    (``videogen.eval.seams.boundary_jumps``; the exact render's, measured at the same frames, is the
    baseline: exact clip parallelism renders the one-worker video)."""
    jumps = [boundary_jumps(v.frames, clips, main_track(v)) for v in videos]
    return {
        **row,
        "boundary_pixel_ratio": mean(j.pixel_ratio for j in jumps),
        "boundary_track_ratio": mean(j.track_ratio for j in jumps),
    }


# -- prompt schedules: where the switch lands ------------------------------------------------------


def schedule_switch(model: str, settings: Settings) -> Section:
    """A schedule switching the object's colour half way through, blended over ``settings.blend`` frames:
    the frame where the video switches (``videogen.eval.seams.switch_frame``) against the frame asked."""
    frames, blend = settings.frames, settings.blend
    asked = frames // 2
    window = (asked - blend // 2, asked + blend - blend // 2)
    colours = list(PALETTE)
    records, started = [], time.perf_counter()
    bundle = load_bundle(ModelConfig(path=model))
    for i in range(settings.renders):
        before, after = colours[i % len(colours)], colours[(i + 1 + i // len(colours)) % len(colours)]
        shape, direction = SHAPES[i % len(SHAPES)], list(DIRECTIONS)[i % len(DIRECTIONS)]
        texts = [f"{article(c)} {c} {shape} moving {direction}" for c in (before, after)]
        job = render_job_config(
            model,
            settings,
            {
                "prompts": {
                    "schedule": [{"text": texts[0], "end": asked}, {"text": texts[1], "start": asked}],
                    "blend_frames": blend,
                },
            },
        )
        video = render_frames(job, bundle=bundle)
        switch = switch_frame(video, before, after)
        records.append({"from": texts[0], "to": texts[1], "asked": asked, "switch": switch, "seed": SEED})
        print(f"schedule {i + 1}/{settings.renders}: {before} -> {after} at {switch} (asked {asked})", flush=True)
    errors = [abs(r["switch"] - asked) for r in records]
    row = {
        "renders": len(records),
        "frames": frames,
        "asked": asked,
        "blend_frames": blend,
        "mean_abs_error_frames": mean(errors),
        "within_blend_pct": pct(window[0] <= r["switch"] <= window[1] for r in records),
        "exact_pct": pct(e == 0 for e in errors),
    }
    return Section([row], records, time.perf_counter() - started)


def render_job_config(model: str, settings: Settings, sections: dict):
    """A one-worker render job on ``model`` at the benchmark's size, steps and guidance, plus ``sections``."""
    config = OmegaConf.merge(
        OmegaConf.structured(JobConfig),
        {
            "model": {"path": model},
            "video": {"width": SIZE, "height": SIZE, "num_frames": settings.frames},
            "sampler": {"steps": settings.steps, "guidance_scale": settings.guidance},
            "noise": {"seed": SEED},
            "output": {"path": str(Path(tempfile.gettempdir()) / "bench_quality_unused.mp4")},
        },
        sections,
    )
    return OmegaConf.to_object(config)


# -- the settings of each approximation ------------------------------------------------------------

SWEEPS: dict[str, list[tuple[str, dict]]] = {
    "parastep": [
        ("step=2, warm-up 3 (default)", {"parallel.step": 2}),
        ("step=3, warm-up 3", {"parallel.step": 3}),
        ("step=4, warm-up 3", {"parallel.step": 4}),
        ("step=2, warm-up 1", {"parallel.step": 2, "parallel.step_warmup": 1}),
        ("step=2, warm-up 6", {"parallel.step": 2, "parallel.step_warmup": 6}),
    ],
    "pcpp": [
        ("patch=2, portion 0.125", {"parallel.patch": 2, "parallel.patch_options.portion": 0.125}),
        ("patch=2, portion 0.25 (default)", {"parallel.patch": 2}),
        ("patch=2, portion 0.5", {"parallel.patch": 2, "parallel.patch_options.portion": 0.5}),
        ("patch=2, portion all (DistriFusion)", {"parallel.patch": 2, "parallel.patch_options.portion": "all"}),
        ("patch=2, warm-up 1", {"parallel.patch": 2, "parallel.patch_options.warmup_steps": 1}),
        ("patch=2, warm-up 8", {"parallel.patch": 2, "parallel.patch_options.warmup_steps": 8}),
    ],
}


def dual_scope_sweep(workers: int) -> list[tuple[str, dict]]:
    base = {"parallel.clip": workers, "parallel.clip_mode": "dual_scope"}
    ds = "parallel.dual_scope"
    return [
        ("radius 8, 16 global, switch 800 (default)", base),
        ("radius 2", {**base, f"{ds}.local_radius": 2}),
        ("radius 4", {**base, f"{ds}.local_radius": 4}),
        ("4 global frames", {**base, f"{ds}.global_frames": 4}),
        ("switch 500", {**base, f"{ds}.switch_timestep": 500.0}),
        ("switch 1000 (global scope always)", {**base, f"{ds}.switch_timestep": 1000.0}),
    ]


def sweeps(model: str, settings: Settings) -> tuple[Section, Section]:
    """ParaStep's N and warm-up, PCPP's portion and warm-up (on ``sweep_renders`` adherence prompts), and
    dual-scope's radius, global frames and switch timestep (``sweep_long_renders`` videos of
    ``sweep_long_frames`` frames on ``long_workers`` clip workers), each against the exact render."""
    prompts = single_object_prompts(settings.sweep_renders)
    named = [(f"{group} {label}", o) for group, rows in SWEEPS.items() for label, o in rows]
    suites = [SuiteSection(name="exact", prompts=prompts)] + [
        SuiteSection(name=f"s{i}", prompts=prompts, overrides=o) for i, (_, o) in enumerate(named)
    ]
    videos, seconds = render_suites(model, settings, suites, [SEED])
    records: list[dict] = []
    rows = [compare("exact (1 worker)", videos["exact"], videos["exact"], records)]
    rows += [compare(label, videos[f"s{i}"], videos["exact"], records) for i, (label, _) in enumerate(named)]
    long_prompts = single_object_prompts(settings.sweep_long_renders)
    dual = dual_scope_sweep(settings.long_workers)
    suites = [SuiteSection(name="exact", prompts=long_prompts)] + [
        SuiteSection(name=f"d{i}", prompts=long_prompts, overrides=o) for i, (_, o) in enumerate(dual)
    ]
    long_videos, long_seconds = render_suites(
        model, settings, suites, [SEED], base={"video.num_frames": settings.sweep_long_frames}
    )
    clips = split_frames(settings.sweep_long_frames, settings.long_workers)
    exact = long_videos["exact"]
    long_records: list[dict] = []
    long_rows = [with_seams(compare("exact (1 worker)", exact, exact, long_records), exact, clips)]
    for i, (label, _) in enumerate(dual):
        row = compare(f"dual-scope clip={settings.long_workers}, {label}", long_videos[f"d{i}"], exact, long_records)
        long_rows.append(with_seams(row, long_videos[f"d{i}"], clips))
    return Section(rows, records, seconds), Section(long_rows, long_records, long_seconds)


# -- 2: motion control -----------------------------------------------------------------------------


def warped_base(kind: str, degradation: float = 0.5) -> dict:
    """The render-job keys of warped noise along the drag or the camera pan."""
    base = {"noise.kind": "warped", "noise.warped.degradation": degradation}
    if kind == "drag":
        return {**base, "noise.warped.source": "drag", "noise.warped.drags": [DRAG]}
    return {**base, "noise.warped.source": "camera", "noise.warped.camera.moves": [{"pan": PAN}]}


def motion_spec(kind: str) -> WarpedNoiseSpec:
    """The motion of :func:`warped_base` as the spec the errors are measured against."""
    if kind == "drag":
        points = lambda items: [PointSpec(**p) for p in items]  # noqa: E731
        return WarpedNoiseSpec(source="drag", drags=[DragSpec(points(DRAG["polygon"]), points(DRAG["path"]))])
    return WarpedNoiseSpec(source="camera", camera=CameraSpec(moves=[CameraMoveSpec(pan=PAN)]))


def motion_prompts(kind: str, count: int, contradict: bool) -> list[str]:
    """Drag: ``a <colour> <shape> moving right`` (the drag's way; ``left`` contradicts it). Camera:
    ``... standing still, camera panning right`` (the world's caption of this move; ``left`` contradicts)."""
    out = []
    for i in range(count):
        colour, shape = colour_shape(i)
        obj = f"{article(colour)} {colour} {shape}"
        way = "left" if contradict else "right"
        out.append(f"{obj} moving {way}" if kind == "drag" else f"{obj} standing still, camera panning {way}")
    return out


def motion(model: str, settings: Settings) -> Section:
    count, seeds = split_counts(settings.renders)
    rows, records, seconds = [], [], 0.0
    for kind in ("drag", "camera"):
        warped = warped_base(kind, settings.degradation)
        suites = [
            SuiteSection(name=f"{kind}_warped", prompts=motion_prompts(kind, count, False), overrides=warped),
            SuiteSection(name=f"{kind}_gaussian", prompts=motion_prompts(kind, count, False)),
            SuiteSection(name=f"{kind}_contradicting", prompts=motion_prompts(kind, count, True), overrides=warped),
        ]
        videos, spent = render_suites(model, settings, suites, seeds)
        seconds += spent
        spec = motion_spec(kind)
        for variant in ("warped", "gaussian", "contradicting"):
            group = videos[f"{kind}_{variant}"]
            errors = [motion_errors(main_track(v), spec, SIZE, SIZE) for v in group]
            records += [record(v, motion_errors=e.__dict__) for v, e in zip(group, errors, strict=True)]
            seen = [e for e in errors if e.frames > 0]
            absolute = kind == "drag"
            rows.append(
                {
                    "motion": kind,
                    "noise": "gaussian" if variant == "gaussian" else "warped",
                    "prompt": "contradicts" if variant == "contradicting" else "agrees",
                    "renders": len(group),
                    "seen": len(seen),
                    "endpoint_px": mean(e.endpoint if absolute else e.anchored_endpoint for e in seen),
                    "mean_px": mean(e.mean if absolute else e.anchored_mean for e in seen),
                    "anchored_endpoint_px": mean(e.anchored_endpoint for e in seen),
                    "anchored_mean_px": mean(e.anchored_mean for e in seen),
                    "start_offset_px": mean(e.start_offset for e in seen),
                    "travel_px": mean(e.travel for e in seen),
                    "requested_travel_px": mean(e.requested_travel for e in seen),
                    "colour_shape_pct": pct(v.row.colour_ok and v.row.shape_ok for v in group),
                }
            )
    return Section(rows, records, seconds)


# -- 3: image-to-video -------------------------------------------------------------------------------


def first_frames(count: int, folder: Path) -> list[tuple[str, Path, np.ndarray]]:
    """``count`` (prompt, image file, image) triples: one object of the world, its colour, shape and
    direction cycling, placed 12 px behind the centre along its direction so its path stays in frame."""
    import imageio.v3 as iio

    moving = [d for d in DIRECTIONS if d != "still"]
    backgrounds = ("navy", "black", "gray")
    out = []
    for i in range(count):
        colour, shape = colour_shape(i)
        direction = moving[i % len(moving)]
        ux, uy = DIRECTIONS[direction]
        centre = (SIZE / 2 - 12 * ux, SIZE / 2 - 12 * uy)
        obj = ObjectSpec(shape, colour, 0.14 * SIZE, centre, (0.0, 0.0), "still")
        image = render_scene(Scene((obj,), backgrounds[i % 3], width=SIZE, height=SIZE, frames=1)).frames[0]
        path = folder / f"first_{i:02d}.png"
        iio.imwrite(path, image)
        out.append((f"{article(colour)} {colour} {shape} moving {direction}", path, image))
    return out


I2V_VARIANTS = {
    "trained fusion": {"image.fusion": "auto"},
    "linear fusion (training-free)": {"image.fusion": "none"},
    "image start only": {"image.fusion": "none", "image.weight_first": 0.0, "image.weight_floor": 0.0},
}


def image_to_video(model: str, settings: Settings) -> tuple[Section, dict]:
    from videogen.models.loader import load_bundle
    from videogen.noise.i2v_spec import ImageToVideoSpec, resolve_fusion

    vae = load_bundle(ModelConfig(path=model)).vae
    fusion = resolve_fusion(ImageToVideoSpec(), model)
    with tempfile.TemporaryDirectory() as tmp:
        images = first_frames(settings.renders, Path(tmp))
        suites = [
            SuiteSection(name=f"i2v{v}_{i:02d}", prompts=[prompt], overrides={**over, "image.path": str(path)})
            for v, over in enumerate(I2V_VARIANTS.values())
            for i, (prompt, path, _) in enumerate(images)
        ]
        videos, seconds = render_suites(model, settings, suites, [SEED])
    recon = [vae_round_trip(vae, image) for _, _, image in images]
    ceiling = [psnr(r, image) for r, (_, _, image) in zip(recon, images, strict=True)]
    rows, records = [], []
    for v, name in enumerate(I2V_VARIANTS):
        group = [videos[f"i2v{v}_{i:02d}"][0] for i in range(len(images))]
        first = [g.frames[0] for g in group]
        vs_image = [psnr(f, image) for f, (_, _, image) in zip(first, images, strict=True)]
        identity = [object_identity(g) for g in group]
        shapes = [parse_caption(g.plan.prompt).objects[0].shape for g in group]
        for g, p, c, i in zip(group, vs_image, ceiling, identity, strict=True):
            records.append(record(g, variant=name, psnr_vs_image_db=p, vae_ceiling_db=c, identity=i))
        rows.append(
            {
                "variant": name,
                "renders": len(group),
                "psnr_vs_image_db": mean(vs_image),
                "vae_ceiling_db": mean(ceiling),
                "gap_to_ceiling_db": mean(c - p for c, p in zip(ceiling, vs_image, strict=True)),
                "psnr_vs_vae_recon_db": mean(psnr(f, r) for f, r in zip(first, recon, strict=True)),
                "ssim_vs_image": mean(ssim(f, image) for f, (_, _, image) in zip(first, images, strict=True)),
                "colour_frames_pct": 100.0 * mean(g.row.colour_hit_rate for g in group),
                "identity_frames_pct": 100.0 * mean(identity),
                **{
                    f"identity_{shape}_pct": 100.0
                    * mean(i for i, s in zip(identity, shapes, strict=True) if s == shape)
                    for shape in SHAPES
                },
                "identity_90_pct": pct(i >= 0.9 for i in identity),
            }
        )
    return Section(rows, records, seconds), {"fusion_module": str(fusion) if fusion else None}


# -- the run -----------------------------------------------------------------------------------------


def settings_for(args) -> Settings:
    if args.quick:
        return Settings(
            True, args.renders or 2, 12, 10, args.guidance, 32, 2, 1, args.degradation, 4, 2, 32, 1, args.layout
        )
    return Settings(
        False,
        args.renders or 20,
        16,
        25,
        args.guidance,
        128,
        4,
        args.long_renders,
        args.degradation,
        4,
        args.sweep_renders,
        64,
        args.sweep_long_renders,
        args.layout,
    )


def finite(value):
    """``value`` with every non-finite float (an exact render's infinite PSNR, an unseen track's NaN)
    replaced by None, so the JSON file is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def timed(label: str, seconds: dict, run: Callable):
    started = time.perf_counter()
    out = run()
    seconds[label] = time.perf_counter() - started
    print(f"\n{label}: {seconds[label]:.0f} s", flush=True)
    return out


ROWS = ("adherence", "long", "motion", "i2v", "schedule", "sweeps")
DEFAULT_ROWS = ROWS[:-1]
"""The benchmark's groups of rows (``--rows``): adherence with PCPP and ParaStep, the long dual-scope
video, motion control, image-to-video, the prompt-schedule switch, and (only when asked: about an hour
here) the sweeps of each approximation's settings."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few renders, 12 frames, 10 steps (1-2 minutes)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--model", default="shapes", help="model to measure (default: the bundled shapes model)")
    parser.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance scale of the renders")
    parser.add_argument("--renders", type=int, default=0, help="renders per row (default 20; 2 with --quick)")
    parser.add_argument("--long-renders", type=int, default=3, help="renders of the 128-frame dual-scope row")
    parser.add_argument(
        "--degradation", type=float, default=0.5, help="warped noise's degradation in the motion rows (default 0.5)"
    )
    parser.add_argument(
        "--layout",
        choices=("auto", "off"),
        default="auto",
        help="the renders' layout.prior: auto (as users render) or off (the UNet alone; docs/layout.md)",
    )
    parser.add_argument("--sweep-renders", type=int, default=8, help="renders per setting in the sweeps (default 8)")
    parser.add_argument(
        "--sweep-long-renders", type=int, default=2, help="renders per dual-scope setting in the sweeps (default 2)"
    )
    parser.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help=f"comma-separated groups to run (default: {','.join(DEFAULT_ROWS)}; also: sweeps)",
    )
    args = parser.parse_args()
    chosen = [r.strip() for r in args.rows.split(",") if r.strip()]
    if unknown := [r for r in chosen if r not in ROWS]:
        parser.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    s = settings_for(args)
    head = f"{args.model}, {SIZE}x{SIZE}, {s.frames} frames, {s.steps} DDIM steps, guidance {s.guidance}"
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    results: dict = {"quick": s.quick, "model": args.model, "settings": s.__dict__, "rows": chosen}
    targets: dict = {}
    tables: list[tuple[str, list[dict]]] = []

    if "adherence" in chosen:
        adherence, approx = timed(
            "adherence, PCPP, ParaStep", seconds, lambda: adherence_and_approximations(args.model, s)
        )
        row = adherence.rows[0]
        tables.append((f"prompt adherence ({head}; {row['renders']} renders)", adherence.rows))
        tables.append((f"approximation costs against the exact render ({head})", approx.rows))
        targets["colour_shape_rate"] = target(row["colour_shape_pct"] / 100, ">= 0.9")
        targets["direction_rate"] = target(row["direction_pct"] / 100, ">= 0.8")
        exact = approx.rows[0]
        for name, mode in (("pcpp", approx.rows[1]), ("parastep", approx.rows[2])):
            gap = abs(mode["identity_frames_pct"] - exact["identity_frames_pct"])
            targets[f"{name}_adherence_gap_points"] = target(gap, "<= 3")
        results["adherence"] = adherence.rows
        results["approximations"] = {"rows": approx.rows, "videos": approx.records}
    if "long" in chosen:
        long = timed("long video", seconds, lambda: long_video(args.model, s))
        tables.append(
            (
                f"dual-scope attention on {s.long_workers} clip workers ({args.model}, {SIZE}x{SIZE}, "
                f"{s.long_frames} frames, {s.steps} DDIM steps, guidance {s.guidance})",
                long.rows,
            )
        )
        exact, dual = long.rows
        targets["dual_scope_adherence_gap_points"] = target(
            abs(dual["identity_frames_pct"] - exact["identity_frames_pct"]), "<= 5"
        )
        targets["dual_scope_continuity_gap_points"] = target(
            abs(dual["continuity_pct"] - exact["continuity_pct"]), "<= 5"
        )
        results["long_video"] = {"rows": long.rows, "videos": long.records}
    if "motion" in chosen:
        motion_rows = timed("motion control", seconds, lambda: motion(args.model, s))
        warped = f"warped noise: degradation {s.degradation}, upsample 4"
        tables.append((f"motion control ({head}; {warped})", motion_rows.rows))
        by_motion = {(r["motion"], r["noise"], r["prompt"]): r for r in motion_rows.rows}
        for kind in ("drag", "camera"):
            warped, gaussian = by_motion[(kind, "warped", "agrees")], by_motion[(kind, "gaussian", "agrees")]
            targets[f"{kind}_warped_endpoint_over_gaussian"] = target(
                warped["endpoint_px"] / gaussian["endpoint_px"], "<= 0.3333"
            )
            targets[f"{kind}_warped_endpoint_over_width"] = target(warped["endpoint_px"] / SIZE, "< 0.1")
        results["motion"] = {"rows": motion_rows.rows, "videos": motion_rows.records}
    if "i2v" in chosen:
        i2v, setup = timed("image-to-video", seconds, lambda: image_to_video(args.model, s))
        tables.append((f"image-to-video ({head}; fusion module: {setup['fusion_module']})", i2v.rows))
        trained = i2v.rows[0]
        targets["i2v_first_frame_gap_to_vae_ceiling_db"] = target(trained["gap_to_ceiling_db"], "<= 1.0")
        targets["i2v_identity_frames"] = target(trained["identity_frames_pct"] / 100, ">= 0.9")
        results["image_to_video"] = {"rows": i2v.rows, "videos": i2v.records, **setup}
    if "schedule" in chosen:
        schedule = timed("prompt schedule", seconds, lambda: schedule_switch(args.model, s))
        tables.append((f"prompt schedule switch ({head}; colour change at frame {s.frames // 2})", schedule.rows))
        targets["schedule_switch_within_blend"] = target(schedule.rows[0]["within_blend_pct"] / 100, ">= 0.9")
        results["schedule"] = {"rows": schedule.rows, "videos": schedule.records}
    if "sweeps" in chosen:
        sweep, long_sweep = timed("settings sweeps", seconds, lambda: sweeps(args.model, s))
        tables.append((f"ParaStep and PCPP settings against the exact render ({head})", sweep.rows))
        tables.append(
            (
                f"dual-scope settings on {s.long_workers} clip workers ({args.model}, {s.sweep_long_frames} frames)",
                long_sweep.rows,
            )
        )
        results["sweeps"] = {
            "rows": sweep.rows,
            "videos": sweep.records,
            "dual_scope_rows": long_sweep.rows,
            "dual_scope_videos": long_sweep.records,
        }

    total = time.perf_counter() - started
    for title, rows in tables:
        print_table(title, rows)
    print(f"\nwall time: {total:.0f} s ({', '.join(f'{k}: {v:.0f} s' for k, v in seconds.items())})")
    results["seconds"] = {"total": total, **seconds}
    write_json(args.json, finite(results), targets)


if __name__ == "__main__":
    main()
