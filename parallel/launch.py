"""Local multi-process launcher: run one function on N processes joined in a torch.distributed group.

``run_local`` is for tests and for a laptop without Ray: it starts ``world_size`` processes on this
machine, joins them in a process group over 127.0.0.1 (gloo on CPU, NCCL where CUDA is present),
calls ``fn(rank, world_size, *args, **kwargs)`` in each and returns the results in rank order.

Failure handling is the point of this module:

- a worker that raises is reported with its rank, its exception type and its remote traceback
  (:class:`WorkerError`, with the original exception as ``__cause__`` when it can be unpickled);
- a worker that dies without reporting (``os._exit``, a signal, out of memory) is reported with its
  rank and exit code instead of leaving the others hanging in a collective;
- on any failure, or when ``timeout_s`` passes, every other worker is terminated, then killed;
- after a success, every worker is given time to leave the group and exit by itself: a worker
  terminated then would skip its exit handlers, and the semaphores it created (tqdm's lock, for one)
  would be reported as leaked by multiprocessing's resource tracker when the launcher exits;
- each worker holds a *lifeline*, the read end of a pipe whose write end only the launcher holds.
  When the launcher dies, even by SIGKILL, the pipe closes and the worker exits at once, so no
  orphan process is left blocking in a collective.

Processes are started with the ``forkserver`` method. The server imports torch and diffusers'
UNet3D once (about six seconds of CPU here), and every worker is forked from it with those
modules already loaded.

``init_worker_process_group`` is the process-group formation shared with the Ray actors.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "WorkerError",
    "default_backend",
    "find_free_port",
    "init_worker_process_group",
    "run_local",
    "write_failure_log",
]

PRELOAD = ("torch", "diffusers.models.unets.unet_3d_condition")  # what every worker imports, slowly
_GRACE_S = 0.5  # after a first failure, how long to wait for the other ranks' reports
_KILL_AFTER_S = 5.0  # how long a terminated worker may take to exit before it is killed


class WorkerError(RuntimeError):
    """One or more workers failed; ``rank`` is the one most likely to be the root cause.

    A worker that raised or died first is preferred over workers that failed afterwards in a
    collective because their peer had gone. ``failures`` maps every failed rank to its report.
    """

    def __init__(self, rank: int | None, message: str, failures: dict[int, str]):
        super().__init__(message)
        self.rank = rank
        self.failures = failures


def write_failure_log(text: str, name: str = "render") -> str:
    """Write a failed run's full report (the workers' tracebacks) to a new file in the temporary folder.

    Returns its path, for a one-line error that names it; the report itself never reaches the terminal.
    """
    handle, path = tempfile.mkstemp(prefix=f"videogen-{name}-", suffix=".log")
    with os.fdopen(handle, "w") as log:
        log.write(text.rstrip() + "\n")
    return path


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_backend() -> str:
    """``"nccl"`` when this process can see a CUDA device, else ``"gloo"``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_worker_process_group(
    rank: int,
    world_size: int,
    addr: str,
    port: int,
    backend: str | None = None,
    timeout_s: float = 300.0,
) -> torch.device:
    """Join the default process group at ``tcp://addr:port`` and return this worker's device.

    With NCCL the device is ``cuda:<LOCAL_RANK or rank, modulo the visible device count>``; it is
    made current and bound to the group (eager NCCL init, which point-to-point batches need). A Ray
    actor that sees one GPU therefore gets ``cuda:0``. With gloo the device is the CPU.
    """
    backend = backend or default_backend()
    device = torch.device("cpu")
    device_id = None
    if backend == "nccl":
        index = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        device_id = device
    dist.init_process_group(
        backend,
        init_method=f"tcp://{addr}:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
        device_id=device_id,
    )
    return device


@dataclass(frozen=True)
class _Job:
    fn: Callable[..., Any]
    world_size: int
    addr: str
    port: int
    backend: str | None
    num_threads: int | None
    timeout_s: float
    args: tuple
    kwargs: dict


def _watch_lifeline(lifeline: Connection) -> None:
    """Exit this worker as soon as the launcher's end of the lifeline closes."""
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(70)


def _report(exc: BaseException) -> tuple:
    try:
        exc_bytes = pickle.dumps(exc)
    except Exception:
        exc_bytes = None
    is_comm = isinstance(exc, dist.DistError)
    return ("error", time.time(), type(exc).__name__, str(exc), traceback.format_exc(), exc_bytes, is_comm)


def _worker_main(job: _Job, rank: int, results: Connection, lifeline: Connection) -> None:
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True).start()
    if job.num_threads is not None:
        torch.set_num_threads(job.num_threads)
    initialized = False
    try:
        init_worker_process_group(rank, job.world_size, job.addr, job.port, job.backend, job.timeout_s)
        initialized = True
        value = job.fn(rank, job.world_size, *job.args, **job.kwargs)
        payload = pickle.dumps(("ok", value))
    except BaseException as exc:  # reported to the launcher, which raises it there
        payload = pickle.dumps(_report(exc))
    # Report before leaving the group, so that peers cannot fail on our exit before we are heard.
    results.send_bytes(payload)
    results.close()
    if initialized:
        dist.destroy_process_group()


