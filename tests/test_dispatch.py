"""One dispatch: the job's world size picks the path, from the command line, the Ray job entrypoint
and the Python API alike, and the meta record proves how many workers ran and what each did."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from videogen.api import render_job
from videogen.cli import main as videogen_main
from videogen.config import load_job
from videogen.errors import ConfigError
from videogen.pipeline import render

pytestmark = pytest.mark.slow

SMALL = {"video": {"width": 32, "height": 32, "num_frames": 8}, "sampler": {"steps": 3}}
LOCAL = ["parallel.launcher=local", "parallel.threads_per_worker=1"]


def _frames(folder: Path) -> np.ndarray:
    return np.stack([iio.imread(p) for p in sorted(folder.glob("frame_*.png"))]).astype(np.int16)


def _meta(output: Path) -> dict:
    return json.loads(output.with_name(output.name + ".meta.json").read_text())


@pytest.fixture(scope="module")
def single_frames(tmp_path_factory, tiny_model_dir):
    from conftest import _write_job

    folder = tmp_path_factory.mktemp("single")
    job = _write_job(folder, tiny_model_dir, **SMALL)
    out = folder / "frames"
    assert videogen_main(["render", job, f"output.path={out}", "--no-progress"]) == 0
    meta = _meta(out)
    assert meta["workers"] == 1 and meta["mesh"] == {"step": 1, "cfg": 1, "clip": 1, "patch": 1}
    assert set(meta["timings"]) == {"checks", "load", "denoise", "decode"}
    assert sum(meta["timings"].values()) <= meta["seconds"] + 1e-3
    return _frames(out)


EXACT_MESHES = {
    "clip": ["parallel.clip=2"],
    "patch": ["parallel.patch=2", "parallel.patch_options.mode=sync", "parallel.patch_options.groupnorm=exact"],
    "cfg": ["parallel.cfg=2"],
    "step": ["parallel.step=2", "parallel.step_warmup=3"],  # every step a warm-up step: exact
    "clip_x_cfg": ["parallel.clip=2", "parallel.cfg=2"],
}


@pytest.mark.parametrize("name", sorted(EXACT_MESHES))
def test_every_axis_from_the_command_line_runs_the_asked_workers_and_equals_one_worker(
    name, make_job, tmp_path, single_frames
):
    out = tmp_path / "frames"
    args = ["render", make_job(**SMALL), f"output.path={out}", *LOCAL, *EXACT_MESHES[name], "--no-progress"]
    assert videogen_main(args) == 0
    meta = _meta(out)
    asked = load_job(make_job(**SMALL), EXACT_MESHES[name]).config.parallel.mesh()
    assert meta["mesh"] == asked
    assert meta["workers"] == len(meta["worker_reports"]) == np.prod(list(asked.values())) > 1
    assert sorted(r["rank"] for r in meta["worker_reports"]) == list(range(meta["workers"]))
    for axis, size in asked.items():
        assert sorted({r["coords"][axis] for r in meta["worker_reports"]}) == list(range(size))
    assert all(r["model_evaluations"] > 0 for r in meta["worker_reports"])
    assert all({"startup", "load", "denoise", "decode"} <= set(r["timings"]) for r in meta["worker_reports"])
    assert {"startup", "load", "denoise", "decode", "wait", "join"} == set(meta["timings"])
    assert sum(meta["timings"].values()) <= meta["seconds"] + 1e-2
    assert np.abs(_frames(out) - single_frames).max() <= 1  # float summation order only


def test_patch_workers_report_their_rows_and_decoded_frames(make_job, tmp_path):
    out = tmp_path / "frames"
    assert (
        videogen_main(["render", make_job(**SMALL), f"output.path={out}", *LOCAL, "parallel.patch=2", "--no-progress"])
        == 0
    )
    reports = _meta(out)["worker_reports"]
    assert [r["rows"] for r in reports] == [[0, 4], [4, 8]]  # the tiny VAE: 32 px -> 8 latent rows, in two bands
    assert [r["frames"] for r in reports] == [[0, 8], [0, 8]]
    decoded = [r["decoded"] for r in reports]
    assert decoded[0][0] == 0 and decoded[-1][1] == 8
    assert all(r["traffic"]["patch"]["conv_halo"]["bytes_received"] > 0 for r in reports)


def test_python_api_dispatches_by_world_size_and_the_one_process_renderer_refuses_many(make_job, tmp_path):
    job = load_job(make_job(**SMALL), [*LOCAL, "parallel.cfg=2", f"output.path={tmp_path / 'api'}"]).config
    with pytest.raises(ConfigError, match=r"asks for 2 workers \(cfg=2\).*videogen.api.render_job"):
        render(job, progress=False)
    result = render_job(job, progress=False)
    assert _meta(result.output)["workers"] == 2


def test_ray_job_entrypoint_takes_the_same_dispatch(make_job, tmp_path, single_frames, monkeypatch):
    from jobs.render import main as job_main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "frames"
    args = [make_job(**SMALL), f"output.path={out}", "parallel.threads_per_worker=1", "parallel.cfg=2", "--no-progress"]
    assert job_main(args) == 0
    meta = _meta(out)
    assert meta["workers"] == 2 and meta["mesh"]["cfg"] == 2
    assert json.loads(json.dumps(meta["worker_reports"]))[1]["coords"]["cfg"] == 1
    assert np.abs(_frames(out) - single_frames).max() <= 1


@pytest.mark.parametrize("name", ["patch", "step", "clip_x_cfg"])
def test_every_axis_through_the_ray_job_entrypoint_runs_the_asked_workers(
    name, ray_cluster, make_job, tmp_path, single_frames, monkeypatch
):
    from jobs.render import main as job_main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "frames"
    args = [make_job(**SMALL), f"output.path={out}", "parallel.threads_per_worker=1", *EXACT_MESHES[name]]
    assert job_main([*args, "--no-progress"]) == 0
    meta = _meta(out)
    assert meta["mesh"] == load_job(make_job(**SMALL), EXACT_MESHES[name]).config.parallel.mesh()
    assert meta["workers"] == len(meta["worker_reports"]) > 1
    assert np.abs(_frames(out) - single_frames).max() <= 1


def test_a_submitted_ray_job_refuses_a_relative_output_path(make_job, tmp_path, monkeypatch, capsys):
    from jobs.render import main as job_main
    from videogen.api import SUBMITTED_JOB_ENV

    monkeypatch.setenv(SUBMITTED_JOB_ENV, "{}")  # what Ray's job supervisor sets for the entrypoint
    monkeypatch.chdir(tmp_path)
    assert job_main([make_job(**SMALL), "output.path=out/video.mp4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "output.path: out/video.mp4 is relative" in err and "output.path=/shared/videos/video.mp4" in err
    assert not (tmp_path / "out").exists()
