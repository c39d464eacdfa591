"""`videogen plan`: the mesh, every worker's share and the bytes each axis moves, predicted without
weights, equal to what the render's workers record; and every error a render would stop with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from parallel.plan import measured_traffic, plan_render
from parallel.runner import render_parallel
from videogen.cli import main as videogen_main
from videogen.config import load_job
from videogen.errors import ConfigError

SMALL = {"video": {"width": 64, "height": 64, "num_frames": 8}, "sampler": {"steps": 3}}
LOCAL = ["parallel.launcher=local", "parallel.threads_per_worker=1"]

MESHES = {
    "clip_exact_uneven": ["parallel.clip=3", "video.num_frames=14"],
    "patch_displaced_4": ["parallel.patch=4", "parallel.patch_options.warmup_steps=1", "video.width=128"],
    "cfg_x_patch": ["parallel.cfg=2", "parallel.patch=2", "parallel.patch_options.warmup_steps=1"],
    "dual_scope_x_patch": [
        "parallel.clip=2",
        "parallel.clip_mode=dual_scope",
        "parallel.dual_scope.local_radius=2",
        "parallel.dual_scope.global_frames=2",
        "parallel.patch=2",
    ],
    "step_split_warmup": ["parallel.step=3", "parallel.step_warmup=1", "sampler.steps=6"],
    "step_x_clip": ["parallel.step=2", "parallel.clip=2", "parallel.step_warmup=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MESHES))
def test_predicted_bytes_equal_what_every_worker_of_the_render_records(name, make_job, tmp_path):
    out = tmp_path / "video.mp4"
    args = [*LOCAL, *MESHES[name], f"output.path={out}"]
    plan = plan_render(load_job(make_job(**SMALL), args).config)
    assert not plan.problems
    assert videogen_main(["render", make_job(**SMALL), *args, "--no-progress"]) == 0
    reports = json.loads(out.with_name(out.name + ".meta.json").read_text())["worker_reports"]
    assert len(reports) == plan.world_size == len(plan.traffic)
    for report in reports:
        predicted = plan.traffic[report["rank"]]
        assert measured_traffic(report["traffic"]) == predicted, f"rank {report['rank']}"
        worker = plan.workers[report["rank"]]
        assert report["coords"] == worker.coords
        assert tuple(report["frames"]) == worker.frames and tuple(report["rows"]) == worker.rows
        assert (tuple(report["decoded"]) if report["decoded"] else None) == worker.decodes
        assert report["model_evaluations"] == len(worker.calls)


def test_plan_command_prints_the_mesh_and_shares_and_writes_json(make_job, tmp_path, capsys):
    job = make_job(**SMALL)
    target = tmp_path / "plan.json"
    assert videogen_main(["plan", job, "parallel.clip=2", "parallel.patch=2", "--json", str(target)]) == 0
    text = capsys.readouterr().out
    assert "4 worker(s) (step=1 x cfg=1 x clip=2 x patch=2)" in text
    assert "clip   attn_kv" in text and "patch  groupnorm_temporal" in text
    assert "no problems found" in text
    data = json.loads(target.read_text())
    assert [w["frames"] for w in data["workers"]] == [[0, 4], [0, 4], [4, 8], [4, 8]]
    assert [w["rows"] for w in data["workers"]] == [[0, 8], [8, 16], [0, 8], [8, 16]]
    assert data["mean_traffic"]["clip"]["conv_halo"] > 0


def test_plan_reads_no_weights(make_job, tmp_path, tiny_model_dir, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for weights in (model / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not weights")
    assert videogen_main(["plan", make_job(**SMALL), f"model.path={model}", "parallel.patch=2"]) == 0
    assert "patch  attn_kv" in capsys.readouterr().out


def test_plan_lists_every_error_and_exits_2(make_job, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["parallel.patch=3", f"output.path={blocker}/video.mp4"]
    assert videogen_main(["plan", make_job(**SMALL), *args]) == 2
    text = capsys.readouterr().out
    assert "would stop with 2 error(s)" in text
    assert "parallel.patch: cannot split a 16x16 latent over 3 patch workers" in text
    assert "output.path:" in text
    assert videogen_main(["plan", make_job(**SMALL), f"model.path={tmp_path / 'gone'}"]) == 2
    assert "model.path: model folder" in capsys.readouterr().out


def test_a_render_with_an_impossible_row_split_fails_before_any_worker_starts(make_job, tmp_path):
    job = load_job(make_job(**SMALL), [*LOCAL, "parallel.patch=3", f"output.path={tmp_path / 'v.mp4'}"]).config
    with pytest.raises(ConfigError, match="parallel.patch: cannot split a 16x16 latent over 3 patch workers"):
        render_parallel(job, progress=False)
    assert not list(Path(tmp_path).glob("*v.mp4*"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["parallel.patch=2", "parallel.patch_options.mode=sync", "parallel.patch_options.groupnorm=stale"],
            "parallel.patch_options.mode 'sync' needs parallel.patch_options.groupnorm 'exact'",
        ),
        (["parallel.patch=2", "parallel.patch_options.warmup_steps=0"], "parallel.patch_options.warmup_steps must"),
    ],
)
def test_a_method_option_conflict_names_the_keys_the_user_writes(make_job, capsys, overrides, message):
    assert videogen_main(["plan", make_job(**SMALL), *overrides]) == 2
    assert message in capsys.readouterr().out
