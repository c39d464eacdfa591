"""The Ray path: real actors in a placement group on a local Ray instance bound to 127.0.0.1.

The tests that join or start Ray themselves come first: they need a driver that is not yet
connected, and the module's shared instance (``ray_cluster``) stays up until the module ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import ray

from parallel.launch import find_free_port
from parallel.ray_runtime import _connect, render_on_ray
from parallel.runner import render_parallel
from videogen.checkpoint import checkpoint_dir
from videogen.config import load_job
from videogen.errors import ConfigError, VideogenError

pytestmark = pytest.mark.slow


def _frames(folder):
    return np.stack([iio.imread(p) for p in sorted(folder.iterdir())])


def _job(make_job, tmp_path, name, launcher, ray_section=None, model=None, **sampler):
    return load_job(
        make_job(
            video={"width": 32, "height": 32, "num_frames": 9},
            parallel={"clip": 2, "launcher": launcher, "threads_per_worker": 1},
            sampler=sampler,
            ray=ray_section or {},
            model=model or {},
        ),
        [f"output.path={tmp_path / name}"],
    ).config


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert len(text.splitlines()) == 1, text
    return text


# -- joining or starting Ray (the driver is not connected yet) ------------------------------------------------


@pytest.fixture
def unconnected(monkeypatch):
    assert not ray.is_initialized(), "these tests must run before the module's shared Ray instance starts"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_dead_ray_address_fails_at_once_naming_it(unconnected, make_job, tmp_path, scheme):
    address = f"{scheme}127.0.0.1:{find_free_port()}"  # nothing listens there
    job = _job(make_job, tmp_path, "dead.mp4", "ray", {"address": address, "connect_timeout_s": 5})
    started = time.monotonic()
    with pytest.raises(VideogenError) as caught:
        render_on_ray(job, 2, resume=False, progress=False)
    assert time.monotonic() - started < 5
    line = _one_line(caught.value)
    assert line.startswith(f"ray.address: cannot reach the Ray cluster at {address}: nothing listens"), line
    assert not ray.is_initialized()


def test_a_ray_address_that_does_not_answer_fails_after_connect_timeout(unconnected, make_job, tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    held = []
    try:
        while True:  # fill the accept queue: further connections get no answer, as from a lost host
            client = socket.socket()
            client.settimeout(0.3)
            try:
                client.connect(("127.0.0.1", port))
            except TimeoutError:
                client.close()
                break
            held.append(client)
        job = _job(make_job, tmp_path, "mute.mp4", "ray", {"address": f"127.0.0.1:{port}", "connect_timeout_s": 2})
        started = time.monotonic()
        with pytest.raises(VideogenError) as caught:
            render_on_ray(job, 2, resume=False, progress=False)
        assert 1.9 < time.monotonic() - started < 2 + 3
    finally:
        for client in held:
            client.close()
        server.close()
    line = _one_line(caught.value)
    assert f"at 127.0.0.1:{port}: no answer within 2 s (ray.connect_timeout_s)" in line, line


def _ray_cli(*args, env):
    command = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    return subprocess.run([command, *args], env=env, capture_output=True, text=True, timeout=120)


def _processes_with_env(entry: str) -> list[int]:
    """Our processes whose environment holds ``entry`` (``NAME=value``)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.encode() in environ:
            found.append(int(name))
    return found


