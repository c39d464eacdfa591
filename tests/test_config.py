"""Job loading: layered merge, and one clear line naming key and file for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from videogen.config import JobConfig, PromptSegment, load_job, output_format, resolve_seed, to_yaml
from videogen.errors import ConfigError
from videogen.prompts import frame_weights

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_layers_merge_defaults_then_file_then_overrides(make_job):
    loaded = load_job(make_job(video={"num_frames": 12}), ["video.num_frames=5", "sampler.name=euler"])
    job = loaded.config
    assert job.video.num_frames == 5
    assert job.sampler.name == "euler"
    assert job.video.width == 64  # from the file
    assert job.sampler.eta == 0.0  # from the defaults


@pytest.mark.parametrize(
    ("sections", "overrides", "expected"),
    [
        ({"video": {"colour": 3}}, [], "job.yaml: video.colour: Key 'colour' not in 'VideoConfig'"),
        ({}, ["video.num_frames=abc"], "command line (video.num_frames=abc): video.num_frames: Value 'abc'"),
        ({}, ["sampler.name=heun"], "sampler.name"),
        ({"video": {"width": 63}}, [], "job.yaml: video.width: 63 is not a positive multiple of 8"),
        ({}, ["video.height=100"], "command line: video.height: 100 is not a positive multiple of 8"),
        ({"video": {"num_frames": 0}}, [], "job.yaml: video.num_frames: 0: a video needs at least one frame"),
        ({"sampler": {"steps": 0}}, [], "job.yaml: sampler.steps: 0: at least one denoising step"),
        ({"output": {"path": "x.avi"}}, [], "job.yaml: output.path: x.avi: use .mp4, .gif"),
        ({"parallel": {"clip": 9}}, [], "job.yaml: parallel.clip: 9 workers cannot split 8 frames"),
        ({"sampler": {"name": "euler", "eta": 0.5}}, [], "sampler.eta: eta applies to ddim only"),
        ({}, ["nonsense"], "command line: override 'nonsense' must look like section.key=value"),
        (
            {"prompts": {"text": "", "schedule": [{"text": "a", "start": 0, "end": 4}]}},
            [],
            "job.yaml: prompts.schedule: frame 4 has no prompt",
        ),
        (
            {"prompts": {"text": "", "schedule": [{"text": "a", "end": 5}, {"text": "b", "start": 4}]}},
            [],
            "prompts.schedule: frame 4 is covered by more than one prompt",
        ),
    ],
)
def test_bad_values_raise_one_line_naming_key_and_source(make_job, sections, overrides, expected):
    with pytest.raises(ConfigError) as caught:
        load_job(make_job(**sections), overrides)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_missing_required_model_path_is_named(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("prompts:\n  text: hi\n")
    with pytest.raises(ConfigError, match=r"job.yaml: model.path: a value is required"):
        load_job(path)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml \(line \d+\): not valid YAML"):
        load_job(path)


def test_missing_job_file(tmp_path):
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")


def test_yaml_cannot_execute_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model:\n  path: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError):
        load_job(path)
    assert not (tmp_path / "pwned").exists()


def test_seed_minus_one_is_drawn_and_recorded(make_job):
    job = load_job(make_job(noise={"seed": -1})).config
    seed = resolve_seed(job)
    assert seed >= 0 and job.noise.seed == seed


def test_output_format_follows_suffix():
    assert [output_format(p) for p in ("a.mp4", "b.GIF", "frames")] == ["mp4", "gif", "png"]


# -- prompt schedules in shares of the video ------------------------------------------------------------------------


def _schedule(make_job, segments, frames=8, overrides=(), **prompts):
    job = make_job(prompts={"text": "", "schedule": segments, **prompts}, video={"num_frames": frames})
    return load_job(job, list(overrides)).config.prompts


def test_schedule_boundaries_may_be_shares_of_the_video_and_are_recorded_as_frames(make_job):
    halves = [{"text": "a", "end": 0.5}, {"text": "b", "start": "50%", "end": 1.0}]
    for frames in (8, 20):
        prompts = _schedule(make_job, halves, frames)
        assert [(seg.start, seg.end) for seg in prompts.schedule] == [(0, frames // 2), (frames // 2, frames)]
    # the record of a loaded job holds frames, so it renders the same frames whatever its length becomes
    recorded = yaml.safe_load(to_yaml(load_job(make_job(prompts={"text": "", "schedule": halves})).config))
    assert [(seg["start"], seg["end"]) for seg in recorded["prompts"]["schedule"]] == [(0, 4), (4, 8)]
    # an integer is a frame, even 0 and 1; a share rounds to the nearest frame, halves up
    thirds = [{"text": "a", "end": 1}, {"text": "b", "start": 1, "end": "33.3%"}, {"text": "c", "start": 0.333}]
    assert [(seg.start, seg.end) for seg in _schedule(make_job, thirds, 64).schedule] == [(0, 1), (1, 21), (21, None)]
    assert [(seg.start, seg.end) for seg in _schedule(make_job, thirds, 9).schedule] == [(0, 1), (1, 3), (3, None)]


def test_a_schedule_in_shares_keeps_the_blend_rules(make_job):
    segments = [{"text": "a", "end": "50%"}, {"text": "b", "start": "50%"}]
    assert _schedule(make_job, segments, 16, blend_frames=8).blend_frames == 8
    with pytest.raises(ConfigError) as caught:
        _schedule(make_job, segments, 6, blend_frames=8)
    assert str(caught.value) == (
        f"{Path(make_job()).as_posix()}: prompts.blend_frames: 8 blended frames per boundary take 4 frames of "
        "prompts.schedule[0], which has 3; use at most 6, or longer segments"
    )


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        (
            [{"text": "a", "end": 1.5}, {"text": "b", "start": 1.5}],
            "prompts.schedule[0].end: 1.5: a share of the video is within [0, 1]",
        ),
        (
            [{"text": "a", "end": 4.0}, {"text": "b", "start": 4}],
            "prompts.schedule[0].end: 4.0: a share of the video is within [0, 1]; the frame 4 is written without a "
            "decimal point",
        ),
        (
            [{"text": "a", "end": "150%"}, {"text": "b", "start": 4}],
            "prompts.schedule[0].end: '150%': a percentage of the video is within",
        ),
        (
            [{"text": "a", "end": "half"}, {"text": "b", "start": 4}],
            "prompts.schedule[0].end: 'half': give a frame (a whole number",
        ),
        ([{"text": "a", "end": "4"}, {"text": "b", "start": 4}], "prompts.schedule[0].end: '4': give a frame"),
        (
            [{"text": "a", "end": "50%"}, {"text": "b", "start": "50%", "end": "55%"}, {"text": "c", "start": "55%"}],
            "prompts.schedule[1]: frames [50% = frame 4, 55% = frame 4) are not within the video's 8 frames",
        ),
        ([{"text": "a", "end": 0.25}, {"text": "b", "start": 0.5}], "prompts.schedule: frame 2 has no prompt"),
    ],
)
def test_impossible_shares_name_the_boundary_in_one_line(make_job, segments, expected):
    with pytest.raises(ConfigError) as caught:
        _schedule(make_job, segments)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_typed_job_with_shares_weighs_frames_as_the_loaded_one(make_job):
    shares = [{"text": "a", "end": "37.5%"}, {"text": "b", "start": 0.375}]
    loaded = _schedule(make_job, shares, 8, blend_frames=2)
    typed = JobConfig().prompts
    typed.schedule = [PromptSegment(text="a", end="37.5%"), PromptSegment(text="b", start=0.375)]
    typed.blend_frames = 2
    assert frame_weights(typed, 8) == frame_weights(loaded, 8)
    assert [w.pairs for w in frame_weights(typed, 8)][2:4] == [((0, 0.75), (1, 0.25)), ((0, 0.25), (1, 0.75))]


@pytest.mark.parametrize("frames", [192, 64, 48])
def test_the_long_video_preset_fits_other_lengths(frames):
    overrides = [f"video.num_frames={frames}", "parallel.clip=4"]
    job = load_job(CONFIGS / "long_video.yaml", overrides).config
    third, two_thirds = round(frames / 3), round(2 * frames / 3)
    assert [(s.start, s.end) for s in job.prompts.schedule] == [(0, third), (third, two_thirds), (two_thirds, None)]


# -- model.path replaced on the command line ------------------------------------------------------------------------


def _split_model_job(make_job):
    return make_job(model={"path": "/models/zeroscope", "unet": "/models/vc2_unet", "vae": "/models/zeroscope"})


def test_a_new_model_path_with_component_folders_left_from_the_file_is_one_line_naming_them(make_job):
    job = _split_model_job(make_job)
    with pytest.raises(ConfigError) as caught:
        load_job(job, ["model.path=/data/zs"])
    assert str(caught.value) == (
        "command line: model.path: /data/zs replaces /models/zeroscope, but model.unet and model.vae still point at "
        f"/models/vc2_unet and /models/zeroscope (set in {job}); add model.unet=null model.vae=null to take them "
        "from /data/zs, or set them again on the command line to keep them"
    )
    with pytest.raises(ConfigError, match=r"but model.vae still points at /models/zeroscope .*add model.vae=null"):
        load_job(job, ["model.path=/data/zs", "model.unet=null"])


def test_the_fixes_the_model_path_error_names_load(make_job):
    job = _split_model_job(make_job)
    cleared = load_job(job, ["model.path=/data/zs", "model.unet=null", "model.vae=null"]).config.model
    assert (cleared.path, cleared.unet, cleared.vae) == ("/data/zs", None, None)
    kept = load_job(job, ["model.unet=/models/vc2_unet", "model.path=/data/zs", "model.vae=/data/zs"]).config.model
    assert (kept.path, kept.unet, kept.vae) == ("/data/zs", "/models/vc2_unet", "/data/zs")
    # the file's own folder again, or a model.path the file never set, changes nothing
    assert load_job(job, ["model.path=/models/zeroscope"]).config.model.unet == "/models/vc2_unet"
    partial = Path(job).with_name("unet_only.yaml")
    partial.write_text("model: {unet: /models/vc2_unet}\nprompts: {text: hi}\n")
    assert load_job(partial, ["model.path=/data/zs"]).config.model.unet == "/models/vc2_unet"


def test_a_warped_noise_problem_reaches_the_job_as_its_own_key_and_message(make_job):
    error = ConfigError.of("noise.warped.upsample", "must be an integer in [1, 16], got 0")
    assert (error.key, error.problem, str(error)) == (
        "noise.warped.upsample",
        "must be an integer in [1, 16], got 0",
        "noise.warped.upsample: must be an integer in [1, 16], got 0",
    )
    with pytest.raises(ConfigError) as caught:
        load_job(make_job(), ["noise.kind=warped", "noise.warped.upsample=0"])
    assert str(caught.value) == "command line: noise.warped.upsample: must be an integer in [1, 16], got 0"
