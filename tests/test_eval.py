"""``videogen eval``: the evaluation schema, the scorer against the shapes world's ground truth, and a
tiny end-to-end evaluation through the command line."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import astuple, fields, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from videogen.cli import main
from videogen.config import ModelConfig
from videogen.data.measure import parse_caption, track_colour
from videogen.data.shapes import BACKGROUNDS, PALETTE, SHAPES, ObjectSpec, Scene, ShapesWorld, WorldSpec, render_scene
from videogen.errors import ConfigError
from videogen.eval import (
    REPEAT_SEED_STRIDE,
    EvalJob,
    SuiteSection,
    SuiteSummary,
    VideoRow,
    identity_rate,
    load_eval_job,
    motion_errors,
    plan_renders,
    psnr,
    requested_motion,
    requested_track,
    run_eval,
    score_row,
    single_object_prompts,
    ssim,
    summarize,
    summarize_suites,
    track_continuity,
    vae_round_trip,
)
from videogen.noise.warp_spec import CameraMoveSpec, CameraSpec, DragSpec, PointSpec, WarpedNoiseSpec

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "eval_shapes.yaml"

# -- the schema ---------------------------------------------------------------------------------


def _write(tmp_path, **changes) -> str:
    job = {
        "model": {"path": "tiny"},
        "base": {"video.width": 32, "video.height": 32, "video.num_frames": 4, "sampler.steps": 2},
        "seeds": 1,
        "out": str(tmp_path / "eval"),
        "suites": [{"name": "one", "prompts": ["a red circle moving right"]}],
    }
    for key, value in changes.items():
        if value is None:
            job.pop(key)
        else:
            job[key] = value
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def _suite(**fields_) -> list[dict]:
    return [{"name": "one", "prompts": ["a red circle moving right"], **fields_}]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": None}, "model.path: a value is required"),
        ({"seeds": 0}, "seeds: 0: a count of seeds is >= 1"),
        ({"seeds": [1, 1]}, "seeds: [1, 1]: a seed is listed twice"),
        ({"sheets": {"every": 2}}, "sheets: Key 'sheets' not in 'EvalJob'"),
        ({"suites": []}, "suites: list at least one suite"),
        ({"suites": [{"prompts": ["a red circle moving right"]}]}, "suites[0].name: a value is required"),
        ({"suites": _suite(name="my suite")}, "suites[0].name: 'my suite': use letters"),
        ({"suites": _suite(prompts=[])}, "suites[0].prompts: list at least one prompt"),
        ({"suites": _suite(prompts=["a pink circle moving right"])}, "suites[0].prompts[0]: colour 'pink'"),
        (
            {"suites": _suite(prompts=["a red circle and a red square moving up"])},
            "suites[0].prompts[0]: 'a red circle and a red square moving up': two objects of one colour",
        ),
        ({"suites": _suite(repeat=0)}, "suites[0].repeat: must be >= 1"),
        ({"suites": _suite(overrides={"parallel.clpi": 2})}, "suites[0].overrides.parallel.clpi: Key 'clpi'"),
        ({"suites": _suite(overrides={"parallel": {"clip": "two"}})}, "suites[0].overrides.parallel.clip: Value"),
        ({"suites": _suite(overrides=["parallel.clip"])}, "suites[0].overrides[0]: 'parallel.clip' does not look"),
        ({"suites": _suite(overrides="parallel.clip=2")}, "suites[0].overrides: a mapping"),
        ({"suites": {"name": "one"}}, "suites: a mapping cannot replace a list here"),
        ({"suites": _suite(prompts={"first": "a red circle moving right"})}, "suites[0].prompts: a mapping cannot"),
        ({"base": ["video.width=30"]}, "base[0]: 30 is not a positive multiple of 8"),
        (
            {"suites": _suite(overrides=["parallel.cfg=2", "sampler.guidance_scale=1.0"])},
            "suites[0].overrides[0]: splitting guidance branches needs sampler.guidance_scale > 1",
        ),
        ({"base": {"video.width": 30}}, "base.video.width: 30 is not a positive multiple of 8"),
        ({"base": {"video": {"num_frames": 1}}}, "base.video.num_frames: 1: scoring motion needs at least two"),
        ({"base": {"noise.seed": 3}}, "base.noise.seed: noise.seed cannot be set here: the seeds are"),
        ({"base": {"model": {"dtype": "fp16"}}}, "base.model.dtype: model.dtype cannot be set here"),
        ({"base": {"prompts.text": "a red circle moving left"}}, "base.prompts.text: prompts.text cannot be set"),
        ({"sheet": {"every": 0}}, "sheet.every: must be >= 1"),
        ({"scoring": {"min_rate": 1.5}}, "scoring.min_rate: a fraction of frames in [0, 1]"),
    ],
)
def test_schema_mistakes_are_one_line_naming_the_key(tmp_path, changes, expected):
    path = _write(tmp_path, **changes)
    with pytest.raises(ConfigError) as caught:
        load_eval_job(path)
    message = str(caught.value)
    assert expected in message, message
    assert message.startswith(f"{path}: ") and len(message.splitlines()) == 1


def test_command_line_overrides_are_named_as_such(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: seeds: -2: a count of seeds is >= 1$"):
        load_eval_job(_write(tmp_path), ["seeds=-2"])
    job = load_eval_job(_write(tmp_path), ["seeds=[4, 9]", "base.sampler.steps=3", "out=null"]).config
    assert job.seeds == [4, 9] and job.out is None
    assert plan_renders(job)[0].job.sampler.steps == 3


def test_a_key_written_nested_wins_and_the_command_line_wins_over_the_file(tmp_path):
    base = {"video": {"width": 48}, "video.width": 32, "video.height": 32, "video.num_frames": 4}
    job = load_eval_job(_write(tmp_path, base=base)).config
    assert job.base == {"video.width": 48, "video.height": 32, "video.num_frames": 4}  # one key each
    assert plan_renders(job)[0].job.video.width == 48
    job = load_eval_job(_write(tmp_path, base=base), ["base.video.width=40", "base.sampler.steps=3"]).config
    assert job.base == {"video.width": 40, "video.height": 32, "video.num_frames": 4, "sampler.steps": 3}
    assert plan_renders(job)[0].job.video.width == 40


def test_the_example_evaluation_loads_and_plans_every_render():
    job = load_eval_job(EXAMPLE, ["model.path=tiny"]).config
    plans = plan_renders(job)
    assert len(plans) == 2 * sum(len(s.prompts) for s in job.suites)
    assert {p.suite: p.workers for p in plans} == {
        "adherence": 1,
        "two_objects": 1,
        "camera": 1,
        "clip_exact": 2,
        "clip_dual_scope": 2,
    }
    dual = next(p.job for p in plans if p.suite == "clip_dual_scope")
    assert dual.parallel.clip_mode == "dual_scope" and dual.parallel.dual_scope.local_radius == 4
    assert dual.parallel.launcher == "local" and dual.video.num_frames == 16 and dual.sampler.steps == 25


# -- the plan -----------------------------------------------------------------------------------


def test_every_suite_prompt_and_seed_is_one_render_and_repeat_adds_seeds():
    job = EvalJob(
        model=ModelConfig(path="tiny"),
        base={"video": {"width": 32, "height": 32}, "video.num_frames": 8},
        seeds=[3, 5],
        out=None,
        suites=[
            SuiteSection(name="plain", prompts=["a red circle moving right", "a blue square standing still"]),
            SuiteSection(
                name="split",
                prompts=["a green triangle moving up"],
                overrides=["parallel.clip=2", "parallel.launcher=local", "video.num_frames=12"],
                repeat=2,
            ),
        ],
    )
    plans = plan_renders(job)
    assert [(p.suite, p.index, p.prompt, p.seed) for p in plans] == [
        ("plain", 0, "a red circle moving right", 3),
        ("plain", 1, "a red circle moving right", 5),
        ("plain", 2, "a blue square standing still", 3),
        ("plain", 3, "a blue square standing still", 5),
        ("split", 0, "a green triangle moving up", 3),
        ("split", 1, "a green triangle moving up", 5),
        ("split", 2, "a green triangle moving up", 3 + REPEAT_SEED_STRIDE),
        ("split", 3, "a green triangle moving up", 5 + REPEAT_SEED_STRIDE),
    ]
    for plan in plans:
        assert plan.job.prompts.text == plan.prompt and plan.job.noise.seed == plan.seed
        assert (plan.job.video.width, plan.job.video.height) == (32, 32) and plan.job.model.path == "tiny"
    assert [p.workers for p in plans] == [1] * 4 + [2] * 4
    assert {p.job.video.num_frames for p in plans[:4]} == {8} and {p.job.video.num_frames for p in plans[4:]} == {12}
    assert plans[0].job is not plans[1].job  # each render owns its job


def test_single_object_prompts_cycle_the_world_vocabulary():
    prompts = single_object_prompts(24)
    specs = [parse_caption(p).objects[0] for p in prompts]
    assert len(set(prompts)) == 24 and prompts[0] == "a red circle moving right"
    assert {s.colour for s in specs[:6]} == set(PALETTE) and {s.shape for s in specs[:3]} == set(SHAPES)
    assert len({s.direction for s in specs[:8]}) == 8 and "an orange" in prompts[5]


# -- the scorer: the world's own clips are ground truth -------------------------------------------


def _world_clips(count: int):
    """Single-object clips of the world that never bounce: each shows exactly its caption."""
    world = ShapesWorld(WorldSpec(frames=8, two_objects=0.0, pan=0.0, still=0.0), seed=6)
    clips = []
    for index in range(100):
        clip = world.clip(index)
        steps = np.diff(clip.centres.astype(np.float64), axis=0)
        if np.abs(steps - steps[:1]).max() < 1e-3:
            clips.append(clip)
        if len(clips) == count:
            return clips
    raise AssertionError("too few bounce-free clips")


def test_world_clips_score_100_percent_and_a_blank_video_0():
    clips = _world_clips(4)
    perfect = [score_row(c.frames, c.caption, suite="world", seed=i) for i, c in enumerate(clips)]
    summary = summarize(perfect)
    for name in ("ok", "colour", "shape", "count", "direction", "direction_near", "speed", "pan"):
        assert getattr(summary, name) == 100.0, name
    assert summary.colour_hits == summary.shape_hits == summary.count_hits == 100.0
    assert summary.jump_ratio < 1.5 and summary.area_cv < 0.05 and summary.background_flicker < 0.5
    for row, clip in zip(perfect, clips, strict=True):
        obj = clip.scene.objects[0]
        assert row.direction == obj.direction
        assert math.hypot(row.velocity_x - obj.velocity[0], row.velocity_y - obj.velocity[1]) < 0.1
        assert row.frames == 8 and row.workers == 1

    blank = np.full((8, 64, 64, 3), BACKGROUNDS["black"], dtype=np.uint8)
    empty = [score_row(blank, c.caption, suite="blank") for c in clips]
    summary = summarize(empty)
    for name in ("ok", "colour", "shape", "count", "direction", "direction_near", "speed"):
        assert getattr(summary, name) == 0.0, name
    assert summary.pan == 100.0  # no pan asked for, none shown
    assert summary.colour_hits == summary.shape_hits == summary.count_hits == 0.0
    assert all(r.direction == "unknown" for r in empty)
    unseen = score_row(blank, "a red circle moving right slowly")  # no speed was measured: none matches
    assert not unseen.speed_ok and not unseen.direction_near and math.isnan(unseen.speed)
    assert math.isnan(summary.jump_ratio) and math.isnan(summary.area_cv)  # no track, nothing to average

    mixed = summarize_suites(perfect[:3] + empty[:1])
    assert [s.suite for s in mixed] == ["world", "blank"] and mixed[0].ok == 100.0 and mixed[1].ok == 0.0
    together = summarize(perfect[:3] + empty[:1], "all")
    assert together.suite == "all" and together.videos == 4
    assert together.ok == together.colour == together.direction == 75.0 and together.pan == 100.0


def test_summary_rates_and_means_come_from_the_rows():
    row = VideoRow(
        suite="s",
        prompt="a red circle moving right",
        seed=0,
        ok=True,
        colour_ok=True,
        shape_ok=True,
        count_ok=True,
        direction_ok=True,
        direction_near=True,
        speed_ok=True,
        pan_ok=True,
        colour_hit_rate=1.0,
        shape_hit_rate=1.0,
        count_rate=1.0,
        direction="right",
        speed=2.0,
        velocity_x=2.0,
        velocity_y=0.0,
        pan_direction="",
        jump_ratio=1.0,
        area_cv=0.01,
        background_flicker=0.5,
        frames=8,
        workers=1,
        seconds=2.0,
    )
    rows = [
        row,
        replace(row, ok=False, shape_ok=False, shape_hit_rate=0.25, jump_ratio=3.0, seconds=4.0),
        replace(row, ok=False, speed_ok=False, direction_ok=False, colour_hit_rate=0.5, jump_ratio=math.nan),
        replace(row, ok=False, count_ok=False, count_rate=0.0, area_cv=math.nan, seconds=math.nan),
    ]
    s = summarize(rows)
    assert (s.videos, s.ok, s.colour, s.shape, s.count, s.direction, s.direction_near, s.speed, s.pan) == (
        4,
        25.0,
        100.0,
        75.0,
        75.0,
        75.0,
        100.0,
        75.0,
        100.0,
    )
    assert s.colour_hits == pytest.approx(100 * 3.5 / 4) and s.shape_hits == pytest.approx(100 * 3.25 / 4)
    assert s.count_hits == 75.0
    assert s.jump_ratio == pytest.approx(5.0 / 3) and s.area_cv == pytest.approx(0.01)  # NaNs are left out
    assert s.seconds == pytest.approx(8.0 / 3) and s.total_seconds == pytest.approx(8.0)
    with pytest.raises(ValueError, match="at least one video"):
        summarize([])


# -- end to end, on the tiny model ----------------------------------------------------------------


def _tiny_eval(tmp_path, model_dir, **changes) -> str:
    job = {
        "model": {"path": str(model_dir)},
        "base": {"video.width": 32, "video.height": 32, "video.num_frames": 4, "sampler.steps": 2},
        "seeds": 1,
        "out": str(tmp_path / "eval"),
        "videos": True,
        "sheet": {"every": 2, "scale": 1},
        "suites": [
            {"name": "single", "prompts": ["a red circle moving right", "a blue square standing still"]},
            {
                "name": "pair",
                "prompts": ["a green triangle and a yellow circle moving up"],
                "overrides": {"sampler": {"guidance_scale": 3.0}},
                "repeat": 2,
            },
        ],
        **changes,
    }
    path = tmp_path / "tiny_eval.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_eval_command_writes_rows_summaries_and_contact_sheets(tmp_path, tiny_model_dir, capsys):
    assert main(["eval", _tiny_eval(tmp_path, tiny_model_dir)]) == 0
    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert len(progress) == 4 and progress[0].startswith("[1/4] single seed 0 'a red circle moving right': colour")
    assert "suite" in captured.out and "ok%" in captured.out and "all" in captured.out
    assert "4 renders in" in captured.out
    out = tmp_path / "eval"

    with open(out / "videos.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["suite"] for r in table] == ["single", "single", "pair", "pair"]
    assert [int(r["seed"]) for r in table] == [0, 0, 0, REPEAT_SEED_STRIDE]
    assert list(table[0]) == [f.name for f in fields(VideoRow)]
    assert all(r["ok"] in ("0", "1") and float(r["seconds"]) > 0 and r["frames"] == "4" for r in table)

    report = json.loads((out / "report.json").read_text())
    assert len(report["rows"]) == 4 and report["overall"]["videos"] == 4
    assert [s["suite"] for s in report["suites"]] == ["single", "pair"]
    assert set(report["suites"][0]) == {f.name for f in fields(SuiteSummary)}
    rows = [VideoRow(**{k: math.nan if v is None else v for k, v in r.items()}) for r in report["rows"]]
    for written, recomputed in zip(report["suites"], summarize_suites(rows), strict=True):
        for key, value in written.items():
            expected = getattr(recomputed, key)
            assert value == expected or (value is None and math.isnan(expected)) or value == pytest.approx(expected)
    assert report["job"]["suites"][1]["repeat"] == 2

    single, pair = (np.asarray(Image.open(out / "sheets" / f"{name}.png")) for name in ("single", "pair"))
    assert single.shape == (2 * 32 + 2, 2 * 32 + 2, 3) == pair.shape  # 2 videos x frames 0 and 2, 2-px gaps
    assert sorted(p.name for p in (out / "videos").rglob("*.mp4")) == [
        "000_seed0.mp4",
        "000_seed0.mp4",
        "001_seed0.mp4",
        f"001_seed{REPEAT_SEED_STRIDE}.mp4",
    ]
    assert not list(out.glob(".eval-renders-*"))
    again = load_eval_job(out / "eval.yaml").config  # the resolved evaluation runs as it is
    assert [len(s.prompts) for s in again.suites] == [2, 1] and again.base["video.width"] == 32


def test_eval_help_lists_the_keys(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["eval", "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    for word in ("suites", "seeds", "base", "overrides", "repeat", "min_rate", "videos.csv", "--no-progress"):
        assert word in out


def test_an_impossible_frame_split_fails_before_anything_renders(tmp_path, tiny_model_dir):
    path = _tiny_eval(
        tmp_path,
        tiny_model_dir,
        suites=[{"name": "split", "prompts": ["a red circle moving right"], "overrides": {"parallel.clip": 2}}],
    )
    job = load_eval_job(path).config
    with pytest.raises(ConfigError, match=r"^suites\[0\]\.overrides\.parallel\.clip: splitting 4 frames"):
        run_eval(job, progress=False)
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_a_parallel_suite_renders_on_workers_the_frames_one_worker_renders(tmp_path, tiny_model_dir):
    prompt = "a red circle moving right"
    split = {"parallel.clip": 2, "parallel.clip_mode": "exact", "parallel.launcher": "local"}
    path = _tiny_eval(
        tmp_path,
        tiny_model_dir,
        out=None,
        videos=False,
        base={"video.width": 32, "video.height": 32, "video.num_frames": 8, "sampler.steps": 2},
        sheet={"every": 1, "scale": 1},
        suites=[{"name": "one", "prompts": [prompt]}, {"name": "two", "prompts": [prompt], "overrides": split}],
    )
    report = run_eval(load_eval_job(path).config, progress=False)
    assert [(r.suite, r.workers, r.frames) for r in report.rows] == [("one", 1, 8), ("two", 2, 8)]
    one, two = report.sheets["one"][0], report.sheets["two"][0]
    assert one.shape == two.shape == (8, 32, 32, 3)
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1  # exact mode: the same video


# -- motion against a requested path, frames against an image: checked on the world's own clips -----


def _scene_clip(obj: ObjectSpec, frames: int = 16, pan: tuple[float, float] = (0.0, 0.0), pan_direction: str = ""):
    texture = ((0.06, 0.3, 0.7, 20.0), (0.05, 1.1, 2.0, 27.0)) if pan_direction else ()
    scene = Scene((obj,), "navy", texture, pan, pan_direction, 64, 64, frames)
    return render_scene(scene)


def _drag(start, end, half=10.0, **extra) -> WarpedNoiseSpec:
    """A drag grabbing the square of side ``2 half`` around ``start`` (pixels) and moving it to ``end``."""
    x0, y0 = start
    corners = [(x0 - half, y0 - half), (x0 + half, y0 - half), (x0 + half, y0 + half), (x0 - half, y0 + half)]
    drag = DragSpec(
        polygon=[PointSpec(x / 64, y / 64) for x, y in corners],
        path=[PointSpec(x0 / 64, y0 / 64), PointSpec(end[0] / 64, end[1] / 64)],
    )
    return WarpedNoiseSpec(source="drag", drags=[drag], **extra)


def test_a_world_object_moving_along_a_drag_path_matches_the_requested_track():
    obj = ObjectSpec("square", "red", 8.0, (16.0, 30.0), (2.0, 0.5), "right")
    clip = _scene_clip(obj)
    end = tuple(clip.centres[-1, 0])
    spec = _drag((16.0, 30.0), end)
    maps = requested_motion(spec, 16, 64, 64)
    grab = requested_track(maps, (16.0, 30.0))
    assert np.abs(grab - clip.centres[:, 0]).max() < 1e-9  # the grab point moves as the world moves the object
    # a finer motion clock (two warp steps per frame) asks for the same positions per video frame
    assert np.abs(requested_motion(_drag((16.0, 30.0), end, temporal_stride=2), 16, 64, 64) - maps).max() < 1e-9

    track = track_colour(clip.frames, "red").centres  # measured, not the ground truth
    errors = motion_errors(track, spec, 64, 64)
    assert errors.frames == 16 and errors.endpoint < 0.25 and errors.mean < 0.25 and errors.start_offset < 0.25
    assert errors.anchored_endpoint < 0.25 and errors.anchored_mean < 0.25
    assert errors.travel == pytest.approx(math.hypot(30, 7.5), abs=0.25) == errors.requested_travel

    still = track_colour(_scene_clip(replace(obj, velocity=(0.0, 0.0), direction="still")).frames, "red").centres
    stuck = motion_errors(still, spec, 64, 64)  # an object that ignores the drag misses by the whole path
    assert stuck.endpoint == pytest.approx(math.hypot(30, 7.5), abs=0.25) and stuck.travel < 0.25
    assert stuck.mean == pytest.approx(stuck.endpoint / 2, abs=0.25)  # off by t/15 of the path at frame t


def test_a_world_camera_pan_matches_the_requested_camera_move():
    # the world's "camera panning right": the scene slides left by 1 px/frame at 64 px
    obj = ObjectSpec("circle", "yellow", 7.0, (46.0, 30.0), (0.0, 0.0), "still")
    clip = _scene_clip(obj, pan=(-1.0, 0.0), pan_direction="right")
    spec = WarpedNoiseSpec(source="camera", camera=CameraSpec(moves=[CameraMoveSpec(pan=1 / 64)]))
    maps = requested_motion(spec, 16, 64, 64)
    assert np.abs(requested_track(maps, tuple(clip.centres[0, 0])) - clip.centres[:, 0]).max() < 1e-9
    errors = motion_errors(track_colour(clip.frames, "yellow").centres, spec, 64, 64)
    assert (
        errors.anchored_endpoint < 0.25 and errors.anchored_mean < 0.25 and errors.travel == pytest.approx(15, abs=0.25)
    )
    assert math.isnan(errors.endpoint) and math.isnan(errors.start_offset)  # a camera move grabs no point
    # the opposite move: the object should have gone 15 px right; it went 15 px left
    other = WarpedNoiseSpec(source="camera", camera=CameraSpec(moves=[CameraMoveSpec(pan=-1 / 64)]))
    assert motion_errors(track_colour(clip.frames, "yellow").centres, other, 64, 64).anchored_endpoint == pytest.approx(
        30, abs=0.3
    )


def test_requested_camera_moves_compose_frame_by_frame_about_the_centre():
    zoom = WarpedNoiseSpec(source="camera", camera=CameraSpec(moves=[CameraMoveSpec(frames=3, zoom=0.05)]))
    track = requested_track(requested_motion(zoom, 6, 64, 48), (40.0, 10.0))
    centre = np.array([32.0, 24.0])  # the frame's centre in pixel-edge coordinates
    scales = [1.05**t for t in (0, 1, 2, 3, 3, 3)]  # the move lasts 3 frames, then the camera holds
    expected = np.array([centre + s * (np.array([40.0, 10.0]) - centre) for s in scales])
    assert np.abs(track - expected).max() < 1e-9
    anchored = requested_track(requested_motion(zoom, 6, 64, 48), tuple(expected[2]), anchor=2)
    assert np.abs(anchored - expected).max() < 1e-9  # anchoring on a later frame finds the same track
    with pytest.raises(ValueError, match="states no path"):
        requested_motion(WarpedNoiseSpec(source="flow_file", flow_file="f.npy"), 4, 64, 64)
    blank = np.full((4, 2), np.nan)
    assert motion_errors(blank, zoom, 64, 48).frames == 0 and math.isnan(motion_errors(blank, zoom, 64, 48).mean)


def test_track_continuity_counts_the_steps_that_do_not_jump():
    for clip in _world_clips(4):
        assert track_continuity(clip.centres[:, 0]) == 1.0
        assert track_continuity(track_colour(clip.frames, clip.scene.objects[0].colour).centres) == 1.0
    steady = np.stack([np.linspace(10, 40, 16), np.full(16, 30.0)], axis=1)  # 2 px/frame
    jumped = steady.copy()
    jumped[7] += (0.0, 12.0)  # one frame off the path: the pairs into and out of it jump
    assert track_continuity(jumped) == pytest.approx(13 / 15)
    gone = steady.copy()
    gone[7] = np.nan  # a frame where the object is not seen breaks both pairs around it
    assert track_continuity(gone) == pytest.approx(13 / 15)
    still = np.full((16, 2), 30.0) + np.random.default_rng(0).normal(0, 0.5, (16, 2))  # jitter is not a jump
    assert track_continuity(still) == 1.0
    assert track_continuity(np.full((16, 2), np.nan)) == 0.0 and math.isnan(track_continuity(steady[:1]))


def test_psnr_and_ssim_follow_their_definitions():
    clip = _world_clips(1)[0]
    frame = clip.frames[0]
    assert psnr(frame, frame) == math.inf and ssim(frame, frame) == pytest.approx(1.0)
    brighter = (frame.astype(int) + 4).clip(0, 255).astype(np.uint8)
    mse = np.mean((brighter.astype(float) - frame) ** 2)
    assert psnr(frame, brighter) == pytest.approx(10 * math.log10(255**2 / mse))
    assert psnr(clip.frames, clip.frames[::-1]) < psnr(frame, brighter)  # a whole video pools its frames
    a, b = np.full((16, 16, 3), 60, np.uint8), np.full((16, 16, 3), 100, np.uint8)
    c1 = (0.01 * 255) ** 2  # flat images: only the luminance term is left
    assert ssim(a, b) == pytest.approx((2 * 60 * 100 + c1) / (60**2 + 100**2 + c1))
    noisy = (frame + np.random.default_rng(0).normal(0, 10, frame.shape)).clip(0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(frame, (0, 0), 2.0)
    assert 0.0 < ssim(frame, noisy) < 1.0 and 0.0 < ssim(frame, blurred) < 1.0
    assert ssim(frame, noisy) == pytest.approx(ssim(noisy, frame))  # symmetric
    with pytest.raises(ValueError, match="one shape"):
        psnr(frame, frame[:8])


def test_identity_rate_is_the_share_of_frames_showing_the_object():
    for clip in _world_clips(3):
        obj = clip.scene.objects[0]
        assert identity_rate(clip.frames, obj.colour, obj.shape) == 1.0
        other = next(s for s in SHAPES if s != obj.shape)
        assert identity_rate(clip.frames, obj.colour, other) == 0.0
        half = clip.frames.copy()
        half[4:] = BACKGROUNDS["black"]  # the object leaves after 4 of 8 frames
        assert identity_rate(half, obj.colour, obj.shape) == 0.5
    with pytest.raises(ValueError, match="colour 'pink'"):
        identity_rate(clip.frames, "pink", "circle")


def test_the_bundled_vae_reconstructs_a_world_frame_close_to_it():
    from videogen.models.loader import load_bundle

    clip = _world_clips(1)[0]
    vae = load_bundle(ModelConfig(path="shapes")).vae
    recon = vae_round_trip(vae, clip.frames[0])
    assert recon.shape == clip.frames[0].shape and recon.dtype == np.uint8
    assert psnr(recon, clip.frames[0]) > 30.0  # 36.8 dB on the image-to-video benchmark's first frames


def test_run_eval_hands_each_render_s_frames_to_on_video(tiny_model_dir):
    job = EvalJob(
        model=ModelConfig(path=str(tiny_model_dir)),
        base={"video.width": 32, "video.height": 32, "video.num_frames": 4, "sampler.steps": 2},
        seeds=[0, 1],
        suites=[SuiteSection(name="one", prompts=["a red circle moving right"])],
        out=None,
    )
    seen = []
    report = run_eval(job, progress=False, on_video=lambda plan, frames, row: seen.append((plan.seed, frames, row)))
    assert [s for s, _, _ in seen] == [0, 1] and [r for _, _, r in seen] == report.rows
    for _, frames, row in seen:
        assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
        again = score_row(frames, row.prompt, suite="one", seed=row.seed, seconds=row.seconds)
        same = [a == b or (a != a and b != b) for a, b in zip(astuple(again), astuple(row), strict=True)]
        assert all(same)  # the frames the row was scored on (NaN where a figure is undefined)
