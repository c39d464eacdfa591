"""Batches on Ray: every job of a batch is a replica with the mesh it asks for, as many at once as the
cluster holds.

A one-worker job runs as a Ray task holding ``ray.cpus_per_worker`` CPUs (and its GPUs) that calls
:func:`videogen.pipeline.render` in the task's worker process. A multi-worker job runs as a driver
task holding nothing (``num_cpus=0``) that calls :func:`parallel.runner.render_parallel`; since Ray
is initialised in the task, :func:`parallel.ray_runtime.render_on_ray` joins the same cluster and
places its workers in a placement group of their own. Each replica loads its model itself.

Replicas are admitted in the batch's order while the resources they ask for (world size x the
worker bundle) fit in what the cluster has and what the replicas already running hold, then
collected with ``ray.wait``; one that needs more than the whole cluster fails at once instead of
waiting forever. The order is strict: a multi-worker replica that does not fit yet is
not overtaken by later one-worker replicas, so it cannot starve waiting for its placement group.
Several multi-worker replicas may run at once: each group's actors carry a name of their own.

A replica that fails (an error in the render, a bad input found late, a process killed or out of
memory) is reported on one line, with Ray's full report in a log file where it is not a user's
mistake; the other replicas go on. Replicas are not retried.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

from parallel.launch import write_failure_log
from videogen.config import JobConfig
from videogen.errors import VideogenError


@dataclass
class ReplicaResult:
    """What a finished replica reports: the render's own ``seconds`` (model load included) or its
    one-line ``error``; ``started`` (when it was submitted) and ``finished`` (when it was collected)
    are Unix times."""

    ok: bool
    seconds: float
    output: str | None = None
    seed: int | None = None
    frames: int | None = None
    workers: int = 1
    model_evaluations: int | None = None
    error: str | None = None
    started: float | None = None
    finished: float = field(default_factory=time.time)


def _result(result, workers: int) -> dict:
    return {
        "output": str(result.output),
        "seed": result.seed,
        "frames": result.frames,
        "seconds": result.seconds,
        "model_evaluations": result.model_evaluations,
        "workers": workers,
    }


_default_threads: int | None = None


def _set_threads(threads: int) -> None:
    """``threads`` torch threads in this (reused) worker process; 0 restores the process's first default."""
    global _default_threads
    import torch

    if _default_threads is None:
        _default_threads = torch.get_num_threads()
    torch.set_num_threads(threads if threads > 0 else _default_threads)


@ray.remote(max_retries=0)
def render_one(job: JobConfig) -> dict:
    """A one-worker replica: the whole render in this task's process."""
    from videogen.pipeline import render

    _set_threads(job.parallel.threads_per_worker)
    return _result(render(job, progress=False), 1)


@ray.remote(num_cpus=0, max_retries=0)
def render_group(job: JobConfig) -> dict:
    """A multi-worker replica's driver: its workers are actors in a placement group of their own."""
    from parallel.runner import render_parallel

    return _result(render_parallel(job, progress=False), job.parallel.world_size)


def connect(job: JobConfig) -> bool:
    """Join the Ray this process runs in, ``job``'s ``ray.address`` (or ``RAY_ADDRESS``, set inside ``ray
    job submit``), or start a private local instance on 127.0.0.1, as a multi-worker render does
    (:mod:`parallel.ray_runtime`). True when this call started or joined Ray (and must shut it down)."""
    from parallel.ray_runtime import _connect

    return _connect(job, 1)


def replica_gpus(job: JobConfig, cluster: dict[str, float]) -> float:
    """GPUs per worker: ``ray.gpus_per_worker``, or for ``-1`` one when the cluster has GPUs (the rule
    of :mod:`parallel.ray_runtime`)."""
    if job.ray.gpus_per_worker >= 0:
        return job.ray.gpus_per_worker
    if job.model.device == "cpu":
        return 0.0
    return 1.0 if cluster.get("GPU", 0) >= 1 else 0.0