def _context(fn: Callable[..., Any]) -> mp.context.BaseContext:
    """The forkserver context; its server imports :data:`PRELOAD` and ``fn``'s module once.

    The preload list only counts when the server first starts in this process. ``fn``'s module is
    best effort (Python 3.11's server does not see this process's ``sys.path``, so a test module
    may not import there); the heavy third-party modules always do.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, fn.__module__])
    return ctx


def _failure_text(rank: int, report: tuple) -> str:
    _, _, type_name, message, remote_tb, _, _ = report
    return f"rank {rank} raised {type_name}: {message}\n--- remote traceback (rank {rank}) ---\n{remote_tb}"


def _raise_failures(reports: dict[int, tuple], deaths: dict[int, int | None], timed_out: list[int]) -> None:
    failures: dict[int, str] = {}
    for rank, code in deaths.items():
        failures[rank] = f"rank {rank} died with exit code {code} without reporting a result"
    for rank, report in reports.items():
        failures[rank] = _failure_text(rank, report)
    for rank in timed_out:
        failures.setdefault(rank, f"rank {rank} did not finish before the timeout")

    # Root cause: a death, then an ordinary exception, then a communication error; earliest first.
    def priority(rank: int) -> tuple:
        if rank in deaths:
            return (0, 0.0, rank)
        if rank in reports:
            _, when, *_, is_comm = reports[rank]
            return (2 if is_comm else 1, when, rank)
        return (3, 0.0, rank)

    ordered = sorted(failures, key=priority)
    root = ordered[0]
    if timed_out and not deaths and not reports:
        headline = f"ranks {sorted(timed_out)} did not finish before the timeout"
    else:
        headline = failures[root].splitlines()[0]
    others = [failures[r].splitlines()[0] for r in ordered[1:]]
    message = headline
    if others:
        message += "\nalso: " + "; ".join(others)
    if root in reports:
        message += "\n" + "\n".join(failures[root].splitlines()[1:])
    error = WorkerError(root, message, failures)
    cause = None
    if root in reports and reports[root][5] is not None:
        try:
            cause = pickle.loads(reports[root][5])
        except Exception:
            cause = None
    raise error from cause


def _join(processes: list, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` in all for ``processes`` to exit by themselves."""
    deadline = time.monotonic() + timeout_s
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))


def _stop(processes: list) -> None:
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + _KILL_AFTER_S
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in processes:
        if proc.is_alive():
            proc.kill()
            proc.join()


def run_local(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    num_threads: int | None = 1,
    backend: str | None = None,
    timeout_s: float = 300.0,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` local processes.

    Every process has joined the default process group before ``fn`` runs (``backend`` defaults
    to :func:`default_backend`) and leaves it afterwards. ``fn``, its arguments and its results
    must be picklable; ``fn`` must be defined at module level. ``num_threads`` is passed to
    ``torch.set_num_threads`` in each worker (``None`` leaves torch's default).

    Returns the results in rank order. Raises :class:`WorkerError` naming the failed rank if a
    worker raises, dies, or if ``timeout_s`` passes first; all workers have exited by then.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    ctx = _context(fn)
    job = _Job(fn, world_size, "127.0.0.1", find_free_port(), backend, num_threads, timeout_s, args, kwargs)
    processes, readers, lifelines = [], {}, []
    try:
        for rank in range(world_size):
            reader, writer = ctx.Pipe(duplex=False)
            life_read, life_write = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker_main,
                args=(job, rank, writer, life_read),
                name=f"videogen-rank{rank}",
                daemon=True,
            )
            proc.start()
            writer.close()
            life_read.close()
            processes.append(proc)
            readers[reader] = rank
            lifelines.append(life_write)
        results = _collect(processes, readers, timeout_s)
        _join(processes, _KILL_AFTER_S)  # every rank reported: let each exit cleanly before _stop
        return results
    finally:
        _stop(processes)
        for conn in [*readers, *lifelines]:
            conn.close()


def _collect(processes: list, readers: dict[Connection, int], timeout_s: float) -> list[Any]:
    results: dict[int, Any] = {}
    reports: dict[int, tuple] = {}
    deaths: dict[int, int | None] = {}
    pending = dict(readers)
    sentinels = {proc.sentinel: rank for rank, proc in enumerate(processes)}
    deadline = time.monotonic() + timeout_s
    failed_at: float | None = None

    def read(conn: Connection) -> None:
        rank = pending.pop(conn)
        try:
            status, *rest = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the pipe closed without a report: the worker is gone
            processes[rank].join(_KILL_AFTER_S)
            deaths[rank] = processes[rank].exitcode
            return
        if status == "ok":
            results[rank] = rest[0]
        else:
            reports[rank] = (status, *rest)

    while pending:
        now = time.monotonic()
        limit = deadline if failed_at is None else min(deadline, failed_at + _GRACE_S)
        if now >= limit:
            break
        live_sentinels = [s for s, r in sentinels.items() if r not in deaths]
        ready = wait([*pending, *live_sentinels], timeout=limit - now)
        for obj in ready:
            if obj in pending:
                read(obj)
        for obj in ready:
            rank = sentinels.get(obj)
            if rank is None or rank in results or rank in reports or rank in deaths:
                continue
            conn = next((c for c, r in pending.items() if r == rank), None)
            if conn is not None and conn.poll():
                read(conn)  # the result arrived just before the exit
            else:
                processes[rank].join()
                deaths[rank] = processes[rank].exitcode
                if conn is not None:
                    pending.pop(conn)
        if (reports or deaths) and failed_at is None:
            failed_at = time.monotonic()
    if reports or deaths or pending:
        timed_out = [] if (reports or deaths) else sorted(pending.values())
        _raise_failures(reports, deaths, timed_out)
    return [results[rank] for rank in range(len(processes))]