def _end_processes_with_env(entry: str) -> None:
    """Stop what ``ray start`` started under ``entry`` (never ``ray stop``, which ends every Ray on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _processes_with_env(entry):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _processes_with_env(entry) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not _processes_with_env(entry)


def test_a_null_address_starts_a_private_instance_whatever_ray_start_left(unconnected, make_job, tmp_path, monkeypatch):
    temp = tempfile.mkdtemp(prefix="vgray", dir="/tmp")  # short: Ray's socket paths live under it
    entry = f"RAY_TMPDIR={temp}"
    monkeypatch.setenv("RAY_TMPDIR", temp)  # the recorded cluster file is $RAY_TMPDIR/ray/ray_current_cluster
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    try:
        head = _ray_cli(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={find_free_port()}",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            env=env,
        )
        assert head.returncode == 0, head.stderr[-2000:]
        recorded = Path(temp, "ray", "ray_current_cluster").read_text().strip()
        # A live recorded cluster: ray.init(num_cpus=...) would refuse to join it with them.
        job = _job(make_job, tmp_path, "private", "ray", {"max_restarts": 0})
        render_on_ray(job, 2, resume=False, progress=False)
        assert len(list((tmp_path / "private").iterdir())) == 9
        assert not ray.is_initialized()
        # Named, the same live cluster is joined: the address answers.
        assert _connect(_job(make_job, tmp_path, "join", "ray", {"address": recorded}), 2)
        assert ray.get_runtime_context().gcs_address == recorded
        ray.shutdown()
        # A dead one (killed, never `ray stop`ped): still recorded, nothing answers there.
        _end_processes_with_env(entry)
        assert Path(temp, "ray", "ray_current_cluster").read_text().strip() == recorded
        started = time.monotonic()
        assert _connect(job, 2)
        assert time.monotonic() - started < 60
        assert ray.get_runtime_context().gcs_address != recorded
        assert ray.cluster_resources()["CPU"] == max(os.cpu_count() or 1, 2)
        ray.shutdown()
    finally:
        ray.shutdown()
        _end_processes_with_env(entry)
        shutil.rmtree(temp, ignore_errors=True)


# -- what the job asks of the workers, checked before any starts ----------------------------------------------


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("ray.max_restarts=-1", "ray.max_restarts: -1: must be >= 0"),
        ("ray.hang_timeout_s=0", "ray.hang_timeout_s: 0.0: must be > 0 seconds"),
        ("ray.connect_timeout_s=-2", "ray.connect_timeout_s: -2.0: must be > 0 seconds"),
        ("ray.gpus_per_worker=0.5", "ray.gpus_per_worker: 0.5: 2 workers would share a GPU"),
        ("ray.gpus_per_worker=1.5", "ray.gpus_per_worker: 1.5: Ray shares GPUs in fractions below 1 only"),
        ("ray.cpus_per_worker=-1", "ray.cpus_per_worker: -1.0: must be >= 0"),
        ("ray.address=http://head:8265", "ray.address: http://head:8265 is a dashboard address"),
    ],
)
def test_impossible_ray_options_name_their_key(make_job, override, named):
    with pytest.raises(ConfigError, match=re.escape(f"command line: {named}")):
        load_job(make_job(video={"num_frames": 9}, parallel={"clip": 2}), [override])


@pytest.mark.parametrize(
    ("model", "named"),
    [
        ({"dtype": "fp16"}, "model.dtype: fp16 is for GPUs and the Ray workers run on the CPU"),
        ({"device": "cuda"}, "model.device: cuda asked for, but the Ray workers get no GPU"),
        ({"attention": "xformers"}, "model.attention: xformers runs on CUDA only"),
    ],
)
def test_a_gpu_only_option_on_cpu_workers_fails_before_any_worker_starts(ray_cluster, make_job, tmp_path, model, named):
    job = _job(make_job, tmp_path, "gpu.mp4", "ray", {"gpus_per_worker": 0}, model=model)
    started = []
    with pytest.raises(ConfigError) as caught:
        render_on_ray(job, 2, resume=False, progress=False, on_started=started.append)
    assert _one_line(caught.value).startswith(named), str(caught.value)
    assert not started


@pytest.mark.parametrize(
    ("ray_section", "named"),
    [
        ({"cpus_per_worker": 3}, "ray: 2 workers of 3 CPU need 6 CPU, but the cluster has 4 CPU on 1 node, room for 1"),
        ({"placement": "STRICT_SPREAD"}, "need 2 CPU each on its own node (STRICT_SPREAD), but the cluster has 4 CPU"),
        (
            {"gpus_per_worker": 1},
            "ray: 2 workers of 1 CPU + 1 GPU need 2 CPU + 2 GPU, but the cluster has 4 CPU + 0 GPU",
        ),
    ],
)
def test_a_placement_the_cluster_can_never_hold_fails_at_once_with_the_numbers(
    ray_cluster, make_job, tmp_path, ray_section, named
):
    job = _job(make_job, tmp_path, "big.mp4", "ray", ray_section)  # ray.startup_timeout_s stays 300 s
    started = time.monotonic()
    with pytest.raises(VideogenError) as caught:
        render_on_ray(job, 2, resume=False, progress=False)
    assert time.monotonic() - started < 10
    assert named in _one_line(caught.value), str(caught.value)


# -- renders ------------------------------------------------------------------------------------------------------


def test_ray_render_gives_the_same_video_as_the_local_launcher(ray_cluster, make_job, tmp_path):
    local = render_parallel(_job(make_job, tmp_path, "local", "local"), progress=False)
    remote = render_parallel(_job(make_job, tmp_path, "ray", "ray"), progress=False)
    assert np.array_equal(_frames(local.output), _frames(remote.output))
    assert ray_cluster.util.placement_group_table() == {} or all(
        pg["state"] == "REMOVED" for pg in ray_cluster.util.placement_group_table().values()
    )
    assert not checkpoint_dir(_job(make_job, tmp_path, "ray", "ray")).exists(), "recovery checkpoints are removed"


def test_killed_worker_fails_the_render_naming_its_rank(ray_cluster, make_job, tmp_path):
    job = _job(make_job, tmp_path, "killed.mp4", "ray", {"max_restarts": 0}, steps=40, checkpoint_every=1)

    def kill_rank_one(actors):
        def killer():
            ckpt = checkpoint_dir(job)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(list(ckpt.glob("*.safetensors"))) < 2:
                time.sleep(0.05)
            os.kill(ray_cluster.get(actors[1].pid.remote()), signal.SIGKILL)

        threading.Thread(target=killer, daemon=True).start()

    with pytest.raises(VideogenError, match=r"^worker rank 1 died \(.*\); all workers were stopped"):
        render_on_ray(job, 2, resume=False, progress=False, on_started=kill_rank_one)
    assert not (tmp_path / "killed.mp4").exists()
    assert list(checkpoint_dir(job).glob("*.safetensors")), "checkpoints must survive for --resume"
