"""The local launcher: results in rank order, failures named by rank, no hang, no orphan process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from parallel.launch import WorkerError, find_free_port, run_local

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if ppid == pid:
                children.append(int(entry.name))
    return children


def _wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _running(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if _running(pid)]


def _write_pid(piddir: str, rank: int) -> None:
    Path(piddir, f"{rank}.pid").write_text(str(os.getpid()))


def _read_pids(piddir: Path, world_size: int, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        files = [piddir / f"{rank}.pid" for rank in range(world_size)]
        if all(f.exists() and f.read_text() for f in files):
            return [int(f.read_text()) for f in files]
        time.sleep(0.05)
    raise AssertionError(f"workers did not write their pids to {piddir}")


def _sum_ranks(rank: int, world_size: int, offset: float, *, scale: float) -> dict:
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    return {
        "rank": rank,
        "world_size": world_size,
        "value": scale * (total.item() + offset),
        "threads": torch.get_num_threads(),
        "backend": dist.get_backend(),
        "pid": os.getpid(),
    }


def _raise_on_rank_one(rank: int, world_size: int, piddir: str) -> None:
    _write_pid(piddir, rank)
    if rank == 1:
        raise ValueError("bad input on rank one")
    dist.all_reduce(torch.ones(1))  # blocks: rank 1 never joins


def _die_on_rank_two(rank: int, world_size: int, piddir: str) -> None:
    _write_pid(piddir, rank)
    if rank == 2:
        os._exit(3)
    dist.all_reduce(torch.ones(1))


def _rank_zero_hangs(rank: int, world_size: int, piddir: str) -> None:
    _write_pid(piddir, rank)
    if rank == 0:
        time.sleep(120)
    dist.barrier()


def _sleep_forever(rank: int, world_size: int, piddir: str) -> None:
    _write_pid(piddir, rank)
    time.sleep(600)


_HELD: list = []


def _lock_and_exit_slowly(rank: int, world_size: int) -> int:
    """Hold a multiprocessing lock (a semaphore the resource tracker watches, as tqdm's is) until exit,
    and take a second to exit after reporting: a launcher that does not wait for it leaks the lock."""
    import multiprocessing as mp
    from multiprocessing import util

    _HELD.append(mp.get_context("forkserver").RLock())
    util.Finalize(None, time.sleep, args=(1.0,), exitpriority=10)  # runs before the lock's own cleanup
    return rank


def test_results_come_back_in_rank_order_from_a_gloo_group():
    results = run_local(_sum_ranks, 3, 0.5, scale=2.0)
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert all(r["world_size"] == 3 for r in results)
    assert all(r["value"] == 2.0 * (0 + 1 + 2 + 0.5) for r in results)
    assert all(r["threads"] == 1 for r in results)
    assert all(r["backend"] == "gloo" for r in results)
    assert _wait_gone([r["pid"] for r in results]) == []


def test_worker_exception_names_its_rank_and_stops_the_others(tmp_path):
    started = time.monotonic()
    with pytest.raises(WorkerError) as info:
        run_local(_raise_on_rank_one, 3, str(tmp_path))
    assert time.monotonic() - started < 60
    error = info.value
    assert error.rank == 1
    assert "rank 1 raised ValueError: bad input on rank one" in str(error)
    assert "remote traceback" in str(error)
    assert isinstance(error.__cause__, ValueError)
    assert _wait_gone(_read_pids(tmp_path, 3)) == []


def test_dead_worker_is_reported_with_rank_and_exit_code(tmp_path):
    started = time.monotonic()
    with pytest.raises(WorkerError) as info:
        run_local(_die_on_rank_two, 3, str(tmp_path))
    assert time.monotonic() - started < 60
    assert info.value.rank == 2
    assert "rank 2 died with exit code 3" in str(info.value)
    assert _wait_gone(_read_pids(tmp_path, 3)) == []


def test_hanging_worker_times_out_and_is_terminated(tmp_path):
    started = time.monotonic()
    with pytest.raises(WorkerError, match="did not finish before the timeout"):
        run_local(_rank_zero_hangs, 2, str(tmp_path), timeout_s=3.0)
    assert time.monotonic() - started < 30
    assert _wait_gone(_read_pids(tmp_path, 2)) == []


def test_workers_exit_when_the_launcher_is_killed(tmp_path):
    driver = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import test_launch; "
        "from parallel.launch import run_local; run_local(test_launch._sleep_forever, 2, sys.argv[3])"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.Popen([sys.executable, "-c", driver, str(ROOT), str(ROOT / "tests"), str(tmp_path)], env=env)
    pids: list[int] = []
    helpers: list[int] = []
    try:
        pids = _read_pids(tmp_path, 2, timeout_s=60)
        assert all(_running(pid) for pid in pids)
        helpers = _children(proc.pid)  # the forkserver and multiprocessing's resource tracker
        assert helpers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_gone(pids) == []
        assert _wait_gone(helpers, timeout_s=30) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids + helpers:  # only if the lifeline failed: leave nothing of ours behind
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_free_port_can_be_bound():
    import socket

    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def _stderr_of(argv: list[str], cwd: Path, timeout: float = 240) -> str:
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_workers_that_take_time_to_exit_are_waited_for_and_leak_nothing(tmp_path):
    driver = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import test_launch; "
        "from parallel.launch import run_local; print(run_local(test_launch._lock_and_exit_slowly, 2))"
    )
    err = _stderr_of([sys.executable, "-c", driver, str(ROOT), str(ROOT / "tests")], tmp_path)
    assert "leaked" not in err, err


def test_a_local_multi_worker_render_ends_without_a_leak_warning(make_job, tmp_path):
    small = ["video.width=32", "video.height=32", "video.num_frames=4", "sampler.steps=2"]
    argv = [sys.executable, "-m", "videogen.cli", "render", make_job(), *small, "--no-progress"]
    err = _stderr_of([*argv, "parallel.patch=2", "parallel.launcher=local", "parallel.threads_per_worker=1"], ROOT)
    assert (tmp_path / "out.mp4").is_file()
    assert "leaked" not in err and "resource_tracker" not in err, err
