"""`ray job submit ... -- python -m jobs.render JOB.yaml` on a real `ray start` cluster (127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

from parallel.launch import find_free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _ray(*args, env, timeout=180):
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    return subprocess.run([ray, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def ray_head():
    bin_dir = str(Path(sys.executable).parent)  # the job's `python` is this environment's
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = find_free_port(), find_free_port()
    started = _ray(
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--num-cpus=4",
        "--include-dashboard=true",
        "--disable-usage-stats",
        env=env,
    )
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _ray("stop", "--force", env=env, timeout=60)


def test_submitted_job_renders_the_video_on_the_cluster(ray_head, tmp_path, tiny_model_dir):
    address, env = ray_head
    out = tmp_path / "submitted.mp4"
    result = _ray(
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--runtime-env",
        str(REPO / "jobs" / "runtime_env.yaml"),
        "--",
        "python",
        "-m",
        "jobs.render",
        "configs/demo.yaml",
        f"model.path={tiny_model_dir}",
        f"output.path={out}",
        "video.num_frames=16",
        "sampler.steps=2",
        "--no-progress",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"wrote {out} (16 frames" in result.stdout
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16
