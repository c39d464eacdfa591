"""`videogen warp-noise` through its argparse registration, and the noise.warped spec it reads.

Sizes on its command line are the video's pixels, as in a job; the noise is at the model's latent size.
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors import safe_open

from videogen.errors import ConfigError, MediaError
from videogen.io.video_reader import count_frames, iter_frames, probe
from videogen.noise.warp import torch_threads
from videogen.noise.warp_cli import register
from videogen.noise.warp_spec import spec_from_yaml
from videogen.noise.warped_latents import warped_latent_noise

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="videogen")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["warp-noise", *argv])
    return args.handler(args)


def _render(config: Path, out: Path, frames: int, size: int, *extra: str) -> int:
    """warp-noise for ``frames`` frames of a ``size`` x ``size`` pixel video."""
    return _run(
        str(config), "--frames", str(frames), "--height", str(size), "--width", str(size), "--out", str(out), *extra
    )


def _read_noise(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("noise"), f.metadata()


def test_writes_the_sampler_noise_and_a_side_by_side_preview(tmp_path):
    out = tmp_path / "motion" / "camera"
    config = CONFIGS / "motion_camera.yaml"
    # a 64x96 video of the bundled shapes model, whose VAE downsamples by 4: 16x24 latents
    assert _run(str(config), "--frames", "6", "--height", "64", "--width", "96", "--seed", "5", "--out", str(out)) == 0

    noise, metadata = _read_noise(tmp_path / "motion" / "camera.safetensors")
    expected = warped_latent_noise(spec_from_yaml(config), 5, 6, 4, 16, 24, range(6))
    assert noise.shape == (6, 4, 16, 24)
    assert torch.equal(noise, expected[0].permute(1, 0, 2, 3))
    assert metadata["seed"] == "5" and "source: camera" in metadata["spec"]

    preview = tmp_path / "motion" / "camera.preview.mp4"
    scale = math.ceil(256 / 16)
    info = probe(preview)
    assert (info.width, info.height, info.codec) == (2 * 24 * scale, 16 * scale, "h264")
    assert count_frames(preview) == 6
    last = list(iter_frames(preview))[-1]
    assert last[:, : 24 * scale].std() > 20  # noise on the left
    assert last[:, 24 * scale :].max() > 60  # the moving camera's flow colour on the right
    assert sorted(p.name for p in (tmp_path / "motion").iterdir()) == ["camera.preview.mp4", "camera.safetensors"]


def test_a_bare_spec_gives_the_same_noise_as_a_job_section(tmp_path):
    (tmp_path / "bare.yaml").write_text("source: camera\ncamera:\n  moves:\n    - {zoom: 0.05}\n")
    (tmp_path / "job.yaml").write_text(
        "model: {path: tiny}\nnoise:\n  kind: warped\n  warped:\n    source: camera\n"
        "    camera:\n      moves:\n        - {zoom: 0.05}\n"
    )
    assert _render(tmp_path / "job.yaml", tmp_path / "job", 3, 32) == 0  # the tiny model's VAE: x4
    assert _render(tmp_path / "bare.yaml", tmp_path / "bare", 3, 32, "--vae-factor", "4") == 0
    assert torch.equal(_read_noise(tmp_path / "bare.safetensors")[0], _read_noise(tmp_path / "job.safetensors")[0])


def test_the_seed_defaults_to_the_job_files_noise_seed(tmp_path, capsys):
    job = "model: {path: tiny}\nnoise:\n  kind: warped\n  seed: SEED\n  warped:\n    source: camera\n"
    (tmp_path / "job.yaml").write_text(job.replace("SEED", "7"))
    spec = spec_from_yaml(tmp_path / "job.yaml")
    assert _render(tmp_path / "job.yaml", tmp_path / "job", 3, 32) == 0
    noise, metadata = _read_noise(tmp_path / "job.safetensors")
    assert metadata["seed"] == "7"
    assert torch.equal(noise, warped_latent_noise(spec, 7, 3, 4, 8, 8, range(3))[0].permute(1, 0, 2, 3))
    assert _render(tmp_path / "job.yaml", tmp_path / "chosen", 3, 32, "--seed", "2") == 0
    assert _read_noise(tmp_path / "chosen.safetensors")[1]["seed"] == "2"
    (tmp_path / "random.yaml").write_text(job.replace("SEED", "-1"))
    assert _render(tmp_path / "random.yaml", tmp_path / "random", 3, 32) == 0
    drawn = _read_noise(tmp_path / "random.safetensors")[1]["seed"]
    assert int(drawn) >= 0 and f"drew seed {drawn}" in capsys.readouterr().out


def test_the_example_drag_config_renders(tmp_path):
    assert _render(CONFIGS / "motion_drag.yaml", tmp_path / "drag", 4, 64, "--channels", "3") == 0
    noise, _ = _read_noise(tmp_path / "drag.safetensors")
    assert noise.shape == (4, 3, 16, 16)


def _translating_video(path: Path, frames: int) -> None:
    rng = np.random.default_rng(1)
    canvas = rng.integers(0, 255, (96, 96 + 4 * frames, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(8))
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = np.ascontiguousarray(canvas[40:104, 40 - 2 * i : 104 - 2 * i])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_a_driving_video_spec_renders(tmp_path):
    _translating_video(tmp_path / "drive.mp4", frames=5)
    (tmp_path / "video.yaml").write_text(
        f"noise:\n  kind: warped\n  warped:\n    source: video\n    upsample: 2\n    degradation: 0.0\n"
        f"    video: {{path: {tmp_path / 'drive.mp4'}, method: dis}}\n"
    )
    assert _render(tmp_path / "video.yaml", tmp_path / "v", 5, 64, "--vae-factor", "4") == 0
    noise, _ = _read_noise(tmp_path / "v.safetensors")
    assert noise.shape == (5, 4, 16, 16)
    # content moves 2 video px = 0.5 latent px per frame: after 4 frames the noise has shifted 2 columns
    moved = torch.corrcoef(torch.stack([noise[4, :, 4:12, 6:14].reshape(-1), noise[0, :, 4:12, 4:12].reshape(-1)]))
    assert float(moved[0, 1]) > 0.5


YAML_ERRORS = [
    ("source: camera\nbogus: 1\n", "noise.warped.bogus"),
    ("camera: {moves: [{pan: 0.1, bogus: 1}]}\n", "noise.warped.<CameraMoveSpec>.bogus"),
    ("video: {method: raft}\n", "noise.warped.video.method"),
    ("degradation: 2.0\n", "noise.warped.degradation: must be in [0, 1]"),
    ("upsample: abc\n", "noise.warped.upsample"),
    ("upsample: 0\n", "noise.warped.upsample: must be an integer in [1, 16]"),
    ("temporal_stride: 0\n", "noise.warped.temporal_stride"),
    ("source: sideways\n", "noise.warped.source"),
    ("source: video\n", "noise.warped.video.path: source 'video' needs"),
    ("source: flow_file\nflow_file: flows.csv\n", "noise.warped.flow_file: must end in .npy or .safetensors"),
    ("source: drag\n", "noise.warped.drags: source 'drag' needs at least one drag"),
    (
        "source: drag\ndrags:\n  - polygon: [{x: 0, y: 0}, {x: 1, y: 1}]\n    path: [{x: 0, y: 0}, {x: 1, y: 0}]\n",
        "noise.warped.drags[0].polygon: needs at least 3 points",
    ),
    (
        "source: drag\ndrags:\n  - polygon: [{x: 0, y: 0}, {x: 1, y: 0}, {x: 1, y: 1}]\n    path: [{x: 0, y: 0}]\n",
        "noise.warped.drags[0].path",
    ),
    (
        "source: drag\ndrags:\n  - polygon: [{x: 0, y: 0}, {x: 1, y: 0}, {x: 1, y: 1}]\n"
        "    path: [{x: 0, y: 0}, {x: 1, y: 0}]\n    scale: 0\n",
        "noise.warped.drags[0].scale: must be > 0",
    ),
    ("camera:\n  moves:\n    - {pan: 0.1}\n    - {tilt: 0.1}\n", "noise.warped.camera.moves[0].frames"),
    ("camera:\n  moves:\n    - {zoom: -1.5}\n", "noise.warped.camera.moves[0].zoom"),
    ("camera:\n  moves:\n    - {pan: .nan}\n", "noise.warped.camera.moves[0].pan: must be a finite number"),
    ("noise:\n  kind: gaussian\n", "noise.kind: is 'gaussian'"),
    ("noise:\n  kind: warped\n", "noise.warped: missing"),
    ("- just\n- a list\n", "expected a mapping"),
    ("source: [unclosed\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), YAML_ERRORS)
def test_impossible_specs_are_one_line_config_errors_naming_the_key(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        _run(str(path), "--frames", "2", "--height", "8", "--width", "8", "--out", str(tmp_path / "x"))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob(".x*"))


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--frames", "0"), ("--height", "0"), ("--vae-factor", "0"), ("--channels", "0"), ("--seed", "-1")],
)
def test_impossible_arguments_are_config_errors(tmp_path, flag, value):
    argv = {"--frames": "2", "--height": "8", "--width": "8", "--vae-factor": "4", "--channels": "4", "--seed": "0"}
    argv[flag] = value
    flat = [item for pair in argv.items() for item in pair]
    with pytest.raises(ConfigError, match=f"{flag} must be"):
        _run(str(CONFIGS / "motion_camera.yaml"), *flat, "--out", str(tmp_path / "x"))


def test_a_failure_midway_leaves_no_output_under_any_name(tmp_path):
    short = tmp_path / "short.mp4"
    _translating_video(short, frames=2)
    (tmp_path / "spec.yaml").write_text(f"source: video\nvideo: {{path: {short}}}\nupsample: 1\n")
    with pytest.raises(MediaError, match="ends after 2 frames"):
        _run(
            str(tmp_path / "spec.yaml"),
            "--frames",
            "5",
            "--height",
            "64",
            "--width",
            "64",
            "--out",
            str(tmp_path / "o"),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.mp4", "spec.yaml"]


def test_an_unwritable_output_place_is_a_media_error(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(MediaError, match="cannot write"):
        _render(CONFIGS / "motion_camera.yaml", tmp_path / "blocker" / "out", 2, 8)


def test_a_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        _run(
            str(tmp_path / "none.yaml"), "--frames", "2", "--height", "8", "--width", "8", "--out", str(tmp_path / "x")
        )


def _tiny_warped_job(tmp_path: Path, model_dir: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        f"model: {{path: {model_dir}}}\nprompts: {{text: a red balloon}}\n"
        "video: {width: 48, height: 32, num_frames: 3}\n"
        "noise:\n  seed: 11\n  kind: warped\n  warped:\n    source: camera\n    camera: {moves: [{pan: 0.1}]}\n"
    )
    return path


def test_a_job_files_noise_is_the_noise_its_render_starts_from(tmp_path, tiny_model_dir):
    from videogen.config import load_job
    from videogen.models.loader import load_bundle
    from videogen.pipeline import initial_noise

    job_path = _tiny_warped_job(tmp_path, tiny_model_dir)
    assert _run(str(job_path), "--out", str(tmp_path / "n")) == 0  # sizes, seed and model from the job
    noise, metadata = _read_noise(tmp_path / "n.safetensors")
    job = load_job(job_path).config
    rendered = initial_noise(job, 11, range(3), load_bundle(job.model))
    assert noise.shape == (3, 4, 8, 12)  # the tiny model's VAE downsamples the 48x32 video by 4
    assert torch.equal(noise, rendered[0].permute(1, 0, 2, 3))
    assert metadata["vae_factor"] == "4" and metadata["video"] == "3 frames of 48x32"
    # the flags are the video's size too: the same pixels give the same noise
    assert _run(str(job_path), "--frames", "3", "--height", "32", "--width", "48", "--out", str(tmp_path / "f")) == 0
    assert torch.equal(_read_noise(tmp_path / "f.safetensors")[0], noise)


@pytest.mark.parametrize(
    ("spec", "argv", "message"),
    [
        ("job", ["--height", "30"], "--height: 30 is not a positive multiple of 4 (the model's VAE downsamples by 4)"),
        (
            "job",
            ["--width", "48", "--vae-factor", "32"],
            "--width: 48 is not a positive multiple of 32 (--vae-factor 32)",
        ),
        (
            "bare",
            ["--frames", "2", "--height", "64", "--width", "36"],
            "--width: 36 is not a positive multiple of 8 (the VAE factor defaults to 8",
        ),
        (
            "bare",
            ["--frames", "2", "--width", "64"],
            "--height is required for a bare spec (a job file gives its video.height)",
        ),
    ],
)
def test_sizes_that_are_not_whole_latents_are_one_line_errors(tmp_path, tiny_model_dir, spec, argv, message):
    path = _tiny_warped_job(tmp_path, tiny_model_dir)
    if spec == "bare":
        path.write_text("source: camera\n")
    with pytest.raises(ConfigError) as info:
        _run(str(path), *argv, "--out", str(tmp_path / "x"))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.glob("x*"))


def test_a_model_not_on_this_disk_needs_the_factor_and_channels(tmp_path):
    from videogen.errors import ModelLoadError

    path = _tiny_warped_job(tmp_path, tmp_path / "elsewhere")
    with pytest.raises(ModelLoadError, match="does not exist; pass --vae-factor and --channels"):
        _run(str(path), "--out", str(tmp_path / "x"))
    assert _run(str(path), "--vae-factor", "8", "--channels", "4", "--out", str(tmp_path / "x")) == 0
    assert _read_noise(tmp_path / "x.safetensors")[0].shape == (3, 4, 4, 6)
