"""Job loading: layered merge, and one clear line naming key and file for every mistake."""

from __future__ import annotations

import pytest

from videogen.config import load_job, output_format, resolve_seed
from videogen.errors import ConfigError


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