def demand(job: JobConfig, cluster: dict[str, float]) -> dict[str, float]:
    """The resources a replica of ``job`` holds while it runs: its world size x the worker bundle."""
    workers = job.parallel.world_size
    return {"CPU": workers * job.ray.cpus_per_worker, "GPU": workers * replica_gpus(job, cluster)}


def _first_line(error: BaseException, default: str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else default


def failure_line(error: BaseException, name: str) -> str:
    """One line for a failed replica; Ray's full report goes to a log file that the line names, unless
    the replica stopped on a user's mistake (a :class:`VideogenError`), which is its own line."""
    if isinstance(error, TaskCancelledError):
        return "cancelled"
    cause = error.cause if isinstance(error, RayTaskError) and error.cause is not None else error
    if isinstance(cause, VideogenError):
        return _first_line(cause, type(cause).__name__)
    log = write_failure_log(f"batch job {name}:\n{error}", "batch")
    if isinstance(error, RayTaskError):
        return f"{type(cause).__name__}: {_first_line(cause, 'no message')}; traceback in {log}"
    return f"the replica's process died ({_first_line(error, type(error).__name__)}); Ray's report is in {log}"


def _fits(need: dict[str, float], held: dict[str, float], cluster: dict[str, float]) -> bool:
    return all(held.get(k, 0.0) + v <= cluster.get(k, 0.0) + 1e-9 for k, v in need.items() if v > 0)


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items() if v > 0) or "nothing"


def _too_big(job: JobConfig, need: dict[str, float], cluster: dict[str, float]) -> str:
    workers = job.parallel.world_size
    return (
        f"ray: this job needs {_amounts(need)} for its {workers} worker{'s' if workers > 1 else ''}, more than "
        f"the cluster's {_amounts({k: cluster.get(k, 0.0) for k in need})}; lower ray.cpus_per_worker or "
        "ray.gpus_per_worker, use fewer workers, or add nodes"
    )


def render_replicas(
    jobs: Sequence[tuple[str, JobConfig]],
    on_done: Callable[[int, ReplicaResult], None],
    *,
    max_parallel: int = 0,
) -> None:
    """Render every ``(name, job)`` as a replica on the Ray cluster this process is connected to
    (:func:`connect`), calling ``on_done(position, result)`` as each finishes, in the order they finish.

    At most ``max_parallel`` replicas run at once (0: as many as the cluster holds). On an interrupt
    the running replicas are cancelled (their processes stopped) before it propagates.
    """
    queue = deque(range(len(jobs)))
    running: dict = {}  # ref -> (position, demand, started: wall-clock time)
    try:
        while queue or running:
            cluster = ray.cluster_resources()
            held: dict[str, float] = {}
            for _, need, _ in running.values():
                for k, v in need.items():
                    held[k] = held.get(k, 0.0) + v
            while queue:
                position = queue[0]
                job = jobs[position][1]
                need = demand(job, cluster)
                if running and ((max_parallel and len(running) >= max_parallel) or not _fits(need, held, cluster)):
                    break  # strict order: the head waits for room, nothing overtakes it
                queue.popleft()
                if not _fits(need, {}, cluster):  # more than the whole cluster: it would wait forever
                    now = time.time()
                    on_done(position, ReplicaResult(False, 0.0, error=_too_big(job, need, cluster), started=now))
                    continue
                if job.parallel.world_size > 1:
                    ref = render_group.remote(job)
                else:
                    ref = render_one.options(num_cpus=job.ray.cpus_per_worker, num_gpus=need["GPU"]).remote(job)
                running[ref] = (position, need, time.time())
                for k, v in need.items():
                    held[k] = held.get(k, 0.0) + v
            if not running:
                continue  # every replica admitted so far failed at once
            ready, _ = ray.wait(list(running), num_returns=1)
            position, _, started = running.pop(ready[0])
            try:
                report = ray.get(ready[0])
            except RayError as error:
                line = failure_line(error, jobs[position][0])
                on_done(position, ReplicaResult(False, time.time() - started, error=line, started=started))
            else:
                on_done(position, ReplicaResult(True, **report, started=started))
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
