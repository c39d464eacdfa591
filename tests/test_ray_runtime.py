"""The Ray path: real actors in a placement group on a local Ray instance bound to 127.0.0.1."""

from __future__ import annotations

import os
import signal
import threading
import time

import imageio.v3 as iio
import numpy as np
import pytest

from parallel.ray_runtime import render_on_ray
from parallel.runner import render_parallel
from videogen.checkpoint import checkpoint_dir
from videogen.config import load_job
from videogen.errors import VideogenError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, namespace="videogen"
    )
    yield ray
    ray.shutdown()


def _frames(folder):
    return np.stack([iio.imread(p) for p in sorted(folder.iterdir())])


def _job(make_job, tmp_path, name, launcher, **sampler):
    return load_job(
        make_job(
            video={"width": 32, "height": 32, "num_frames": 9},
            parallel={"clip": 2, "launcher": launcher, "threads_per_worker": 1},
            sampler=sampler,
        ),
        [f"output.path={tmp_path / name}"],
    ).config


def test_ray_render_gives_the_same_video_as_the_local_launcher(ray_cluster, make_job, tmp_path):
    local = render_parallel(_job(make_job, tmp_path, "local", "local"), progress=False)
    remote = render_parallel(_job(make_job, tmp_path, "ray", "ray"), progress=False)
    assert np.array_equal(_frames(local.output), _frames(remote.output))
    assert ray_cluster.util.placement_group_table() == {} or all(
        pg["state"] == "REMOVED" for pg in ray_cluster.util.placement_group_table().values()
    )


def test_killed_worker_fails_the_render_naming_its_rank(ray_cluster, make_job, tmp_path):
    job = _job(make_job, tmp_path, "killed.mp4", "ray", steps=40, checkpoint_every=1)
    job.output.path = str(tmp_path / "killed.mp4")

    def kill_rank_one(actors):
        def killer():
            ckpt = checkpoint_dir(job)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(list(ckpt.glob("*.safetensors"))) < 2:
                time.sleep(0.05)
            os.kill(ray_cluster.get(actors[1].pid.remote()), signal.SIGKILL)

        threading.Thread(target=killer, daemon=True).start()

    with pytest.raises(VideogenError, match=r"worker rank 1 died"):
        render_on_ray(job, 2, resume=False, progress=False, on_started=kill_rank_one)
    assert not (tmp_path / "killed.mp4").exists()
    assert list(checkpoint_dir(job).glob("*.safetensors")), "checkpoints must survive for --resume"
