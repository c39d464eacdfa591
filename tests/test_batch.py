"""Batches: a manifest expands into checked jobs, renders them as replicas on Ray (or one after another
here), skips what its records say is complete, and records a failed job without stopping the rest."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import yaml

from videogen.api import render_job
from videogen.batch.cli import BATCH_EPILOG
from videogen.batch.manifest import BatchManifest, ListedJob, load_manifest, plan_batch
from videogen.cli import main as videogen_main
from videogen.errors import ConfigError

SMALL = {
    "video": {"width": 32, "height": 32, "num_frames": 4, "fps": 8},
    "sampler": {"steps": 2, "guidance_scale": 7.5},
    "parallel": {"threads_per_worker": 1},
}


def _manifest(folder: Path, model_dir, **keys) -> str:
    base = {"model": {"path": str(model_dir)}, "prompts": {"text": "a white cloud"}, **SMALL}
    manifest = {"base": base, "out": str(folder / "out")}
    manifest.update(keys)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return str(path)


def _summary(out: Path) -> dict:
    return json.loads((out / "batch.json").read_text())


def _statuses(out: Path) -> list[str]:
    return [row["status"] for row in _summary(out)["jobs"]]


def _frames(folder: Path) -> np.ndarray:
    return np.stack([iio.imread(p) for p in sorted(folder.glob("frame_*.png"))])


def _stamps(out: Path) -> dict[str, int]:
    """Every file under ``out`` (batch.json aside) and its modification time in nanoseconds."""
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "batch.json"}


# --- the manifest, before anything renders ---------------------------------------------------------


def test_a_product_manifest_expands_to_its_jobs_in_order_with_their_names(tmp_path, tiny_model_dir):
    path = _manifest(
        tmp_path,
        tiny_model_dir,
        prompts=["a red balloon", "A Blue kite!"],
        seeds=[3, 5],
        overrides=[{}, ["sampler.steps=3"]],
        grid={"sampler.guidance_scale": [4.0, 6.0]},
        jobs=[{"overrides": {"prompts.text": "a green frog", "noise.seed": 9}, "name": "hero.mp4"}],
        name="{index:02d}_{prompt_slug}_g{sampler.guidance_scale}_v{variant}_s{seed}.mp4",
    )
    plan = plan_batch(load_manifest(path))
    assert len(plan.jobs) == 2 * 2 * 2 * 2 + 1
    first = plan.jobs[:4]  # variant 0 (overrides[0], guidance 4): each prompt with every seed
    assert [j.name for j in first] == [
        "00_a-red-balloon_g4.0_v0_s3.mp4",
        "01_a-red-balloon_g4.0_v0_s5.mp4",
        "02_a-blue-kite_g4.0_v0_s3.mp4",
        "03_a-blue-kite_g4.0_v0_s5.mp4",
    ]
    assert [(j.job.prompts.text, j.job.noise.seed) for j in first] == [
        ("a red balloon", 3),
        ("a red balloon", 5),
        ("A Blue kite!", 3),
        ("A Blue kite!", 5),
    ]
    variants = [(j.variant, j.job.sampler.steps, j.job.sampler.guidance_scale) for j in plan.jobs[:16:4]]
    assert variants == [(0, 2, 4.0), (1, 2, 6.0), (2, 3, 4.0), (3, 3, 6.0)]
    listed = plan.jobs[-1]
    assert listed.name == "hero.mp4" and listed.job.prompts.text == "a green frog" and listed.job.noise.seed == 9
    assert listed.job.output.path == str(tmp_path / "out" / "hero.mp4")
    assert all(j.job.video.width == 32 and j.job.model.path == str(tiny_model_dir) for j in plan.jobs)


def test_a_name_collision_is_one_line_before_anything_renders(tmp_path, tiny_model_dir, capsys):
    path = _manifest(tmp_path, tiny_model_dir, prompts=["a red balloon"], seeds=2, name="{prompt_slug}.mp4")
    with pytest.raises(ConfigError, match=r"job 1: name: its output .*a-red-balloon\.mp4 collides with job 0's output"):
        plan_batch(load_manifest(path))
    assert videogen_main(["batch", path, "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("videogen: error: ") and "job 1: name:" in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_a_bad_key_in_job_k_names_job_k_and_the_key_before_anything_renders(tmp_path, tiny_model_dir, capsys):
    listed = [{"overrides": {"prompts.text": "a frog"}}, {"overrides": {"sampler.stepz": 3}}]
    path = _manifest(tmp_path, tiny_model_dir, prompts=["a", "b"], seeds=2, jobs=listed)
    assert videogen_main(["batch", path, "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert "job 5: jobs[1].overrides.sampler.stepz: Key 'stepz' not in 'SamplerConfig'" in error
    assert "\n" not in error and not (tmp_path / "out").exists()

    path = _manifest(tmp_path, tiny_model_dir, prompts=["a"], grid={"sampler.steps": [2, 0]})
    with pytest.raises(ConfigError, match=r"job 1: grid\.sampler\.steps\[1\]: 0: at least one denoising step"):
        plan_batch(load_manifest(path))
    path = _manifest(tmp_path, tiny_model_dir, seeds=2, overrides=[{}, {"video": {"width": 36}}])
    with pytest.raises(ConfigError, match=r"job 2: overrides\[1\]\.video\.width: 36 is not a positive multiple of 8"):
        plan_batch(load_manifest(path))
    path = _manifest(tmp_path, tiny_model_dir, seeds=2, overrides=[{"noise.seed": 4}])
    with pytest.raises(ConfigError, match=r"job 0: overrides\[0\]\.noise\.seed: .*the batch's seeds set it"):
        plan_batch(load_manifest(path))
    with pytest.raises(ConfigError, match=r"command line: max_parallel: -1"):
        load_manifest(path, ["max_parallel=-1"])


def test_an_output_videogen_did_not_write_is_refused_and_kept(tmp_path, tiny_model_dir):
    path = _manifest(tmp_path, tiny_model_dir, seeds=[0, 1], name="s{seed}.mp4")
    mine = tmp_path / "out" / "s1.mp4"
    mine.parent.mkdir()
    mine.write_bytes(b"a video of my own")
    from videogen.batch.runner import run_batch

    with pytest.raises(ConfigError, match=r"job 1 \(s1\.mp4\): output\.path: .*s1\.mp4 exists and videogen did not"):
        run_batch(plan_batch(load_manifest(path)), progress=False)
    assert mine.read_bytes() == b"a video of my own"
    assert not (tmp_path / "out" / "s0.mp4").exists()


def test_a_submitted_ray_job_refuses_a_relative_out(tmp_path, tiny_model_dir, monkeypatch):
    from videogen.api import SUBMITTED_JOB_ENV
    from videogen.batch.runner import run_batch

    monkeypatch.setenv(SUBMITTED_JOB_ENV, "{}")
    monkeypatch.chdir(tmp_path)
    path = _manifest(tmp_path, tiny_model_dir, seeds=1, out="renders")
    with pytest.raises(ConfigError, match=r"out: renders is relative, and a submitted Ray job runs in Ray's"):
        run_batch(plan_batch(load_manifest(path)), progress=False)
    assert not (tmp_path / "renders").exists()


def test_the_help_epilog_names_every_manifest_key():
    from dataclasses import fields

    for f in (*fields(BatchManifest), *fields(ListedJob)):
        assert f.name in BATCH_EPILOG, f.name


def test_a_local_batch_renders_one_job_after_another_and_skips_them_on_a_rerun(tmp_path, tiny_model_dir):
    drawn = [{"overrides": {"prompts.text": "a blue kite", "noise.seed": -1}}]  # a seed drawn when it renders
    path = _manifest(tmp_path, tiny_model_dir, launcher="local", prompts=["a red balloon"], seeds=[0], jobs=drawn)
    out = tmp_path / "out"
    assert videogen_main(["batch", path, "--no-progress"]) == 0
    rows = _summary(out)["jobs"]
    assert [r["status"] for r in rows] == ["done", "done"] and rows[1]["seed"] != -1
    assert [r["origin"] for r in rows] == ["prompts[0] seeds[0]", "jobs[0]"]
    stamps = _stamps(out)
    assert videogen_main(["batch", path, "--no-progress"]) == 0  # a drawn seed is read back from the record
    assert _statuses(out) == ["skipped", "skipped"] and _stamps(out) == stamps


# --- on a local Ray instance ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, namespace="videogen"
    )
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_a_ray_batch_renders_every_job_as_render_job_would_and_reruns_only_what_changed(
    ray_cluster, tmp_path, tiny_model_dir
):
    listed = [
        {"overrides": {"prompts.text": "a green frog", "sampler.steps": 2}, "name": "frog"},
        {"overrides": {"prompts.text": "a yellow sun", "video.num_frames": 8, "parallel.clip": 2}, "name": "sun"},
    ]
    keys = {"prompts": ["a red balloon", "a blue kite"], "seeds": 2, "jobs": listed, "name": "{index}_s{seed}"}
    path = _manifest(tmp_path, tiny_model_dir, **keys)
    out = tmp_path / "out"
    assert videogen_main(["batch", path, "--no-progress"]) == 0
    summary = _summary(out)
    assert [r["status"] for r in summary["jobs"]] == ["done"] * 6
    assert [r["workers"] for r in summary["jobs"]] == [1, 1, 1, 1, 1, 2]
    for row in summary["jobs"]:  # each output equals its job rendered alone from its own record
        output = Path(row["output"])
        meta = json.loads(Path(f"{output}.meta.json").read_text())
        assert meta["frames"] == row["frames"] and meta["seed"] == row["seed"]
        alone = tmp_path / "alone" / output.name
        render_job(f"{output}.job.yaml", [f"output.path={alone}", "parallel.launcher=local"], progress=False)
        assert np.array_equal(_frames(output), _frames(alone)), row["name"]
    assert [r["seed"] for r in summary["jobs"][:4]] == [0, 1, 0, 1]

    stamps = _stamps(out)
    assert videogen_main(["batch", path, "--no-progress"]) == 0
    assert _statuses(out) == ["skipped"] * 6 and _stamps(out) == stamps  # nothing rendered again

    listed[0]["overrides"]["sampler.steps"] = 3  # only the frog's job changes
    path = _manifest(tmp_path, tiny_model_dir, **keys)
    assert videogen_main(["batch", path, "--no-progress"]) == 0
    rows = _summary(out)["jobs"]
    assert [r["status"] for r in rows] == ["skipped"] * 4 + ["done", "skipped"]
    assert "differs at sampler.steps" in rows[4]["note"]
    changed = {p for p, t in _stamps(out).items() if stamps.get(p) != t}
    assert changed and all(Path(p).parent.name == "frog" or "frog" in Path(p).name for p in changed)

    Path(rows[1]["output"] + ".meta.json").unlink()  # an incomplete record: that job renders again
    assert videogen_main(["batch", path, "--no-progress"]) == 0
    rows = _summary(out)["jobs"]
    assert [r["status"] for r in rows] == ["skipped", "done", "skipped", "skipped", "skipped", "skipped"]
    assert rows[1]["note"] == "no 1_s1.meta.json"


@pytest.mark.slow
def test_a_job_that_fails_late_is_recorded_and_the_others_finish(ray_cluster, tmp_path, tiny_model_dir, capsys):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)  # found only on loading
    listed = [
        {"overrides": {"model.path": str(broken)}},
        {"overrides": {"prompts.text": "a blue kite"}},
        {"overrides": {"prompts.text": "a big one", "ray.cpus_per_worker": 4}},  # more than the cluster has
    ]
    path = _manifest(tmp_path, tiny_model_dir, prompts=["a red balloon"], jobs=listed)
    assert videogen_main(["batch", path, "--no-progress"]) == 1
    printed = capsys.readouterr().out
    rows = _summary(tmp_path / "out")["jobs"]
    assert [r["status"] for r in rows] == ["done", "failed", "done", "failed"]
    error = rows[1]["error"]
    assert error and "\n" not in error and "unet" in error.lower(), error
    assert rows[3]["error"].startswith("ray: this job needs 4 CPU for its 1 worker, more than the cluster's 2 CPU")
    assert error in printed and "2 failed" in printed
    assert not Path(rows[1]["output"]).exists()
    assert all(Path(r["output"]).is_file() for r in (rows[0], rows[2]))


def test_a_replica_whose_process_died_is_one_line_naming_ray_s_report():
    from ray.exceptions import RayTaskError, WorkerCrashedError

    from parallel.batch import failure_line
    from videogen.errors import MediaError

    line = failure_line(WorkerCrashedError(), "007_x.mp4")
    assert line.startswith("the replica's process died (") and "Ray's report is in " in line and "\n" not in line
    log = Path(line.rsplit(" ", 1)[1])
    assert "batch job 007_x.mp4" in log.read_text()
    log.unlink()
    mistake = RayTaskError("render_one", "Traceback ...", MediaError("image.path: x.png: not an image"))
    assert failure_line(mistake, "x") == "image.path: x.png: not an image"


@pytest.mark.slow
def test_jobs_batch_runs_a_manifest_on_the_ray_it_finds(ray_cluster, tmp_path, tiny_model_dir, capsys):
    from jobs.batch import main

    path = _manifest(tmp_path, tiny_model_dir, prompts=["a red balloon", "a blue kite"], launcher="local")
    assert main([path, "--no-progress"]) == 0  # launcher=ray is put after the manifest
    summary = _summary(tmp_path / "out")
    assert summary["launcher"] == "ray" and [r["status"] for r in summary["jobs"]] == ["done", "done"]
    assert "2 jobs (2 done)" in capsys.readouterr().out


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _resources() -> dict[str, float]:
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    processes, fds = len(_descendants(os.getpid())), len(os.listdir("/proc/self/fd"))
    return {"processes": processes, "fds": fds, "rss_mib": round(rss / 2**20, 1)}


@pytest.mark.slow
def test_soak_twenty_renders_leave_no_processes_or_descriptors_behind(ray_cluster, tmp_path, tiny_model_dir):
    warm = _manifest(tmp_path, tiny_model_dir, seeds=2, out=str(tmp_path / "warm"))
    assert videogen_main(["batch", warm, "--no-progress"]) == 0  # the worker pool is up before measuring
    time.sleep(2)
    before = _resources()
    two_groups = {"video.num_frames": 8, "parallel.clip": 2, "ray.cpus_per_worker": 0.5}  # both fit at once
    listed = [{"overrides": {**two_groups, "noise.seed": s}} for s in (100, 101)]
    path = _manifest(tmp_path, tiny_model_dir, prompts=["a red balloon", "a blue kite"], seeds=9, jobs=listed)
    started = time.perf_counter()
    assert videogen_main(["batch", path, "--no-progress"]) == 0
    seconds = time.perf_counter() - started
    rows = _summary(tmp_path / "out")["jobs"]
    assert [r["status"] for r in rows] == ["done"] * 20
    first, second = rows[18], rows[19]  # two multi-worker groups side by side, their actors apart
    assert second["started"] < first["finished"] and first["workers"] == second["workers"] == 2
    deadline = time.monotonic() + 30  # killed actors and idle workers take a moment to exit
    while True:
        after = _resources()
        settled = after["processes"] <= before["processes"] + 1 and after["fds"] <= before["fds"] + 8
        if settled or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(f"\nsoak: 20 renders (2 of them on 2 clip workers each) in {seconds:.1f} s; before {before}; after {after}")
    assert after["processes"] <= before["processes"] + 1, (before, after)
    assert after["fds"] <= before["fds"] + 8, (before, after)
