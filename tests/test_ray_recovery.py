"""Recovery on Ray: a worker killed or stopped mid-render, the group re-formed, the same video.

Real actors on a local Ray instance bound to 127.0.0.1; the lost worker is killed (SIGKILL) or
stopped (SIGSTOP) through its process id, once every clip has a checkpoint. Each render is
compared frame for frame with an uninterrupted one (PNG frames, so nothing is lost to encoding).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import ray
import yaml

from parallel.job_plan import job_clips
from parallel.ray_runtime import render_on_ray, stalled
from parallel.runner import render_parallel
from videogen.checkpoint import checkpoint_dir, checkpoint_steps
from videogen.config import load_job
from videogen.errors import VideogenError

pytestmark = pytest.mark.slow

STEPS = 20


def _job(folder: Path, model_dir: Path, name: str, *overrides: str):
    spec = {
        "model": {"path": str(model_dir)},
        "prompts": {"text": "a red balloon", "negative": "blurry"},
        "video": {"width": 32, "height": 32, "num_frames": 9, "fps": 8},
        "sampler": {"name": "ddim", "steps": STEPS, "guidance_scale": 7.5},
        "noise": {"seed": 3},
        "parallel": {"clip": 2, "launcher": "ray", "threads_per_worker": 1},
        "output": {"path": str(folder / name), "decode_chunk_frames": 3},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_job(path, list(overrides)).config


def _frames(folder: Path) -> np.ndarray:
    return np.stack([iio.imread(p) for p in sorted(folder.iterdir())])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir) -> np.ndarray:
    """The video of the test job rendered without interruption (two local worker processes)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    result = render_parallel(_job(folder, tiny_model_dir, "video", "parallel.launcher=local"), progress=False)
    return _frames(result.output)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


class Saboteur:
    """An ``on_started`` callback: records every worker's process id, and sends ``signals[i]`` to rank 1 of
    the i-th group formed, as soon as every clip has a checkpoint (or at once)."""

    def __init__(self, job, signals: list[signal.Signals], wait_for_checkpoints: bool = True):
        self.job, self.signals, self.wait = job, list(signals), wait_for_checkpoints
        self.pids: list[int] = []
        self.threads: list[threading.Thread] = []

    def _checkpointed(self) -> bool:
        directory = checkpoint_dir(self.job)
        return all(checkpoint_steps(directory, clip) for clip in job_clips(self.job))

    def __call__(self, actors) -> None:
        pids = ray.get([actor.pid.remote() for actor in actors])
        self.pids.extend(pids)
        if not self.signals:
            return
        sig = self.signals.pop(0)

        def act():
            deadline = time.monotonic() + 120
            while self.wait and not self._checkpointed() and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(pids[1], sig)

        thread = threading.Thread(target=act, daemon=True)
        thread.start()
        self.threads.append(thread)

    def leftovers(self) -> list[int]:
        """Worker processes still alive 30 s after the render returned (none: Ray stopped them all)."""
        for thread in self.threads:
            thread.join(timeout=10)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in self.pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [pid for pid in self.pids if _alive(pid)]
        for pid in alive:  # leave nothing behind, whatever the assertion says
            os.kill(pid, signal.SIGKILL)
        return alive


def test_a_killed_worker_is_replaced_and_the_render_resumes_to_the_same_video(
    ray_cluster, tiny_model_dir, tmp_path, uninterrupted, capsys
):
    job = _job(tmp_path, tiny_model_dir, "killed", "sampler.checkpoint_every=4")
    saboteur = Saboteur(job, [signal.SIGKILL])
    try:
        reports = render_on_ray(job, 2, resume=False, progress=False, on_started=saboteur)
    finally:
        leftovers = saboteur.leftovers()
    assert reports.restarts == 1 and len(saboteur.pids) == 4
    assert reports.losses[0].startswith("worker rank 1 died ("), reports.losses
    assert reports[0].resumed_from_step is not None and reports[0].resumed_from_step >= 3
    assert np.array_equal(_frames(tmp_path / "killed"), uninterrupted)
    assert "restarting the workers from their newest shared checkpoint (restart 1 of 2)" in capsys.readouterr().err
    assert list(checkpoint_dir(job).glob("*.safetensors")), "checkpoints the job asked for are kept"
    meta = json.loads((tmp_path / "killed.meta.json").read_text())
    assert meta["restarts"] == 1 and meta["lost_workers"] == reports.losses
    assert all(r["timings"]["startup"] > 0 for r in meta["worker_reports"])  # the lost group's time included
    assert not leftovers


def test_a_stopped_worker_is_detected_replaced_and_the_render_resumes_to_the_same_video(
    ray_cluster, tiny_model_dir, tmp_path, uninterrupted
):
    job = _job(tmp_path, tiny_model_dir, "stopped", "ray.hang_timeout_s=3")  # checkpoints every STEPS // 10
    saboteur = Saboteur(job, [signal.SIGSTOP])
    try:
        reports = render_on_ray(job, 2, resume=False, progress=False, on_started=saboteur)
    finally:
        leftovers = saboteur.leftovers()
    assert reports.restarts == 1
    assert reports.losses == ["worker rank 1 stopped answering for 3 s (ray.hang_timeout_s)"]
    assert reports[0].resumed_from_step is not None
    assert np.array_equal(_frames(tmp_path / "stopped"), uninterrupted)
    assert not checkpoint_dir(job).exists(), "checkpoints written only for recovery go with the render"
    assert load_job(tmp_path / "stopped.job.yaml").config.sampler.checkpoint_every == 0  # the job as asked
    assert json.loads((tmp_path / "stopped.meta.json").read_text())["recovery_checkpoint_every"] == STEPS // 10
    assert not leftovers


def test_when_no_restart_is_left_the_render_fails_in_one_line_naming_the_lost_rank(
    ray_cluster, tiny_model_dir, tmp_path
):
    job = _job(tmp_path, tiny_model_dir, "lost.mp4", "ray.max_restarts=1", "ray.hang_timeout_s=3")
    saboteur = Saboteur(job, [signal.SIGKILL, signal.SIGSTOP], wait_for_checkpoints=False)
    try:
        with pytest.raises(VideogenError) as caught:
            render_on_ray(job, 2, resume=False, progress=False, on_started=saboteur)
    finally:
        leftovers = saboteur.leftovers()
    line = str(caught.value)
    assert len(line.splitlines()) == 1
    assert line.startswith(
        "worker rank 1 stopped answering for 3 s (ray.hang_timeout_s) after 1 restart (ray.max_restarts); "
        "all workers were stopped, no video was written"
    ), line
    assert len(saboteur.pids) == 4 and not (tmp_path / "lost.mp4").exists()
    assert not leftovers


def test_only_a_worker_that_stops_making_denoising_steps_counts_as_stalled():
    assert stalled("denoise", idle_s=301, timeout_s=300)
    assert not stalled("denoise", idle_s=299, timeout_s=300)
    for slow_phase in ("starting", "load", "decode", "join"):  # as long as the model and video need
        assert not stalled(slow_phase, idle_s=10_000, timeout_s=300)
