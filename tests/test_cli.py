"""The command line: one-line errors with exit status 2, no output left behind, working help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from videogen.cli import main


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["video.width=30"], "video.width: 30 is not a positive multiple of 8"),
        (["model.path=/definitely/not/here"], "model.path: model folder /definitely/not/here does not exist"),
        (["video.bogus=1"], "video.bogus"),
        (["sampler.steps=0"], "sampler.steps"),
        (["model.attention=xformers"], "xformers runs on CUDA only"),
    ],
)
def test_user_mistakes_print_one_line_and_leave_nothing(make_job, tmp_path, capsys, overrides, expected):
    code = main(["render", make_job(), *overrides, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("videogen: error: ") and expected in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out.mp4").exists()


def test_render_command_reports_what_it_wrote(make_job, tmp_path, capsys):
    assert main(["render", make_job(), "sampler.steps=2", "--no-progress"]) == 0
    assert f"wrote {tmp_path / 'out.mp4'} (8 frames, seed 3" in capsys.readouterr().out


def test_console_script_help_lists_commands_and_keys():
    out = subprocess.run(
        [sys.executable, "-m", "videogen.cli", "render", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for word in ("--resume", "checkpoint_every", "decode_chunk_frames", "prompts", "parallel"):
        assert word in out


def test_info_describes_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "xformers" in out and "gloo" in out


def test_build_tiny_model_writes_a_loadable_folder(tmp_path, capsys):
    from videogen.config import ModelConfig
    from videogen.models.loader import load_bundle

    assert main(["build-tiny-model", str(tmp_path / "m"), "--seed", "1"]) == 0
    assert load_bundle(ModelConfig(path=str(tmp_path / "m"))).latent_channels == 4
