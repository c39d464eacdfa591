"""``videogen eval``: the evaluation schema, the scorer against the shapes world's ground truth, and a
tiny end-to-end evaluation through the command line."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from videogen.cli import main
from videogen.config import ModelConfig
from videogen.data.measure import parse_caption
from videogen.data.shapes import BACKGROUNDS, PALETTE, SHAPES, ShapesWorld, WorldSpec
from videogen.errors import ConfigError
from videogen.eval import (
    REPEAT_SEED_STRIDE,
    EvalJob,
    SuiteSection,
    SuiteSummary,
    VideoRow,
    load_eval_job,
    plan_renders,
    run_eval,
    score_row,
    single_object_prompts,
    summarize,
    summarize_suites,
)

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
