"""Bad input ends with exit status 2, one ``videogen: error:`` line naming the key or file, and nothing
written or deleted: sizes and steps beyond the model, non-finite numbers, unreadable job files, models
whose config disagrees with their weights, unwritable output locations, corrupt checkpoints, a user's
folder in the way, failed workers, impossible dual-scope radii and prompt blends, bad training videos."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from videogen.cli import main
from videogen.config import JobConfig, ModelConfig, PromptsConfig, PromptSegment, VideoConfig, job_problems, load_job
from videogen.errors import ConfigError, MediaError
from videogen.io.atomic import partial_path, write_text_atomic
from videogen.io.writer import PNGFolderSink, open_sink
from videogen.prompts import frame_weights

SMALL = ["video.width=32", "video.height=32", "video.num_frames=4", "sampler.steps=2", "--no-progress"]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` with its bytes (None for folders): what a failed command must not change."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _one_line_error(capsys, argv: list[str], *named: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("videogen: error: "), err
    for word in named:
        assert word in err, err
    return err


def _refused(capsys, tmp_path: Path, job: str, overrides: list[str], *named: str) -> str:
    """Render ``job`` with ``overrides``: one error line naming ``named``, and ``tmp_path`` exactly as it was."""
    before = _tree(tmp_path)
    err = _one_line_error(capsys, ["render", job, *SMALL, *overrides], *named)
    assert _tree(tmp_path) == before
    return err


# -- bounds from the model and scheduler, and non-finite numbers --------------------------------------------------


def test_a_video_too_large_for_memory_is_refused_with_the_bound(make_job, tmp_path, capsys):
    overrides = ["video.width=8000000", "video.height=8000000"]
    err = _refused(capsys, tmp_path, make_job(), overrides, "video.width", "GiB")
    assert "more than the" in err


def test_more_steps_than_the_scheduler_knows_are_refused_with_the_bound(make_job, tmp_path, capsys):
    err = _refused(capsys, tmp_path, make_job(), ["sampler.steps=100000"], "sampler.steps", "at most 1000")
    assert "100000" in err


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("sampler.guidance_scale=nan", "sampler.guidance_scale"),
        ("sampler.guidance_scale=.inf", "sampler.guidance_scale"),
        ("parallel.dual_scope.switch_timestep=-.inf", "parallel.dual_scope.switch_timestep"),
        ("image.strength=.nan", "image.strength"),
    ],
)
def test_non_finite_numbers_are_refused_anywhere(make_job, tmp_path, capsys, override, key):
    err = _refused(capsys, tmp_path, make_job(), [override], key, "not a finite number")
    assert err.startswith("videogen: error: command line: ")


def test_non_finite_numbers_in_the_job_file_name_the_file(make_job, tmp_path, capsys):
    job = make_job(sampler={"guidance_scale": float("nan")})
    _refused(capsys, tmp_path, job, [], f"{job}: sampler.guidance_scale: nan is not a finite number")


# -- job files --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe\x00\x81" + random.Random(0).randbytes(4096), "not a text file"),
        (b"model:\n  path: [unclosed\n", "not valid YAML"),
        (b"42\n", "not a single value"),
        (b"just some words\n", "just some words"),
        (b"- a list\n", "not a list"),
    ],
)
def test_a_job_file_that_is_not_a_job_is_one_line(tmp_path, capsys, content, expected):
    job = tmp_path / "job.yaml"
    job.write_bytes(content)
    _refused(capsys, tmp_path, str(job), [], str(job), expected)


# -- models -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "key", "value", "what", "tensor"),
    [
        ("unet", "in_channels", 8, "UNet", "conv_in.weight"),
        ("text_encoder", "intermediate_size", 48, "text encoder", "mlp.fc1.weight"),
    ],
)
def test_a_config_that_disagrees_with_its_weights_names_the_component_and_tensor(
    make_job, tiny_model_dir, tmp_path, capsys, component, key, value, what, tensor
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config_path = model / component / "config.json"
    config = json.loads(config_path.read_text())
    config[key] = value
    config_path.write_text(json.dumps(config))
    err = _refused(
        capsys, tmp_path, make_job(model={"path": str(model)}), [], what, "config.json does not match", tensor
    )
    assert str(model / component) in err


# -- output locations -------------------------------------------------------------------------------------------


def test_output_under_a_regular_file_is_refused(make_job, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine\n")
    target = tmp_path / "afile" / "video.mp4"
    _refused(capsys, tmp_path, make_job(output={"path": str(target)}), [], "output.path", "is a file")


def test_output_under_proc_is_refused(make_job, tmp_path, capsys):
    _refused(capsys, tmp_path, make_job(output={"path": "/proc/videogen-out/video.mp4"}), [], "output.path", "/proc")


def test_output_equal_to_an_existing_folder_is_refused_and_left_alone(make_job, tmp_path, capsys):
    folder = tmp_path / "video.mp4"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine\n")
    _refused(capsys, tmp_path, make_job(output={"path": str(folder)}), [], "output.path", "existing folder")
    assert not partial_path(folder).exists()


def test_an_empty_output_path_is_refused(make_job, tmp_path, capsys):
    _refused(capsys, tmp_path, make_job(output={"path": ""}), [], "output.path", "is empty")


def test_a_checkpoint_dir_that_is_a_file_is_refused(make_job, tmp_path, capsys):
    (tmp_path / "ckpt").write_text("mine\n")
    job = make_job(output={"path": str(tmp_path / "out.mp4"), "checkpoint_dir": str(tmp_path / "ckpt")})
    _refused(capsys, tmp_path, job, ["sampler.checkpoint_every=1"], "output.checkpoint_dir", "is an existing file")


def test_a_png_output_over_a_users_folder_is_refused_and_the_files_kept(make_job, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "frame_000000.png").write_bytes(b"not really")
    err = _refused(capsys, tmp_path, make_job(output={"path": str(folder)}), [], "output.path", "notes.txt")
    assert "did not write" in err
    assert (folder / "notes.txt").read_text() == "my notes\n"


def test_a_png_output_replaces_a_previous_folder_of_frames(make_job, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        (folder / f"frame_{i:06d}.png").write_bytes(b"old frame")
    assert main(["render", make_job(output={"path": str(folder)}), *SMALL]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"frame_{i:06d}.png" for i in range(4)]
    assert all(p.read_bytes() != b"old frame" for p in folder.iterdir())


def test_the_png_writer_never_replaces_a_folder_holding_other_files(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    with pytest.raises(MediaError, match="notes.txt"):
        PNGFolderSink(folder)
    assert (folder / "notes.txt").read_text() == "my notes\n"


def test_a_writer_whose_close_fails_leaves_no_partial_file(tmp_path):
    target = tmp_path / "video.mp4"
    target.mkdir()  # commit cannot replace a folder with a file
    with pytest.raises(IsADirectoryError), open_sink(target, fps=8) as sink:
        sink.write(np.zeros((2, 16, 16, 3), dtype=np.uint8))
    assert not partial_path(target).exists() and target.is_dir()
    with pytest.raises(IsADirectoryError):
        write_text_atomic(target, "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]


# -- checkpoints ------------------------------------------------------------------------------------------------


def _truncated_checkpoint(path: Path) -> None:
    save_file({"latents": torch.zeros(1, 4, 4, 8, 8)}, str(path), metadata={"fingerprint": "x", "scheduler": "{}"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_resume_from_a_corrupt_checkpoint_is_one_line(make_job, tmp_path, capsys, damage):
    ckpt = tmp_path / "out.mp4.ckpt"
    ckpt.mkdir()
    path = ckpt / "step00000.frames0-4.safetensors"
    if damage == "garbage":
        path.write_bytes(random.Random(1).randbytes(1000))
    elif damage == "truncated":
        _truncated_checkpoint(path)
    else:
        path.write_bytes(b"")
    err = _refused(capsys, tmp_path, make_job(), ["--resume"], str(path), "unreadable checkpoint")
    assert not (tmp_path / "out.mp4").exists()
    assert "Traceback" not in err


# -- workers ----------------------------------------------------------------------------------------------------


def test_a_local_worker_failure_is_one_line_naming_a_log_with_the_traceback(
    make_job, tmp_path, tmp_path_factory, capsys, monkeypatch
):
    import parallel.runner
    from parallel.launch import _raise_failures

    remote = 'Traceback (most recent call last):\n  File "render.py", line 1\nZeroDivisionError: division by zero\n'

    def failing_run_local(*args, **kwargs):
        report = ("error", time.time(), "ZeroDivisionError", "division by zero", remote, None, False)
        _raise_failures({1: report}, {}, [])

    logs = tmp_path_factory.mktemp("logs")
    monkeypatch.setattr(tempfile, "tempdir", str(logs))
    monkeypatch.setattr(parallel.runner, "run_local", failing_run_local)
    overrides = ["parallel.clip=2", "parallel.launcher=local", "video.num_frames=8"]
    job = make_job()
    before = _tree(tmp_path)
    err = _one_line_error(capsys, ["render", job, *SMALL, *overrides], "rank 1", "ZeroDivisionError")
    assert _tree(tmp_path) == before
    log = Path(err.rsplit(" ", 1)[-1])
    assert log.parent == logs and "ZeroDivisionError: division by zero" in log.read_text()
    assert "Traceback (most recent call last)" in log.read_text()


def test_a_ray_worker_failure_is_one_line_naming_a_log_with_the_traceback(tmp_path, monkeypatch):
    from ray.exceptions import RayTaskError

    from parallel.ray_runtime import _failure

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    remote = 'Traceback (most recent call last):\n  File "render.py", line 1\nZeroDivisionError: division by zero'
    error = _failure(1, RayTaskError("RenderActor.run", remote, ZeroDivisionError("division by zero")))
    line = str(error)
    assert len(line.splitlines()) == 1 and line.startswith("worker rank 1 failed: ZeroDivisionError")
    log = Path(line.rsplit(" ", 1)[-1])
    assert log.parent == tmp_path and 'File "render.py", line 1' in log.read_text()


def test_a_dual_scope_radius_longer_than_a_clip_names_local_radius(make_job, tmp_path, capsys):
    overrides = ["parallel.clip=2", "parallel.clip_mode=dual_scope", "parallel.dual_scope.local_radius=1000"]
    err = _refused(capsys, tmp_path, make_job(video={"num_frames": 8}), overrides, "parallel.dual_scope.local_radius")
    assert "at most 2" in err and "parallel.clip:" not in err


# -- prompt blends ----------------------------------------------------------------------------------------------


def _job(lengths: list[int], blend: int) -> JobConfig:
    schedule, start = [], 0
    for i, n in enumerate(lengths):
        schedule.append(PromptSegment(text=f"p{i}", start=start, end=start + n))
        start += n
    return JobConfig(
        model=ModelConfig(path="tiny"),
        prompts=PromptsConfig(text="", schedule=schedule, blend_frames=blend),
        video=VideoConfig(num_frames=sum(lengths)),
    )


def test_a_blend_wider_than_a_segment_is_refused_naming_the_segment(make_job, tmp_path, capsys):
    schedule = "prompts.schedule=[{text: a, end: 2}, {text: b, start: 2}]"
    err = _refused(capsys, tmp_path, make_job(), ["prompts.text=null", schedule, "prompts.blend_frames=6"], "")
    assert "prompts.blend_frames: 6" in err and "prompts.schedule[0]" in err and "at most 4" in err


@pytest.mark.parametrize("lengths", [[2, 6], [3, 2, 2, 2], [1, 1, 1], [5, 3, 4], [4, 4]])
def test_every_allowed_blend_mixes_only_neighbouring_segments_with_weights_summing_to_one(lengths):
    frames = sum(lengths)
    owner = [i for i, n in enumerate(lengths) for _ in range(n)]
    allowed = 0
    for blend in range(0, frames + 2):
        job = _job(lengths, blend)
        if any(key == "prompts.blend_frames" for key, _ in job_problems(job)):
            with pytest.raises(ConfigError, match="blend_frames"):
                frame_weights(job.prompts, frames)
            continue
        allowed += 1
        for f, weights in enumerate(frame_weights(job.prompts, frames)):
            segments = [i for i, _ in weights.pairs]
            assert owner[f] in segments and all(abs(i - owner[f]) <= 1 for i in segments)
            assert abs(sum(w for _, w in weights.pairs) - 1.0) < 1e-9
            assert all(0 < w <= 1 for _, w in weights.pairs)
    assert allowed >= 2  # 0 and at least one real blend


# -- friction: prompts.text=null, a fast --help ---------------------------------------------------------------------


def test_prompts_text_null_switches_a_job_to_a_schedule(make_job):
    schedule = "prompts.schedule=[{text: a red balloon, end: 4}, {text: a blue kite, start: 4}]"
    job = load_job(make_job(), ["prompts.text=null", schedule]).config
    assert job.prompts.text == "" and [s.text for s in job.prompts.schedule] == ["a red balloon", "a blue kite"]
    job = load_job(make_job(prompts={"text": None, "schedule": [{"text": "a red balloon"}]})).config
    assert job.prompts.text == ""


def test_help_answers_without_importing_torch_or_diffusers():
    code = (
        "import sys, time\n"
        "from videogen.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - started
    assert "HEAVY []" in out, out
    for command in ("render", "eval", "warp-noise", "train", "train-trip"):
        assert command in out
    assert seconds < 10  # well under 2 s on an idle machine; the import check above is the real test


@pytest.mark.parametrize(("command", "flag"), [("warp-noise", "--frames"), ("train-trip", "--model")])
def test_lazily_built_commands_still_have_their_full_help(capsys, command, flag):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and flag in capsys.readouterr().out


# -- train-trip ---------------------------------------------------------------------------------------------------


def _short_video(path: Path, frames: int) -> None:
    with open_sink(path, fps=8) as sink:
        sink.write(np.random.default_rng(0).integers(0, 255, (frames, 32, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("bad", ["corrupt", "short"])
def test_train_trip_on_a_bad_video_leaves_no_output_folder(tiny_model_dir, tmp_path, capsys, bad):
    data = tmp_path / "data"
    data.mkdir()
    video = data / "clip.mp4"
    if bad == "corrupt":
        video.write_bytes(random.Random(2).randbytes(5000))
    else:
        _short_video(video, frames=2)
    out = tmp_path / "run"
    argv = ["train-trip", "--model", str(tiny_model_dir), "--data", str(video), "--out", str(out)]
    argv += ["--frames", "4", "--width", "32", "--height", "32", "--steps", "1", "--device", "cpu"]
    argv += ["--dim", "16", "--heads", "2", "--log-every", "0"]
    before = _tree(tmp_path)
    err = _one_line_error(capsys, argv)
    assert str(video) in err or "frames one clip needs" in err
    assert not out.exists() and _tree(tmp_path) == before


def test_train_trip_refuses_an_output_that_is_a_file(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "run").write_text("mine\n")
    argv = ["train-trip", "--model", str(tiny_model_dir), "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    before = _tree(tmp_path)
    _one_line_error(capsys, argv, "--out", "is an existing file")
    assert _tree(tmp_path) == before
